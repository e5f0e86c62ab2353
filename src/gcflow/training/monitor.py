"""Watching a run: training curves every train.log_every steps, evaluation records, pictures, sinks.

metrics.jsonl holds two kinds of record, told apart by "kind":

* `{"step", "kind": "train", "loss", "grad_norm", "lr", "n_scales", "mu", "gc_fraction",
  "images_per_s", "step_time_ms"}`: the means over the steps since the previous training record
  (loss and gradient norm of rank 0's slice; lr, N(k) and μ(k) at the record's step; throughput
  and step time from wall time, evaluations and checkpoints excluded);
* `{"step", "kind": "eval", "images", "n_scales", "loss", <metrics>, "seconds"}`: one evaluation
  of the EMA model (its "loss" is the mean over all processes since the previous evaluation).

A training window ends at every log, evaluation and checkpoint step, so a resumed run (which
starts at a checkpoint) writes exactly the records of an uninterrupted one, timings aside. A run
stopped by a signal mid-window writes that window as a record marked "partial" with its raw sums;
resuming takes the sums back and removes the record, so the window ends where it would have.

**No host sync in the hot loop.** On CUDA the loss and gradient norm are summed on the device;
when a window ends the sums are copied to pinned host memory without blocking and an event is
recorded; the record is written when the next window ends (the copy finished long before), or at
the next evaluation, checkpoint or the end of the run, which wait for the device anyway. The GC
count is known on the host (the GC selection is drawn there). The same code runs on the CPU, where
the copy is simply synchronous.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gcflow.files import atomic_write_text
from gcflow.pairs.gc import select_gc
from gcflow.randomness import step_generator
from gcflow.sinks import MetricSink, open_sinks
from gcflow.training.config import Config, to_dict
from gcflow.training.evaluate import write_pictures
from gcflow.training.run_state import read_metrics

TRAIN, EVAL = "train", "eval"


def step_mu(stepper: Any, cfg: Config, step: int) -> float:
    """μ(k) of step `step`: the step's own schedule if it exposes one (`mu` as a number or a function
    of the step), else the constant method.gc_mu."""
    mu = getattr(stepper, "mu", None)
    if callable(mu):
        mu = mu(step)
    return float(cfg.method.gc_mu if mu is None else mu)


def gc_rows(stepper: Any, cfg: Config, step: int) -> int:
    """The number of GC pairs in global batch `step`, on the host (no device sync).

    Read from the step (`gc_rows`) when it exposes it; otherwise the host-side draw of
    `training.step.draw_inputs` is repeated: select_gc over the global batch with the (seed, step,
    "gc") generator, a few microseconds on the CPU.
    """
    rows = getattr(stepper, "gc_rows", None)
    if rows is not None:
        return int(rows)
    mu = step_mu(stepper, cfg, step)
    if mu <= 0:
        return 0
    return int(select_gc(cfg.train.batch_size, mu, step_generator(cfg.train.seed, step, "gc")).sum())


@dataclass
class _Window:
    """A finished training window whose device sums may still be on their way to the host."""

    step: int
    sums: Tensor  # (2,) host: sum of losses, sum of gradient norms (pinned on CUDA)
    ready: Any  # torch.cuda.Event recorded after the copy, or None (CPU: already copied)
    host: dict[str, float | int | str]  # everything known on the host: kind, lr, n_scales, ...
    count: int


class TrainCurves:
    """Sums a training window's loss and gradient norm on the device and writes one "train" record
    per window to the sinks, a window late (see the module docstring).

    Args:
        cfg: the run's config (train.batch_size, seed; method.gc_mu).
        stepper: the TrainStep (`n_scales`; optionally `mu`, `gc_rows`).
        opt: the optimizer (its first parameter group's lr is recorded).
        device: the device the loss and gradient norm live on.
        sinks: where records go.
    """

    def __init__(
        self, cfg: Config, stepper: Any, opt: torch.optim.Optimizer, device: torch.device, sinks: MetricSink
    ) -> None:
        self.cfg, self.stepper, self.opt, self.device, self.sinks = cfg, stepper, opt, device, sinks
        self.sums = torch.zeros(2, device=device)
        self.count = 0  # steps in the window
        self.timed = 0  # of which run by this process (a resumed window's first steps ran before the stop)
        self.gc = 0
        self.excluded = 0.0  # seconds of evaluation and checkpoints inside the window
        self.t0 = time.perf_counter()
        self.pending: _Window | None = None
        self.latest: dict[str, Any] = {}  # the newest written record (the progress bar shows it)

    def add(self, step: int, loss: Tensor, grad_norm: Tensor) -> None:
        """Count step `step` (0-based): loss and grad_norm are 0-d device tensors; nothing waits for the device."""
        self.sums += torch.stack((loss.detach().float(), grad_norm.detach().float()))
        self.count += 1
        self.timed += 1
        self.gc += gc_rows(self.stepper, self.cfg, step)

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint) out of the window's throughput."""
        self.excluded += seconds

    def end_window(self, done: int, wait: bool, partial: bool = False) -> None:
        """End the window after `done` steps; write the previous window's record now (and this one's
        too when `wait`, at points that sync anyway: evaluations, checkpoints, the end). `partial`:
        a stop mid-window; the record also holds the raw sums that `restore` takes back."""
        if self.count == 0:
            return
        gc = self.gc
        window = self._snapshot(done)
        if partial:
            window.host.update(partial=True, gc_rows=gc)
        self.flush()
        self.pending = window
        if wait:
            self.flush()

    def _snapshot(self, done: int) -> _Window:
        seconds = max(time.perf_counter() - self.t0 - self.excluded, 1e-9)
        b = self.cfg.train.batch_size
        host: dict[str, float | int | str] = {
            "kind": TRAIN,
            "lr": _lr(self.opt),
            "n_scales": int(self.stepper.n_scales),
            "mu": step_mu(self.stepper, self.cfg, done - 1),
            "gc_fraction": self.gc / (self.count * b),
            "images_per_s": self.timed * b / seconds,
            "step_time_ms": 1000.0 * seconds / max(self.timed, 1),
        }
        sums, ready = _copy_to_host(self.sums)
        window = _Window(done, sums, ready, host, self.count)
        self.sums = torch.zeros(2, device=self.device)  # a fresh buffer: the copy may still read the old one
        self.count, self.timed, self.gc, self.excluded, self.t0 = 0, 0, 0, 0.0, time.perf_counter()
        return window

    def flush(self) -> None:
        """Write the pending window's record (waiting for its copy, which has normally finished)."""
        w, self.pending = self.pending, None
        if w is None:
            return
        if w.ready is not None:
            w.ready.synchronize()
        sums = w.sums.tolist()
        loss, grad_norm = (v / w.count for v in sums)
        h = w.host
        record = {"kind": h["kind"], "loss": loss, "grad_norm": grad_norm}
        record.update((k, v) for k, v in h.items() if k != "kind")
        if h.get("partial"):
            record.update(window_steps=w.count, loss_sum=sums[0], grad_norm_sum=sums[1])
        self.sinks.scalars(w.step, record)
        self.latest = {"step": w.step, **record}

    def restore(self, record: dict[str, Any]) -> None:
        """Continue the window of a "partial" record written when the run was stopped (see the module docstring)."""
        self.sums = torch.tensor([record["loss_sum"], record["grad_norm_sum"]], device=self.device)
        self.count, self.gc = int(record["window_steps"]), int(record["gc_rows"])


def _lr(opt: torch.optim.Optimizer) -> float | None:
    lr = opt.param_groups[0].get("lr")
    return float(lr) if isinstance(lr, (int, float)) else None  # (a tensor lr would need a device read)


def _copy_to_host(x: Tensor) -> tuple[Tensor, Any]:
    """(host copy of x, event to wait for) without blocking on CUDA; (copy, None) elsewhere."""
    if x.device.type != "cuda":
        return x.detach().cpu().clone(), None
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def take_partial_window(run_dir: Path, step: int) -> dict[str, Any] | None:
    """On resume from `step`: the partial training record a stop at `step` wrote, removed from
    metrics.jsonl (rewritten atomically, never through a link); None if there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file() or path.is_symlink():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        last = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    if not (isinstance(last, dict) and last.get("partial") and last.get("step") == step and "loss_sum" in last):
        return None
    atomic_write_text(path, "".join(line + "\n" for line in lines[:-1]))
    return last


# -- Evaluations -----------------------------------------------------------------------------------


def eval_record(
    done: int, cfg: Config, n_scales: int, loss: float, metrics: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The "eval" record of metrics.jsonl (without "step", which the sink adds first)."""
    return {
        "kind": EVAL,
        "images": done * cfg.train.batch_size,
        "n_scales": n_scales,
        "loss": float(loss),
        **metrics,
        "seconds": round(seconds, 3),
    }


def eval_line(step: int, record: dict[str, Any]) -> str:
    """One line per evaluation, e.g. `step 1000  loss 0.0123  w2 0.201 (floor 0.153)  sliced_w2 0.101 (floor 0.09)`."""
    parts = [f"step {step}"]
    for key, value in record.items():
        if key in ("kind", "images", "n_scales", "seconds") or key.endswith("_noise_floor"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = f"{key} {value:.4g}"
            floor = record.get(f"{key}_noise_floor")
            parts.append(text + (f" (floor {floor:.4g})" if isinstance(floor, (int, float)) else ""))
    return "  ".join(parts)


def _png_array(path: Path) -> np.ndarray | None:
    """A PNG as uint8 (H, W, 3), or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError):
        return None


class Monitor:
    """What the training loop reports (rank 0; other processes get `Monitor.silent()`).

    Opens the run's sinks (metrics.jsonl; TensorBoard per train.tensorboard) with the resolved
    config as text, keeps the training curves (`curves`), and records each evaluation.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        stepper: Any,
        opt: torch.optim.Optimizer,
        device: torch.device,
        log: Callable[..., None],
        resume_step: int | None = None,
        active: bool = True,
    ) -> None:
        self.cfg, self.run_dir, self.log, self.active = cfg, Path(run_dir), log, active
        # (before the sinks open metrics.jsonl: taking the partial record back rewrites the file)
        partial = take_partial_window(self.run_dir, resume_step) if active and resume_step is not None else None
        self.sinks = open_sinks(self.run_dir, cfg.train.tensorboard, resume_step) if active else _NoSink()
        if active:
            self.sinks.text("config", json.dumps(to_dict(cfg), indent=2))
        self.curves = TrainCurves(cfg, stepper, opt, device, self.sinks)
        if partial is not None:
            self.curves.restore(partial)

    def after_step(self, step: int, loss: Tensor, grad_norm: Tensor) -> None:
        """Count step `step` in the training curves (no device sync)."""
        if self.active:
            self.curves.add(step, loss, grad_norm)

    def end_window(self, done: int, *, wait: bool) -> None:
        """A log, evaluation or checkpoint step: end the training window (see TrainCurves.end_window)."""
        if self.active:
            self.curves.end_window(done, wait)

    def stopped(self, done: int) -> None:
        """A stop by signal after step `done`, before its checkpoint: write every record, the open
        window as a partial one."""
        if self.active:
            self.curves.end_window(done, wait=True, partial=True)

    def evaluated(self, done: int, record: dict[str, Any], samples: Tensor, evaluator: Any) -> None:
        """Record an evaluation: metrics.jsonl and the sinks, samples.png / metrics.png, one printed line."""
        self.sinks.scalars(done, record)
        write_pictures(self.run_dir, self.cfg, samples, evaluator, read_metrics(self.run_dir))
        grid = _png_array(self.run_dir / "samples.png")
        if grid is not None:
            self.sinks.image(done, "samples", grid)
        self.log(f"gcflow: {eval_line(done, record)}")

    def close(self) -> None:
        """Write what is pending and close the sinks."""
        if self.active:
            self.curves.flush()
        self.sinks.close()


class _NoSink:
    """The sinks of processes other than rank 0."""

    def scalars(self, step: int, values: Any) -> None: ...

    def image(self, step: int, name: str, grid: np.ndarray) -> None: ...

    def text(self, name: str, text: str) -> None: ...

    def close(self) -> None: ...
