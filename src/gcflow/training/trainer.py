"""The bundled training loop: one function composing gcflow's parts, in commented paragraphs.

Everything mathematical lives in the library (sigmas, pairs, loss, EMA, samplers); this file only
wires it to data, an optimizer, logging and checkpoints. The per-step hot path is
`gcflow.training.step.TrainStep`; data-parallel processes started by torchrun are handled through
`gcflow.training.distributed` (see docs/scaling.md). Where the other pieces live:

* data sources and evaluators: `data_source.py`, `evaluate.py`;
* the GC predictor f_η: `predictor.py`;
* checkpoint contents, resuming and loading a trained run (`load_run`): `run_state.py`;
* non-finite values and signals (`TrainingError`, `Interrupted`): `faults.py`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gcflow.ema import ema_decay_from_half_life, make_ema
from gcflow.loss import consistency_loss
from gcflow.randomness import stream_seed
from gcflow.sigmas import ict_num_scales
from gcflow.training import distributed
from gcflow.training.builders import build_model, build_optimizer, init_from_teacher, set_memory_format
from gcflow.training.config import Config, TrainConfig, from_dict, to_dict, validate
from gcflow.training.data_source import build_source, check_image_data, is_toy
from gcflow.training.distributed import World, split_global_batch
from gcflow.training.evaluate import build_evaluator
from gcflow.training.faults import (
    Interrupted,
    StopSignals,
    TrainingError,
    new_fault_record,
    nonfinite_message,
    raise_on_fault,
    record_fault,
)
from gcflow.training.monitor import Monitor, eval_record
from gcflow.training.predictor import build_gc_predictor
from gcflow.training.preflight import check_new_run
from gcflow.training.run_dir import RunLock, check_same_config, holds_run, prepare_run_dir
from gcflow.training.run_state import (
    RunParts,
    extend_run,
    load_model_for_inference,
    pick_resume_checkpoint,
    read_metrics,
    read_run_config,
    resume_from,
    save_run_state,
    start_run_files,
    truncate_metrics,
    warn_thread_count,
    write_summary,
)
from gcflow.training.step import TrainStep, mu_schedule
from gcflow.training.teacher_source import cd_velocity

# Re-exported: the names scripts and the commands import from the trainer.
__all__ = ["Interrupted", "RunResult", "TrainingError", "load_model_for_inference", "train"]


@dataclass
class RunResult:
    """The run folder, its summary, and (for scripts and tests) the trained model and its EMA on this process."""

    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module | None = None
    ema: nn.Module | None = None


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Any = print,
    validated: bool = False,
    auto_resume: bool = False,
    extend_to: int | None = None,
) -> RunResult:
    """Train a consistency model as configured and write the run folder; returns the final summary.

    With `resume`, the config is read from the run folder and training continues from its newest
    good checkpoint, ending bit-identical (on CPU) to an uninterrupted run. `validated` says that
    the caller already ran `config.validate(cfg)` (the command line does, before it announces the
    run folder), so the config is checked once per command.

    `auto_resume` starts the run if `run_dir` holds none (or only what a kill during start-up left
    before config.json), resumes it if it holds a run of the same config, and refuses (RunDirError)
    a run of another config: one command that a requeued job can rerun blindly. `extend_to`
    (with `resume`) changes the run's train.steps first; see `run_state.extend_run` for how the
    curriculum is affected.
    """
    # Started by torchrun? Then this is one of several data-parallel processes (docs/scaling.md);
    # only rank 0 talks to the user and owns the run folder.
    world = distributed.world_from_env()
    if not world.is_main:
        progress, log = False, _quiet
    if auto_resume:
        resume = holds_run(Path(run_dir))
    # Bad options fail first, so that they never cost an existing run its files (e.g. with --overwrite).
    if not resume:
        _check_new_run(cfg, Path(run_dir), world, overwrite=overwrite, validated=validated)
    same = auto_resume  # a blind rerun must not continue a run of another config
    with distributed.process_group(world), contextlib.ExitStack() as hold:
        # Prepare the run folder (refuses to clobber an existing run) and lock it. Every process
        # trains the config rank 0 settled on (on resume, the run folder's own).
        try:
            opened = partial(
                _open_run, cfg, Path(run_dir), hold, resume, overwrite, log, same=same, extend_to=extend_to
            )
            cfg = from_dict(world.on_main(opened))
            split_global_batch(cfg.train.batch_size, world.size)
            return _train_locked(cfg, Path(run_dir), world, resume=resume, progress=progress, log=log)
        except distributed.DistributedError as exc:  # another process failed, or the processes diverged
            raise TrainingError(str(exc)) from None


def _quiet(*_: Any) -> None:
    """The log of processes other than rank 0."""


def _check_new_run(cfg: Config, run_dir: Path, world: World, *, overwrite: bool, validated: bool) -> None:
    """Everything about a new run's options that can fail before a file is touched."""
    if not validated:
        validate(cfg)
    distributed.device_for(world, cfg.train.device)
    split_global_batch(cfg.train.batch_size, world.size)
    check_new_run(cfg, run_dir, overwrite=overwrite)  # network, pair kind, frozen predictor (preflight.py)
    if overwrite and not is_toy(cfg.data.name) and world.is_main:
        check_image_data(cfg)  # a broken dataset must not cost the run being replaced


