"""The bundled training loop: one flat function composing gcflow's parts, in commented paragraphs.

Everything mathematical lives in the library (sigmas, pairs, loss, EMA, samplers); this file only
wires it to data, an optimizer, logging and checkpoints. The per-step hot path is
`gcflow.training.step.TrainStep`; data-parallel processes started by torchrun are handled through
`gcflow.training.distributed` (see docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gcflow.ema import ema_decay_from_half_life, make_ema
from gcflow.loss import consistency_loss
from gcflow.plotting import save_curves, save_scatter
from gcflow.randomness import stream_seed
from gcflow.training import checkpoint as ckpt
from gcflow.training import distributed
from gcflow.training.builders import build_model, build_optimizer, set_memory_format
from gcflow.training.config import Config, ConfigError, from_dict, load_config, to_dict, validate
from gcflow.training.data_source import build_toy_source, is_toy
from gcflow.training.evaluate import ToyEvaluator
from gcflow.training.run_dir import RunLock, prepare_run_dir
from gcflow.training.step import TrainStep


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the likely cause."""


class Interrupted(Exception):
    """Raised inside the loop after SIGINT/SIGTERM, once a checkpoint has been written."""


@dataclass
class RunResult:
    """The run folder, its summary, and (for scripts and tests) the trained model and its EMA on this process."""

    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module | None = None
    ema: nn.Module | None = None


def _eval_mode(module: nn.Module):
    class _Ctx:
        def __enter__(self) -> None:
            self.was = module.training
            module.eval()

        def __exit__(self, *exc: object) -> None:
            module.train(self.was)

    return _Ctx()


def _state_tensors(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt)
    tensors.update(opt_tensors)
    return tensors, opt_meta


