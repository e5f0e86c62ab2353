"""A run's state on disk and back: checkpoint tensors of the model, EMA and optimizer, and loading a trained run.

`load_run` is how commands and scripts get a trained model: the EMA network in eval mode, the run's
config, and the data shape and class count the network was built for, as one typed `LoadedRun`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.ema import make_ema
from gcflow.files import atomic_write_bytes
from gcflow.training import checkpoint as ckpt
from gcflow.training import run_dir as run_dir_files
from gcflow.training.builders import build_model
from gcflow.training.config import GROUPS, Config, ConfigError, from_dict, to_dict
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
    """The checkpoint `load_run` reads: the file itself, or a run folder's newest good one
    (matching its config.json).
    """
    if not path.exists():
        raise ckpt.CheckpointError(f"{path} is not a gcflow run folder or checkpoint file (it does not exist)")
    if not path.is_dir():
        return ckpt.load_checkpoint(path)
    if not (path / "config.json").is_file():
        raise ckpt.CheckpointError(f"{path} is not a gcflow run folder (no config.json)")
    chk = ckpt.load_latest_checkpoint(path / "checkpoints")
    if chk is None:
        raise ckpt.CheckpointError(f"run folder {path} has no valid checkpoint")
    if not same_run_config(config_from_meta(chk), read_run_config(path), path):  # (with today's defaults filled in)
        raise ckpt.CheckpointError(
            f"checkpoint {chk.path} was written by another config than {path / 'config.json'}; refusing to load it"
        )
    return chk


def read_run_config(run_dir: Path) -> Config:
    """A run folder's config.json; unreadable, too deeply nested or malformed JSON is a one-line ConfigError.

    Each group must be a JSON object: `"train": null` is reported as such, not as an unknown group.
    """
    path = run_dir / "config.json"
    try:
        doc = ckpt.loads_bounded(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        bounded = isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError)  # size or depth
        why = str(exc) if bounded else type(exc).__name__
        raise ConfigError(f"cannot read {path}: {why}; the run folder is damaged") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{path} holds a JSON {type(doc).__name__}, not an object of config groups; the run folder is damaged"
        )
    for group, values in doc.items():
        if group in GROUPS and not isinstance(values, dict):
            raise ConfigError(
                f"{path}: group {group!r} is {json.dumps(values)[:40]}, not an object of options; "
                f"fix or remove it (a missing group takes its defaults)"
            )
    return from_dict(doc)


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
    if not same_run_config(config_from_meta(chk), parts.cfg, chk.path.parent.parent):
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
        "threads": torch.get_num_threads(),  # CPU results depend on it in the last bits (see warn_thread_count)
    }
    ckpt.save_checkpoint(ckpt_dir, step, tensors, meta, keep=parts.cfg.train.keep_checkpoints)


# -- Run-folder records (config.json, metrics.jsonl, summary.json) ---------------------------------


def start_run_files(run_dir: Path, cfg: Config) -> None:
    """(Rank 0, new run) The resolved config.json and an empty metrics.jsonl."""
    atomic_write_bytes(run_dir / "config.json", (json.dumps(to_dict(cfg), indent=2) + "\n").encode())
    atomic_write_bytes(run_dir / "metrics.jsonl", b"")


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one record to metrics.jsonl (never through a symbolic link)."""
    run_dir_files.append_metrics(run_dir / "metrics.jsonl", record)


def record_kind(record: dict[str, Any]) -> str:
    """ "event" (e.g. a precision switch), "train" (the every-log_every training record) or "eval" (an
    evaluation; also records without a kind, written before training records existed)."""
    if "event" in record:
        return "event"
    return "train" if record.get("kind") == "train" else "eval"


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl, oldest first: all of them, or only those of `kind` ("train", "eval", "event")."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return records if kind is None else [r for r in records if record_kind(r) == kind]


def write_summary(run_dir: Path, cfg: Config, last: dict[str, Any], t_start: float) -> dict[str, Any]:
    """(Rank 0) summary.json: the newest evaluation record, the run folder, the config and the wall time."""
    records = read_metrics(run_dir, "eval")
    summary = dict(records[-1]) if records else dict(last)
    summary.pop("kind", None)
    summary.update(
        {"run_dir": str(run_dir), "config": to_dict(cfg), "wall_seconds": round(time.perf_counter() - t_start, 3)}
    )
    atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


truncate_metrics = run_dir_files.truncate_metrics  # atomic rewrite (gcflow.training.run_dir)

# -- Resuming: thread counts, config changes, extending a run ---------------------------------------

