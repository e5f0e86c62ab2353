"""A run's state on disk and back: checkpoint tensors of the model, EMA and optimizer, and loading a trained run.

`load_run` is how commands and scripts get a trained model: the EMA network in eval mode, the run's
config, and the data shape and class count the network was built for, as one typed `LoadedRun`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from gcflow.ema import make_ema
from gcflow.files import atomic_write_bytes
from gcflow.training import checkpoint as ckpt
from gcflow.training import run_dir as run_dir_files
from gcflow.training.builders import build_model
from gcflow.training.config import Config, ConfigError, from_dict, load_config, to_dict
from gcflow.training.distributed import World, fingerprint


@dataclass(frozen=True)
class LoadedRun:
    """A trained run, ready for sampling.

    Attributes:
        model: the EMA network f(x, σ[, class_labels]) in eval mode, on the requested device.
        config: the run's resolved config.
        data_shape: one sample's shape without the batch axis, e.g. (2,) or (C, H, W).
        num_classes: the number of class labels the network takes (0 = unconditional).
    """

    model: nn.Module
    config: Config
    data_shape: tuple[int, ...]
    num_classes: int


def load_run(path: Path | str, device: torch.device | str = "cpu") -> LoadedRun:
    """The EMA model of a run folder (its newest good checkpoint), of one checkpoint file, or of an
    export folder written by `gcflow export`.

    Raises CheckpointError (one line) for a missing, damaged or mismatched run folder or file.
    """
    from gcflow.export import is_export, load_exported

    if is_export(Path(path)):
        return load_exported(Path(path), device)
    chk = checkpoint_to_load(Path(path))
    cfg = config_from_meta(chk)
    shape = tuple(int(n) for n in chk.meta["data_shape"])
    num_classes = int(chk.meta.get("num_classes", 0))
    model = build_model(cfg, shape, num_classes)
    ema = make_ema(model)
    load_states(chk, model, ema, None)
    return LoadedRun(ema.to(device).eval(), cfg, shape, num_classes)


def load_model_for_inference(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """(EMA model in eval mode, config) of a run folder or checkpoint file: `load_run` without the shapes."""
    run = load_run(path, device)
    return run.model, run.config


def checkpoint_to_load(path: Path) -> ckpt.Checkpoint:
    """The checkpoint `load_run` reads: the file itself, or a run folder's newest good one (matching its config.json)."""
    if not path.exists():
        raise ckpt.CheckpointError(f"{path} is not a gcflow run folder or checkpoint file (it does not exist)")
    if not path.is_dir():
        return ckpt.load_checkpoint(path)
    if not (path / "config.json").is_file():
        raise ckpt.CheckpointError(f"{path} is not a gcflow run folder (no config.json)")
    chk = ckpt.load_latest_checkpoint(path / "checkpoints")
    if chk is None:
        raise ckpt.CheckpointError(f"run folder {path} has no valid checkpoint")
    if to_dict(config_from_meta(chk)) != to_dict(read_run_config(path)):  # (both with today's defaults filled in)
        raise ckpt.CheckpointError(
            f"checkpoint {chk.path} was written by another config than {path / 'config.json'}; refusing to load it"
        )
    return chk


def read_run_config(run_dir: Path) -> Config:
    """A run folder's config.json; unreadable or invalid JSON is a one-line ConfigError."""
    try:
        return load_config(run_dir / "config.json")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {run_dir / 'config.json'}: {type(exc).__name__}; the run folder is damaged"
        ) from None


def config_from_meta(chk: ckpt.Checkpoint) -> Config:
    """The config a checkpoint was written with."""
    return from_dict(chk.meta["config"])


# -- Checkpoint tensors ------------------------------------------------------------------------