def _open_run(
    cfg: Config,
    run_dir: Path,
    hold: contextlib.ExitStack,
    resume: bool,
    overwrite: bool,
    log: Callable[..., None],
    *,
    same: bool = False,
    extend_to: int | None = None,
) -> dict[str, Any]:
    """(Rank 0) Create or reopen the run folder, lock it, and return the config to train (as a dict).

    same: refuse to resume a run whose config differs from `cfg` (--auto-resume);
    extend_to: change the resumed run's train.steps (--resume RUN --steps N).
    """
    folder = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    hold.enter_context(RunLock(folder))
    if not resume:
        return to_dict(cfg)
    saved = read_run_config(folder)
    if same:
        check_same_config(folder, saved, cfg)
    if extend_to is not None:
        validate(saved)
        saved = extend_run(folder, saved, extend_to, log)
    elif to_dict(saved) != to_dict(cfg) and not same:
        log("gcflow: resuming with the run's own config.json (command-line options are ignored on resume)")
    validate(saved)
    return to_dict(saved)


def _train_locked(cfg: Config, run_dir: Path, world: World, *, resume: bool, progress: bool, log: Any) -> RunResult:
    # Pick this process's device (and its threads, cuDNN autotuning).
    device = _set_up_device(cfg, world)

    # Load the data: this process's slice of every global batch.
    source = build_source(cfg, device, world.rank, world.size)

    # Build the model, its EMA and the optimizer (weights depend only on the seed, so every process
    # starts from the same ones). The EMA and the optimizer state inherit the model's memory layout.
    parts = _build_parts(cfg, source, device)
    predictor = build_gc_predictor(cfg, parts.model, parts.ema, device) if mu_schedule(cfg).ever_gc else None
    velocity = cd_velocity(cfg, source, device) if cfg.method.pairs == "cd" else None  # teacher or exact

    # Resume from the newest good checkpoint, or start the run's files.
    start, loss_window = _resume_or_start(cfg, run_dir, world, parts, resume, log, device)

    # Evaluation set-up, on rank 0 (toys: exact W2 against a fixed reference sample and its noise floor).
    evaluator = build_evaluator(cfg, source, device, log) if world.is_main else None

    # The step (training/step.py): draws, pairs, loss, gradient, update.
    stepper = TrainStep(
        cfg,
        source,
        parts.model,
        parts.ema,
        parts.opt,
        device=device,
        decay=_ema_decay(cfg),
        world=world,
        predictor=predictor,
        velocity=velocity,
        loss_fn=consistency_loss,
    )
    stepper.precision.attach(run_dir, start, write=world.is_main)  # train.precision=auto: log and resume its switches

    # Watch the run (rank 0): training curves and evaluations to metrics.jsonl and TensorBoard (monitor.py).
    monitor = Monitor(cfg, run_dir, stepper, parts.opt, device, log, start if resume else None, world.is_main)

    # Train, stopping cleanly on SIGINT/SIGTERM: finish the step, write a checkpoint, exit.
    loop = _Loop(
        cfg,
        run_dir,
        world,
        parts,
        stepper,
        evaluator,
        log,
        _RunningLoss(device, loss_window),
        new_fault_record(device),
        check_each_step=device.type != "cuda" or cfg.train.nonfinite == "skip",
        monitor=monitor,
    )
    # Resumed: redo an evaluation that its (earlier written) checkpoint's run did not finish.
    if resume:
        _settle_evaluation(loop, start)
    with StopSignals() as signals, _progress_bar(cfg.train, start, progress) as bar:
        try:
            _run_steps(loop, start, signals, bar)
        finally:
            stepper.close()
            monitor.close()

    # Summarise (rank 0 writes summary.json; every process returns it).
    summary = world.on_main(partial(write_summary, run_dir, cfg, loop.last, loop.t_start))
    return RunResult(run_dir, summary, model=parts.model, ema=parts.ema)