EVENTS = "events.jsonl"  # run-folder changes that are not training records (e.g. train.steps extended)


def warn_thread_count(chk: ckpt.Checkpoint, cfg: Config, device: torch.device, log: Callable[..., None]) -> None:
    """Warn when a CPU run resumes with another torch thread count than its checkpoint was written with.

    With train.threads=0 torch picks the count from the machine (or OMP_NUM_THREADS), and CPU
    reductions split differently across threads, so the resumed run is no longer bit-identical.
    """
    saved = chk.meta.get("threads")
    now = torch.get_num_threads()
    if cfg.train.threads == 0 and device.type == "cpu" and isinstance(saved, int) and saved != now:
        log(
            f"gcflow: warning: checkpoint {chk.path.name} was written with {saved} CPU threads, "
            f"this process uses {now}; "
            f"the resumed run may differ in the last bits from an uninterrupted one "
            f"(set train.threads={saved} or OMP_NUM_THREADS={saved} to reproduce it exactly)"
        )


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the run's events.jsonl (none if absent; torn lines are skipped)."""
    path = Path(run_dir) / EVENTS
    if not path.is_file() or path.is_symlink():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def same_run_config(chk_cfg: Config, run_cfg: Config, run_dir: Path) -> bool:
    """True if a checkpoint of `chk_cfg` belongs to the run of `run_cfg`: the same config, or one that
    differs only in train.steps, changed by `--resume RUN --steps N` (recorded in events.jsonl)."""
    a, b = to_dict(chk_cfg), to_dict(run_cfg)
    if a == b:
        return True
    steps_a, steps_b = a["train"].pop("steps"), b["train"].pop("steps")
    extended = {(e.get("steps_from"), e.get("steps_to")) for e in read_events(run_dir) if e.get("event") == "extend"}
    return a == b and _reachable(steps_a, steps_b, extended)


def _reachable(start: int, goal: int, edges: set[tuple[Any, Any]]) -> bool:
    """True if a chain of recorded extensions leads from train.steps=`start` to `goal`."""
    seen, todo = {start}, [start]
    while todo:
        k = todo.pop()
        for a, b in edges:
            if a == k and b not in seen:
                seen.add(b)
                todo.append(b)
    return goal in seen


def extend_run(run_dir: Path, cfg: Config, steps: int, log: Callable[..., None]) -> Config:
    """(Rank 0, on resume) Change the run's train.steps to `steps`; returns the new config.

    The iCT curriculum N(k) = min(s0 2^floor(k/K'), s1), K' = floor(K / (log2 floor(s1/s0) + 1)),
    depends on the total K = train.steps. The steps already trained keep the schedule of the old K;
    from the newest checkpoint on, training follows the schedule of the new K, so N drops back to
    N(k; new K) and doubles again until s1. The change is recorded in events.jsonl (first, so a
    kill before config.json is rewritten leaves a harmless record) and in config.json.
    Shortening below the newest checkpoint is refused: those steps are trained already.
    """
    old = cfg.train.steps
    if steps == old:
        return cfg
    names = (ckpt.CKPT_RE.match(p.name) for p in ckpt.list_checkpoints(run_dir / "checkpoints"))
    done = max((int(m[1]) for m in names if m), default=0)
    if steps < max(done, 1):
        raise ConfigError(
            f"cannot set train.steps={steps}: {run_dir} has trained {done} steps already; "
            f"--resume {run_dir} --steps N needs N >= {done}"
        )
    from gcflow.sigmas import ict_num_scales

    m = cfg.method
    before, after = ict_num_scales(max(done - 1, 0), old, m.s0, m.s1), ict_num_scales(done, steps, m.s0, m.s1)
    new = from_dict(to_dict(cfg))
    new.train.steps = steps
    run_dir_files.append_metrics(
        run_dir / EVENTS,
        {
            "event": "extend",
            "step": done,
            "steps_from": old,
            "steps_to": steps,
            "n_scales_before": before,
            "n_scales_after": after,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    atomic_write_bytes(run_dir / "config.json", (json.dumps(to_dict(new), indent=2) + "\n").encode())
    log(
        f"gcflow: train.steps {old} -> {steps} from step {done}: the curriculum N(k) depends on the total steps, "
        f"so from step {done} on it follows the {steps}-step schedule (N = {after} noise intervals, "
        f"was {before}) and doubles again up to s1={m.s1}; the first {done} steps keep the {old}-step schedule, "
        f"so the result differs from a fresh {steps}-step run (recorded in {EVENTS} and config.json)"
    )
    return new