def _load_states(chk: ckpt.Checkpoint, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer | None) -> None:
    try:
        model.load_state_dict(ckpt.split_prefix(chk.tensors, "model"))
        ema.load_state_dict(ckpt.split_prefix(chk.tensors, "ema"))
        if opt is not None:
            ckpt.optimizer_from_flat(opt, chk.tensors, chk.meta["optimizer"])
            _match_layouts(opt)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ckpt.CheckpointError(f"checkpoint {chk.path} does not fit this run's architecture or config: {first}") from None


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state its parameter's memory layout (checkpoints hold the standard one),
    so that the foreach updates keep their fast path for channels-last weights. Values are unchanged."""
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)


def _predictor(cfg: Config, model: nn.Module, ema: nn.Module, device: torch.device):
    """The GC predictor f_η: EMA (default), the online network, or a frozen model from a checkpoint.

    It runs in eval mode (no dropout) and under no_grad: it only supplies the re-noised endpoint.
    """
    kind = cfg.method.gc_predictor
    if kind == "ema":
        net = ema
    elif kind == "online":
        net = model
    else:
        net, _ = load_model_for_inference(Path(cfg.method.gc_checkpoint), device)
        net = set_memory_format(net, cfg)
    # Compiled with a dynamic batch axis: the GC subset's size changes from step to step.
    run = torch.compile(net, dynamic=True) if cfg.train.compile else net

    @torch.no_grad()
    def predict(x: Tensor, s: Tensor, class_labels: Tensor | None = None) -> Tensor:
        with _eval_mode(net):
            return run(x, s, class_labels) if class_labels is not None else run(x, s)

    return predict


def load_model_for_inference(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """The EMA model and config of a run folder (its newest good checkpoint) or of one checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise ckpt.CheckpointError(f"{path} is not a gcflow run folder or checkpoint file (it does not exist)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ckpt.CheckpointError(f"{path} is not a gcflow run folder (no config.json)")
        chk = ckpt.load_latest_checkpoint(path / "checkpoints")
        if chk is None:
            raise ckpt.CheckpointError(f"run folder {path} has no valid checkpoint")
        if to_dict(_config_from_meta(chk)) != to_dict(_read_run_config(path)):  # (both with today's defaults filled in)
            raise ckpt.CheckpointError(f"checkpoint {chk.path} was written by another config than {path / 'config.json'}; refusing to load it")
    else:
        chk = ckpt.load_checkpoint(path)
    cfg = _config_from_meta(chk)
    shape = tuple(chk.meta["data_shape"])
    model = build_model(cfg, shape, int(chk.meta.get("num_classes", 0)))
    ema = make_ema(model)
    _load_states(chk, model, ema, None)
    ema.data_shape = shape  # type: ignore[assignment]  (read by `gcflow sample`)
    ema.num_classes = int(chk.meta.get("num_classes", 0))  # type: ignore[assignment]
    return ema.to(device).eval(), cfg


def _read_run_config(run_dir: Path) -> Config:
    """A run folder's config.json; unreadable or invalid JSON is a one-line ConfigError."""
    try:
        return load_config(run_dir / "config.json")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {run_dir / 'config.json'}: {type(exc).__name__}; the run folder is damaged") from None


def _config_from_meta(chk: ckpt.Checkpoint) -> Config:
    from gcflow.training.config import from_dict

    return from_dict(chk.meta["config"])


def train(cfg: Config, run_dir: Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True, log: Any = print) -> RunResult:
    """Train a consistency model as configured and write the run folder; returns the final summary.

    With `resume`, the config is read from the run folder and training continues from its newest
    good checkpoint, ending bit-identical (on CPU) to an uninterrupted run.
    """
    # Started by torchrun? Then this is one of several data-parallel processes (docs/scaling.md);
    # only rank 0 talks to the user and owns the run folder.
    world = distributed.world_from_env()
    if not world.is_main:
        progress, log = False, _quiet
    # Prepare the run folder (refuses to clobber an existing run) and lock it. Bad options fail
    # first, so that they never cost an existing run its files (e.g. with --overwrite).
    if not resume:
        validate(cfg)
        distributed.device_for(world, cfg.train.device)
        split_global_batch(cfg.train.batch_size, world.size)
        if overwrite and not is_toy(cfg.data.name) and world.is_main:
            _check_image_data(cfg)  # a broken dataset must not cost the run being replaced
    with distributed.process_group(world), contextlib.ExitStack() as hold:

        def open_run() -> dict[str, Any]:
            folder = prepare_run_dir(Path(run_dir), resume=resume, overwrite=overwrite)
            hold.enter_context(RunLock(folder))
            resolved = cfg
            if resume:
                saved = _read_run_config(folder)
                if to_dict(saved) != to_dict(cfg):
                    log("gcflow: resuming with the run's own config.json (command-line options are ignored on resume)")
                resolved = saved
            validate(resolved)
            return to_dict(resolved)

        # Every process trains the config rank 0 settled on (on resume, the run folder's own).
        try:
            cfg = from_dict(world.on_main(open_run))
            split_global_batch(cfg.train.batch_size, world.size)
            return _train_locked(cfg, Path(run_dir), world, resume=resume, progress=progress, log=log)
        except distributed.DistributedError as exc:  # another process failed, or the processes diverged
            raise TrainingError(str(exc)) from None


def _quiet(*_: Any) -> None:
    """The log of processes other than rank 0."""


def split_global_batch(batch_size: int, world_size: int) -> int:
    """The per-process batch of a global batch split over `world_size` processes.

    Raises ConfigError (one line, with the fix) unless `batch_size` is a positive multiple of `world_size`.
    """
    if world_size < 1:
        raise ConfigError(f"the number of processes must be >= 1, got {world_size}")
    if batch_size < 1 or batch_size % world_size:
        lo = max(world_size, batch_size - batch_size % world_size)
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} such as train.batch_size={lo}"
        )
    return batch_size // world_size