def state_tensors(
    model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flat tensors ("model.*", "ema.*", optimizer state) and the optimizer's JSON metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt)
    tensors.update(opt_tensors)
    return tensors, opt_meta


def load_states(chk: ckpt.Checkpoint, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer | None) -> None:
    """Load a checkpoint's tensors into model, EMA and (unless None) optimizer; a mismatch is one CheckpointError."""
    try:
        model.load_state_dict(ckpt.split_prefix(chk.tensors, "model"))
        ema.load_state_dict(ckpt.split_prefix(chk.tensors, "ema"))
        if opt is not None:
            ckpt.optimizer_from_flat(opt, chk.tensors, chk.meta["optimizer"])
            match_layouts(opt)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ckpt.CheckpointError(
            f"checkpoint {chk.path} does not fit this run's architecture or config: {first}"
        ) from None


def match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give loaded optimizer state its parameter's memory layout (checkpoints hold the standard one),
    so that the foreach updates keep their fast path for channels-last weights. Values are unchanged."""
    for p, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)


# -- Saving and resuming a run in progress ----------------------------------------------------------


def pick_resume_checkpoint(world: World, ckpt_dir: Path, log: Callable[..., None]) -> ckpt.Checkpoint | None:
    """The newest good checkpoint of `ckpt_dir`, on every process (None: no checkpoint yet).

    Rank 0 picks it; the other processes load the same file (a multi-node run needs its run folder
    on a shared file system to resume). Raises CheckpointError if checkpoints exist but none verifies.
    """
    picked: ckpt.Checkpoint | None = None

    def newest_path() -> str | None:
        nonlocal picked
        picked = ckpt.load_latest_checkpoint(ckpt_dir, warn=log)
        if picked is None and ckpt.list_checkpoints(ckpt_dir):
            raise ckpt.CheckpointError(
                f"no checkpoint in {ckpt_dir} verifies (all are corrupt or not gcflow checkpoints); nothing was changed"
            )
        return None if picked is None else str(picked.path)

    path = world.on_main(newest_path)
    if world.is_main or path is None:
        return picked
    return ckpt.load_checkpoint(Path(path))


@dataclass
class RunParts:
    """What a checkpoint holds of a run in progress: the networks, the optimizer and the data source."""

    cfg: Config
    model: nn.Module
    ema: nn.Module
    opt: torch.optim.Optimizer
    source: Any


def resume_from(chk: ckpt.Checkpoint, parts: RunParts) -> tuple[int, list | None]:
    """Load a checkpoint into `parts`; returns (its step, its loss window or None)."""
    if to_dict(config_from_meta(chk)) != to_dict(parts.cfg):
        raise ckpt.CheckpointError(f"checkpoint {chk.path} was written by another config; it cannot resume this run")
    load_states(chk, parts.model, parts.ema, parts.opt)
    parts.source.load_state_dict(chk.meta.get("data", {}))
    return int(chk.meta["step"]), chk.meta.get("loss_window")


def save_run_state(world: World, ckpt_dir: Path, step: int, parts: RunParts, loss_window: list) -> None:
    """Every process checks that the weights and the EMA are still identical everywhere; rank 0 writes the file.

    loss_window: [sum of the losses since the last evaluation (mean over processes), their count].
    """
    world.check_identical(partial(fingerprint, parts.model, parts.ema), "model and EMA weights")
    world.on_main(partial(_write_checkpoint, ckpt_dir, step, parts, loss_window))


def _write_checkpoint(ckpt_dir: Path, step: int, parts: RunParts, loss_window: list) -> None:
    tensors, opt_meta = state_tensors(parts.model, parts.ema, parts.opt)
    meta = {
        "config": to_dict(parts.cfg),
        "optimizer": opt_meta,
        "data": parts.source.state_dict(),
        "data_shape": list(parts.source.shape),
        "num_classes": parts.source.num_classes,
        "loss_window": loss_window,
    }
    ckpt.save_checkpoint(ckpt_dir, step, tensors, meta, keep=parts.cfg.train.keep_checkpoints)


# -- Run-folder records (config.json, metrics.jsonl, summary.json) ---------------------------------


def start_run_files(run_dir: Path, cfg: Config) -> None:
    """(Rank 0, new run) The resolved config.json and an empty metrics.jsonl."""
    atomic_write_bytes(run_dir / "config.json", (json.dumps(to_dict(cfg), indent=2) + "\n").encode())
    atomic_write_bytes(run_dir / "metrics.jsonl", b"")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one evaluation's record to metrics.jsonl (never through a symbolic link)."""
    run_dir_files.append_metrics(run_dir / "metrics.jsonl", record)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation records of metrics.jsonl, oldest first (event records, e.g. precision switches, skipped)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "event" not in r]


def write_summary(run_dir: Path, cfg: Config, last: dict[str, Any], t_start: float) -> dict[str, Any]:
    """(Rank 0) summary.json: the newest metrics record, the run folder, the config and the wall time."""
    records = read_metrics(run_dir)
    summary = dict(records[-1]) if records else dict(last)
    summary.update(
        {"run_dir": str(run_dir), "config": to_dict(cfg), "wall_seconds": round(time.perf_counter() - t_start, 3)}
    )
    atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


truncate_metrics = run_dir_files.truncate_metrics  # atomic rewrite (gcflow.training.run_dir)