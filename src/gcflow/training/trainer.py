"""The bundled training loop: one flat function composing gcflow's parts, in commented paragraphs.

Everything mathematical lives in the library (sigmas, pairs, loss, EMA, samplers); this file only
wires it to data, an optimizer, logging and checkpoints.
"""

from __future__ import annotations

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

from gcflow.distances import get_distance
from gcflow.dropout import SharedDropout
from gcflow.ema import ema_decay_from_half_life, ema_update, make_ema
from gcflow.loss import consistency_loss
from gcflow.pairs import PairRecipe, build_pairs
from gcflow.plotting import save_curves, save_scatter
from gcflow.randomness import step_generator, stream_seed
from gcflow.sigmas import ict_num_scales, sample_noise_levels
from gcflow.training import checkpoint as ckpt
from gcflow.training.builders import build_model, build_optimizer, resolve_device
from gcflow.training.config import Config, ConfigError, load_config, to_dict, validate
from gcflow.training.data_source import build_toy_source, is_toy
from gcflow.training.evaluate import ToyEvaluator
from gcflow.training.run_dir import RunLock, prepare_run_dir


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the likely cause."""


class Interrupted(Exception):
    """Raised inside the loop after SIGINT/SIGTERM, once a checkpoint has been written."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


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
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ckpt.CheckpointError(f"checkpoint {chk.path} does not fit this run's architecture or config: {first}") from None


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

    @torch.no_grad()
    def predict(x: Tensor, s: Tensor) -> Tensor:
        with _eval_mode(net):
            return net(x, s)

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
    # Prepare the run folder (refuses to clobber an existing run) and lock it. Bad options fail
    # first, so that they never cost an existing run its files (e.g. with --overwrite).
    if not resume:
        validate(cfg)
        resolve_device(cfg.train.device)
    run_dir = prepare_run_dir(Path(run_dir), resume=resume, overwrite=overwrite)
    with RunLock(run_dir):
        if resume:
            saved = _read_run_config(run_dir)
            if to_dict(saved) != to_dict(cfg):
                log("gcflow: resuming with the run's own config.json (command-line options are ignored on resume)")
            cfg = saved
        validate(cfg)
        return _train_locked(cfg, run_dir, resume=resume, progress=progress, log=log)


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