# -- Set-up ----------------------------------------------------------------------------------------


def _set_up_device(cfg: Config, world: World) -> torch.device:
    device = distributed.device_for(world, cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions: the passes meet only a few shapes
    return device


def _build_parts(cfg: Config, source: Any, device: torch.device) -> RunParts:
    torch.manual_seed(stream_seed(cfg.train.seed, 0, "init"))
    model = init_from_teacher(build_model(cfg, source.shape, source.num_classes), cfg)  # ECT: teacher's weights
    model = set_memory_format(model.to(device), cfg)
    ema = make_ema(model)
    return RunParts(cfg, model, ema, build_optimizer(model, cfg), source)


def _ema_decay(cfg: Config) -> float:
    """The per-step EMA decay: from the half-life in images when set, else optim.ema_decay."""
    o = cfg.optim
    return ema_decay_from_half_life(o.ema_half_life, cfg.train.batch_size) if o.ema_half_life > 0 else o.ema_decay


def _resume_or_start(
    cfg: Config,
    run_dir: Path,
    world: World,
    parts: RunParts,
    resume: bool,
    log: Callable[..., None],
    device: torch.device,
) -> tuple[int, list | None]:
    """(first step, loss window to continue) after loading the newest good checkpoint, or (0, None) for a new run."""
    if not resume:
        if world.is_main:
            start_run_files(run_dir, cfg)
        return 0, None
    start, loss_window = 0, None
    chk = pick_resume_checkpoint(world, run_dir / "checkpoints", log)
    if chk is not None:
        start, loss_window = resume_from(chk, parts)
        log(f"gcflow: resuming {run_dir} from step {start}")
        warn_thread_count(chk, cfg, device, log)
    if world.is_main:
        truncate_metrics(run_dir / "metrics.jsonl", start)  # (killed before its first checkpoint: start over)
    return start, loss_window


def _settle_evaluation(loop: _Loop, start: int) -> None:
    """On resume: a checkpoint is written before its step's evaluation (so an evaluation error never
    loses it) and holds the loss window that evaluation averages. If the evaluation's record is in
    metrics.jsonl it happened: start a new window. If it is due but missing (a kill or an error
    came between), do it now: same weights, same window, so the same record."""
    if start == 0:
        return
    done = loop.world.on_main(partial(_has_record, loop.run_dir, start))
    if done:
        loop.loss.reset()
    elif _due(loop.cfg.train, start).eval:
        m = loop.cfg.method  # the record shows N of the step trained last, as the uninterrupted run's does
        loop.stepper.n_scales = ict_num_scales(start - 1, loop.cfg.train.steps, m.s0, m.s1)
        _evaluate(loop, start)


def _has_record(run_dir: Path, step: int) -> bool:
    return any(r.get("step") == step for r in read_metrics(run_dir, "eval") if isinstance(r, dict))


# -- The loop --------------------------------------------------------------------------------------


class _RunningLoss:
    """The sum and count of the losses since the last evaluation; the sum stays on the device (no per-step sync)."""

    def __init__(self, device: torch.device, window: list | None) -> None:
        self.sum = torch.zeros((), device=device)
        self.count = 0
        if window:  # resumed mid-window: continue the same running mean, so metrics match exactly
            self.sum.fill_(window[0])
            self.count = int(window[1])

    def add(self, loss: Tensor) -> None:
        self.sum += loss
        self.count += 1

    def window(self, world: World) -> list:
        """[sum (mean over processes), count]: what a checkpoint stores (a collective: every process calls it)."""
        return [world.mean(float(self.sum.item())), self.count]

    def mean(self, world: World) -> float:
        return world.mean(float(self.sum.item())) / max(self.count, 1)

    def reset(self) -> None:
        self.sum.zero_()
        self.count = 0


@dataclass
class _Loop:
    """What the loop's paragraphs share."""

    cfg: Config
    run_dir: Path
    world: World
    parts: RunParts
    stepper: TrainStep
    evaluator: Any
    log: Callable[..., None]
    loss: _RunningLoss
    fault: Tensor  # the device-side record of the first non-finite step (faults.py)
    check_each_step: bool
    t_start: float = field(default_factory=time.perf_counter)
    images_done: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # the newest metrics record
    monitor: Monitor | None = None


@dataclass(frozen=True)
class _Due:
    """What happens after step `done`: a progress-bar refresh, an evaluation, a checkpoint."""

    log: bool
    eval: bool
    ckpt: bool


def _due(t: TrainConfig, done: int) -> _Due:
    last = done == t.steps
    return _Due(
        log=done % max(t.log_every, 1) == 0 or last,
        eval=bool(t.eval_every and done % t.eval_every == 0) or last,
        ckpt=bool(t.checkpoint_every and done % t.checkpoint_every == 0) or last,
    )


def _run_steps(loop: _Loop, start: int, signals: StopSignals, bar: tqdm) -> None:
    """Steps start..K-1. Non-finite values are caught before the update on the CPU and with
    train.nonfinite=skip; on CUDA the hot loop never waits for the device, so a non-finite loss or
    gradient is recorded on the device and read at the next sync point (log, evaluation, checkpoint,
    signal, end): the error still names the first bad step, and non-finite weights are never
    evaluated or saved."""
    t = loop.cfg.train
    loop.parts.model.train()
    for step in range(start, t.steps):
        # Take one step on global batch `step` (this process's slice; DDP averages the gradients).
        loss, grad_norm = loop.stepper.forward_backward(step)
        done, due = step + 1, _due(t, step + 1)

        # Agree on a non-finite loss or gradient and on a stop signal, then update or skip.
        stop = _update_or_skip(loop, loss, grad_norm, done, due, bool(signals.received))
        loop.images_done += t.batch_size
        if not loop.check_each_step and (due.log or due.eval or due.ckpt or stop):
            raise_on_fault(loop.fault, loop.world)

        # Log (training curves, monitor.py), evaluate, checkpoint.
        loop.monitor.after_step(step, loss, grad_norm)
        if due.log or due.eval or due.ckpt:
            loop.monitor.end_window(done, wait=due.eval or due.ckpt or stop)
        elif stop:
            loop.monitor.stopped(done)
        if due.log:
            _show_progress(loop, bar)
        bar.update(1)
        t_pause = time.perf_counter()
        if due.ckpt or stop:  # before the evaluation: an evaluation error never costs the checkpoint
            save_run_state(loop.world, loop.run_dir / "checkpoints", done, loop.parts, loop.loss.window(loop.world))
        if due.eval:
            _evaluate(loop, done)
        loop.monitor.curves.exclude(time.perf_counter() - t_pause)
        if stop:
            raise Interrupted(
                f"stopped by signal {(signals.received or [0])[0]} at step {done}; "
                f"resume with 'gcflow train --resume {loop.run_dir}'"
            )


def _update_or_skip(loop: _Loop, loss: Tensor, grad_norm: Tensor, done: int, due: _Due, stop: bool) -> bool:
    """Apply the step's update unless its loss or gradient is non-finite; returns whether to stop.

    With several processes the flags are agreed on every step when checking each step, else at sync points.
    """
    bad = loop.check_each_step and not bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
    if loop.world.distributed:
        sync = loop.check_each_step or due.log or due.eval or due.ckpt
        bad, stop = loop.world.any(bad, stop) if sync else (False, False)
    if bad:
        msg = nonfinite_message(done, loss.item(), grad_norm.item())
        if loop.cfg.train.nonfinite != "skip":
            raise TrainingError(msg)
        # Skip the update only: evaluation, checkpoints and signals still happen on time.
        loop.log(f"gcflow: warning: {msg}; skipping the step")
        loop.stepper.discard()
        return stop
    if not loop.check_each_step:
        record_fault(loop.fault, done, loss, grad_norm)
    loop.stepper.update()
    loop.loss.add(loss)
    return stop


def _show_progress(loop: _Loop, bar: tqdm) -> None:
    """The progress bar shows the newest training record (a window behind: reading it never waits for the device)."""
    latest = loop.monitor.curves.latest
    if latest:
        bar.set_postfix(loss=f"{latest['loss']:.4f}", img_s=f"{latest['images_per_s']:.0f}", N=latest["n_scales"])


def _evaluate(loop: _Loop, done: int) -> None:
    """Score the EMA model (rank 0) and record it (metrics.jsonl, sinks, pictures, one line); reset the loss window."""
    window_loss = loop.loss.mean(loop.world)
    if loop.world.is_main:
        metrics, samples = loop.evaluator(loop.parts.ema, loop.cfg)
        seconds = time.perf_counter() - loop.t_start
        record = eval_record(done, loop.cfg, loop.stepper.n_scales, window_loss, metrics, seconds)
        loop.last = {"step": done, **record}
        loop.monitor.evaluated(done, record, samples, loop.evaluator)
    loop.loss.reset()


@contextlib.contextmanager
def _progress_bar(t: TrainConfig, start: int, progress: bool):
    bar = tqdm(total=t.steps, initial=start, disable=not progress, dynamic_ncols=True, desc="train", mininterval=1.0)
    try:
        yield bar
    finally:
        bar.close()