def _check_image_data(cfg: Config) -> None:
    """Load the configured image dataset once, so its errors surface before any file is touched."""
    from gcflow.training.image_run import check_image_data

    check_image_data(cfg)


def _train_locked(cfg: Config, run_dir: Path, world: distributed.World, *, resume: bool, progress: bool, log: Any) -> RunResult:
    t, m = cfg.train, cfg.method
    device = distributed.device_for(world, t.device)
    rank, world_size = world.rank, world.size
    split_global_batch(t.batch_size, world_size)
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions: the passes meet only a few shapes

    # Load the data.
    if not is_toy(cfg.data.name):
        from gcflow.training.image_run import build_image_source

        source = build_image_source(cfg, device, rank, world_size)
    else:
        source = build_toy_source(cfg.data.name, t.batch_size, t.seed, device, rank, world_size)
    if m.pairs == "cd" and not is_toy(cfg.data.name):
        raise ConfigError("method.pairs=cd needs the exact velocity of a toy distribution; pick a toy data.name")

    # Build the model, its EMA and the optimizer (weights depend only on the seed, so every process
    # starts from the same ones). The EMA and the optimizer state inherit the model's memory layout.
    torch.manual_seed(stream_seed(t.seed, 0, "init"))
    model = set_memory_format(build_model(cfg, source.shape, source.num_classes).to(device), cfg)
    ema = make_ema(model)
    opt = build_optimizer(model, cfg)
    decay = ema_decay_from_half_life(cfg.optim.ema_half_life, t.batch_size) if cfg.optim.ema_half_life > 0 else cfg.optim.ema_decay
    predictor = _predictor(cfg, model, ema, device) if m.gc_mu > 0 else None
    velocity = None
    if m.pairs == "cd":
        mixture = source.mixture  # type: ignore[attr-defined]

        def velocity(x: Tensor, s: Tensor) -> Tensor:
            return mixture.velocity(x.to(torch.float64), s.to(torch.float64)).to(x.dtype)

    # Resume from the newest good checkpoint, or start the run's files.
    ckpt_dir = run_dir / "checkpoints"
    start, loss_window = 0, None
    if resume:
        # Rank 0 picks the newest good checkpoint; the other processes load the same file (a
        # multi-node run needs its run folder on a shared file system to resume).
        picked: list[ckpt.Checkpoint | None] = []

        def pick() -> str | None:
            newest = ckpt.load_latest_checkpoint(ckpt_dir, warn=log)
            if newest is None and ckpt.list_checkpoints(ckpt_dir):
                raise ckpt.CheckpointError(f"no checkpoint in {ckpt_dir} verifies (all are corrupt or not gcflow checkpoints); nothing was changed")
            picked.append(newest)
            return None if newest is None else str(newest.path)

        path = world.on_main(pick)
        chk = picked[0] if picked else (ckpt.load_checkpoint(Path(path)) if path else None)
        if chk is not None:
            if to_dict(_config_from_meta(chk)) != to_dict(cfg):
                raise ckpt.CheckpointError(f"checkpoint {chk.path} was written by another config; it cannot resume this run")
            _load_states(chk, model, ema, opt)
            source.load_state_dict(chk.meta.get("data", {}))
            start = int(chk.meta["step"])
            loss_window = chk.meta.get("loss_window")
            log(f"gcflow: resuming {run_dir} from step {start}")
        if world.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start)  # (killed before its first checkpoint: start over)
    elif world.is_main:
        ckpt.atomic_write_bytes(run_dir / "config.json", (json.dumps(to_dict(cfg), indent=2) + "\n").encode())
        (run_dir / "metrics.jsonl").write_text("")

    def save(step: int) -> None:
        # Every process: the loss window (a mean over processes) and a check that the weights and
        # the EMA are still identical everywhere; then rank 0 writes the file.
        window = [world.mean(float(loss_sum.item())), loss_count]  # the running mean since the last evaluation
        world.check_identical(lambda: _fingerprint(model, ema), "model and EMA weights")

        def write() -> None:
            tensors, opt_meta = _state_tensors(model, ema, opt)
            meta = {"config": to_dict(cfg), "optimizer": opt_meta, "data": source.state_dict(), "data_shape": list(source.shape),
                    "num_classes": source.num_classes, "loss_window": window}
            ckpt.save_checkpoint(ckpt_dir, step, tensors, meta, keep=t.keep_checkpoints)

        world.on_main(write)

    # Evaluation set-up, on rank 0 (toys: exact W2 against a fixed reference sample and its noise floor).
    evaluator: Any = None
    if not world.is_main:
        pass
    elif is_toy(cfg.data.name):
        mix = source.mixture  # type: ignore[attr-defined]
        evaluator = ToyEvaluator(lambda n, g: mix.sample(n, g), t.eval_samples, mix.dim, t.seed, device)
    else:
        from gcflow.training.image_run import ImageEvaluator

        evaluator = ImageEvaluator(cfg, source, device)

    # Stop cleanly on SIGINT/SIGTERM: finish the step, write a checkpoint, exit.
    stop_signal: list[int] = []
    handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            handlers[sig] = signal.signal(sig, lambda s, _f: stop_signal.append(s))
        except ValueError:  # not the main thread: leave signals alone
            pass

    bar = tqdm(total=t.steps, initial=start, disable=not progress, dynamic_ncols=True, desc="train", mininterval=1.0)
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    if loss_window:  # resumed mid-window: continue the same running mean, so metrics match exactly
        loss_sum.fill_(loss_window[0])
        loss_count = int(loss_window[1])
    # The step (training/step.py): draws, pairs, loss, gradient, update. Non-finite values are caught
    # before the update on the CPU and with train.nonfinite=skip; on CUDA the hot loop never waits
    # for the device, so a non-finite loss or gradient is recorded on the device (`fault`) and read
    # at the next sync point (log, evaluation, checkpoint, signal, end): the error still names the
    # first bad step, and non-finite weights are never evaluated or saved.
    stepper = TrainStep(cfg, source, model, ema, opt, device=device, decay=decay, world=world,
                        predictor=predictor, velocity=velocity, loss_fn=consistency_loss)
    check_each_step = device.type != "cuda" or t.nonfinite == "skip"
    fault = torch.zeros(3, dtype=torch.float64, device=device)  # (first non-finite step or 0, its loss, its gradient norm)
    t_start, images_done = time.perf_counter(), 0
    last: dict[str, Any] = {}
    try:
        model.train()
        for step in range(start, t.steps):
            # Take one step on global batch `step` (this process's slice; DDP averages the gradients).
            loss, grad_norm = stepper.forward_backward(step)
            n_scales, done = stepper.n_scales, step + 1
            is_log = done % max(t.log_every, 1) == 0 or done == t.steps
            is_eval = bool(t.eval_every and done % t.eval_every == 0) or done == t.steps
            is_ckpt = bool(t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.steps

            # Agree on a non-finite loss or gradient and on a stop signal (with several processes,
            # every step when checking each step, else at sync points), then update or not.
            bad = check_each_step and not bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
            stop = bool(stop_signal)
            if world.distributed:
                bad, stop = world.any(bad, stop) if (check_each_step or is_log or is_eval or is_ckpt) else (False, False)
            if bad:
                msg = _nonfinite_message(done, loss.item(), grad_norm.item())
                if t.nonfinite != "skip":
                    raise TrainingError(msg)
                # Skip the update only: evaluation, checkpoints and signals below still happen on time.
                log(f"gcflow: warning: {msg}; skipping the step")
                stepper.discard()
            else:
                if not check_each_step:
                    _record_fault(fault, done, loss, grad_norm)
                stepper.update()
                loss_sum += loss
                loss_count += 1
            images_done += t.batch_size
            if not check_each_step and (is_log or is_eval or is_ckpt or stop):
                _raise_on_fault(fault, world)

            # Log, evaluate, checkpoint.
            if is_log:
                rate = images_done / max(time.perf_counter() - t_start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}", N=n_scales)
            bar.update(1)
            if is_eval:
                window_loss = world.mean(float(loss_sum.item())) / max(loss_count, 1)
                if world.is_main:
                    metrics, samples = evaluator(ema, cfg)
                    last = {"step": done, "images": done * t.batch_size, "n_scales": n_scales,
                            "loss": float(window_loss), **metrics,
                            "seconds": round(time.perf_counter() - t_start, 3)}
                    with open(run_dir / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(last) + "\n")
                    _write_pictures(run_dir, cfg, samples, evaluator)
                loss_sum.zero_()
                loss_count = 0
            if is_ckpt:
                save(done)
            if stop:
                if not is_ckpt:
                    save(done)
                raise Interrupted(f"stopped by signal {(stop_signal or [0])[0]} at step {done}; resume with 'gcflow train --resume {run_dir}'")
    finally:
        stepper.close()
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)

    # Summarise (rank 0 writes summary.json; every process returns it).
    def summarise() -> dict[str, Any]:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = dict(records[-1]) if records else dict(last)
        summary.update({"run_dir": str(run_dir), "config": to_dict(cfg), "wall_seconds": round(time.perf_counter() - t_start, 3)})
        ckpt.atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    return RunResult(run_dir, world.on_main(summarise), model=model, ema=ema)