def _train_locked(cfg: Config, run_dir: Path, *, resume: bool, progress: bool, log: Any) -> RunResult:
    t, m = cfg.train, cfg.method
    device = resolve_device(t.device)
    rank, world_size = 0, 1
    split_global_batch(t.batch_size, world_size)

    # Load the data.
    if not is_toy(cfg.data.name):
        from gcflow.training.image_run import build_image_source

        source = build_image_source(cfg, device, rank, world_size)
    else:
        source = build_toy_source(cfg.data.name, t.batch_size, t.seed, device, rank, world_size)
    if m.pairs == "cd" and not is_toy(cfg.data.name):
        raise ConfigError("method.pairs=cd needs the exact velocity of a toy distribution; pick a toy data.name")

    # Build the model, its EMA and the optimizer (weights depend only on the seed).
    torch.manual_seed(stream_seed(t.seed, 0, "init"))
    model = build_model(cfg, source.shape, source.num_classes).to(device)
    ema = make_ema(model)
    opt = build_optimizer(model, cfg)
    decay = ema_decay_from_half_life(cfg.optim.ema_half_life, t.batch_size) if cfg.optim.ema_half_life > 0 else cfg.optim.ema_decay
    recipe = PairRecipe(kind=m.pairs, coupling=m.coupling, gc_mu=m.gc_mu, cd_solver=m.cd_solver)
    distance = get_distance(m.distance)
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
        chk = ckpt.load_latest_checkpoint(ckpt_dir, warn=log)
        if chk is None and ckpt.list_checkpoints(ckpt_dir):
            raise ckpt.CheckpointError(f"no checkpoint in {ckpt_dir} verifies (all are corrupt or not gcflow checkpoints); nothing was changed")
        if chk is not None:
            if to_dict(_config_from_meta(chk)) != to_dict(cfg):
                raise ckpt.CheckpointError(f"checkpoint {chk.path} was written by another config; it cannot resume this run")
            _load_states(chk, model, ema, opt)
            source.load_state_dict(chk.meta.get("data", {}))
            start = int(chk.meta["step"])
            loss_window = chk.meta.get("loss_window")
            log(f"gcflow: resuming {run_dir} from step {start}")
        _truncate_metrics(run_dir / "metrics.jsonl", start)  # (killed before its first checkpoint: start over)
    else:
        ckpt.atomic_write_bytes(run_dir / "config.json", (json.dumps(to_dict(cfg), indent=2) + "\n").encode())
        (run_dir / "metrics.jsonl").write_text("")

    def save(step: int) -> None:
        tensors, opt_meta = _state_tensors(model, ema, opt)
        meta = {"config": to_dict(cfg), "optimizer": opt_meta, "data": source.state_dict(), "data_shape": list(source.shape), "num_classes": source.num_classes,
                "loss_window": [float(loss_sum.item()), loss_count]}  # the running mean since the last evaluation
        ckpt.save_checkpoint(ckpt_dir, step, tensors, meta, keep=t.keep_checkpoints)

    # Evaluation set-up (toys: exact W2 against a fixed reference sample and its noise floor).
    if is_toy(cfg.data.name):
        mix = source.mixture  # type: ignore[attr-defined]
        evaluator: Any = ToyEvaluator(lambda n, g: mix.sample(n, g), t.eval_samples, mix.dim, t.seed, device)
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
    t_start, images_done = time.perf_counter(), 0
    last: dict[str, Any] = {}
    try:
        model.train()
        for step in range(start, t.steps):
            # Draw this step's levels, noise, GC selection and dropout seed from per-step streams.
            n_scales = ict_num_scales(step, t.steps, m.s0, m.s1)
            x0, labels = source.batch(step)
            b_local = x0.shape[0]
            lo = rank * b_local
            sig_i, sig_n, weight = sample_noise_levels(
                n_scales, t.batch_size, sigma_min=m.sigma_min, sigma_max=m.sigma_max, rho=m.rho,
                p_mean=m.p_mean, p_std=m.p_std, generator=step_generator(t.seed, step, "levels"), device=device,
            )
            sig_i, sig_n, weight = sig_i[lo : lo + b_local], sig_n[lo : lo + b_local], weight[lo : lo + b_local]
            z = torch.randn((t.batch_size, *source.shape), generator=step_generator(t.seed, step, "noise", device), device=device)[lo : lo + b_local]
            gc_mask = None
            if m.gc_mu > 0:
                u = torch.rand(t.batch_size, generator=step_generator(t.seed, step, "gc"))
                gc_mask = (u < m.gc_mu)[lo : lo + b_local].to(device)
            dropout = SharedDropout(stream_seed(t.seed, step, "dropout", rank), device)

            # Build the pairs (coupling -> GC -> CT/CD) and take one optimizer step on the loss.
            pairs = build_pairs(recipe, x0, z, sig_i, sig_n, weight, predictor=predictor, velocity=velocity, gc_mask=gc_mask)
            f = (lambda x, s: model(x, s, labels)) if labels is not None else model
            loss = consistency_loss(f, pairs, distance, dropout).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
            if not bool(torch.isfinite(loss) & torch.isfinite(grad_norm)):
                what = "loss" if not torch.isfinite(loss) else "gradient"
                msg = (f"non-finite {what} at step {step + 1} (loss={loss.item():.4g}, grad norm={grad_norm.item():.4g}); "
                       "likely cause: learning rate too high or non-finite data; lower optim.lr or check the data")
                if t.nonfinite != "skip":
                    raise TrainingError(msg)
                # Skip the update only: evaluation, checkpoints and signals below still happen on time.
                log(f"gcflow: warning: {msg}; skipping the step")
                opt.zero_grad(set_to_none=True)
            else:
                opt.step()
                ema_update(ema, model, decay)
                loss_sum += loss.detach()
                loss_count += 1
            images_done += t.batch_size
            done = step + 1

            # Log, evaluate, checkpoint.
            if done % max(t.log_every, 1) == 0 or done == t.steps:
                rate = images_done / max(time.perf_counter() - t_start, 1e-9)
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}", N=n_scales)
            bar.update(1)
            is_eval = (t.eval_every and done % t.eval_every == 0) or done == t.steps
            if is_eval:
                metrics, samples = evaluator(ema, cfg)
                last = {"step": done, "images": done * t.batch_size, "n_scales": n_scales,
                        "loss": float(loss_sum.item() / max(loss_count, 1)), **metrics,
                        "seconds": round(time.perf_counter() - t_start, 3)}
                loss_sum.zero_()
                loss_count = 0
                with open(run_dir / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(last) + "\n")
                _write_pictures(run_dir, cfg, samples, evaluator)
            if (t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.steps:
                save(done)
            if stop_signal:
                if not ((t.checkpoint_every and done % t.checkpoint_every == 0) or done == t.steps):
                    save(done)
                raise Interrupted(f"stopped by signal {stop_signal[0]} at step {done}; resume with 'gcflow train --resume {run_dir}'")
    finally:
        bar.close()
        for sig, h in handlers.items():
            signal.signal(sig, h)

    # Summarise.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = dict(records[-1]) if records else dict(last)
    summary.update({"run_dir": str(run_dir), "config": to_dict(cfg), "wall_seconds": round(time.perf_counter() - t_start, 3)})
    ckpt.atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return RunResult(run_dir, summary)


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