def _nonfinite_message(step: int, loss: float, grad_norm: float) -> str:
    what = "loss" if not math.isfinite(loss) else "gradient" if not math.isfinite(grad_norm) else "loss or gradient (on another process)"
    return (f"non-finite {what} at step {step} (loss={loss:.4g}, grad norm={grad_norm:.4g}); "
            "likely cause: learning rate too high or non-finite data; lower optim.lr or check the data")


def _record_fault(fault: Tensor, step: int, loss: Tensor, grad_norm: Tensor) -> None:
    """Remember (step, loss, grad norm) of the first non-finite step, on the device (no host sync)."""
    first = (fault[0] == 0) & ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
    now = torch.stack([torch.full((), float(step), dtype=torch.float64, device=fault.device), loss.double(), grad_norm.double()])
    fault.copy_(torch.where(first, now, fault))


def _raise_on_fault(fault: Tensor, world: distributed.World) -> None:
    """Read the fault record (a sync point) and stop every process if any process recorded a non-finite step."""
    step, loss, grad_norm = fault.tolist()
    (bad,) = world.any(step > 0)
    if bad:
        if step == 0:
            raise TrainingError("non-finite loss or gradient on another process; see rank 0's message")
        raise TrainingError(_nonfinite_message(int(step), loss, grad_norm))


def _fingerprint(*modules: nn.Module) -> Tensor:
    """A CPU vector summarising all parameters (per-tensor sums in float64): equal iff the weights very likely are."""
    sums = [p.detach().double().sum() for mod in modules for p in mod.parameters()]
    return torch.stack(sums).cpu() if sums else torch.zeros(1, dtype=torch.float64)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric records written after the checkpoint we resume from (they will be recomputed)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line torn by a crash
    path.write_text("".join(line + "\n" for line in keep))


def _write_pictures(run_dir: Path, cfg: Config, samples: Tensor, evaluator: Any) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if samples.ndim == 2 and samples.shape[1] == 2:
        save_scatter(run_dir / "samples.png", samples[:2000], getattr(evaluator, "reference", None), title=f"{cfg.data.name}, step {records[-1]['step']}")
        save_curves(run_dir / "metrics.png", records, ["loss", "w2", "sliced_w2"], {"w2": "w2_noise_floor", "sliced_w2": "sliced_w2_noise_floor"})
    else:
        evaluator.write_pictures(run_dir, samples, records)
