"""Where a run's metrics go: metrics.jsonl always, TensorBoard when the `tb` extra is installed.

A sink receives three kinds of record, all on the host (the trainer gathers device values
asynchronously and hands over Python floats, so no sink ever forces a device sync):

* `scalars(step, values)`: one record of named numbers at a training step, e.g. the every-
  `log_every` training record (loss, grad_norm, lr, n_scales, mu, gc_fraction, images_per_s,
  step_time_ms) or an evaluation's metrics (w2, fid, ...).
* `image(step, name, grid)`: a sample grid, uint8 (H, W, C) as made by `gcflow.plotting.image_grid`.
* `text(name, text)`: e.g. the resolved config as JSON.

`JsonlSink` appends one JSON object per `scalars` call to metrics.jsonl (images and text are
already in the run folder as samples.png and config.json, so it ignores them). `TensorBoardSink`
writes all three to an event file that `tensorboard --logdir runs` shows live. `open_sinks` builds
the run's list; `Sinks` fans each call out to all of them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from gcflow.files import open_nofollow

TB_EXTRA_HINT = "pip install 'gcflow[tb]' (or pip install tensorboard)"


class SinkError(RuntimeError):
    """A sink cannot be opened (e.g. TensorBoard asked for but not installed); the message is one line."""


@runtime_checkable
class MetricSink(Protocol):
    """Receives a run's scalars, image grids and texts; see the module docstring."""

    def scalars(self, step: int, values: Mapping[str, float | int | str | None]) -> None: ...

    def image(self, step: int, name: str, grid: np.ndarray) -> None: ...

    def text(self, name: str, text: str) -> None: ...

    def close(self) -> None: ...


def _json_number(v: float | str | None) -> float | int | str | None:
    """JSON has no NaN or infinity: those become null (a diverged value is still recorded as missing).
    Strings (the record's "kind") pass through."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    v = float(v)
    return v if math.isfinite(v) else None


class JsonlSink:
    """One JSON object per `scalars` call, `{"step": step, **values}`, appended to `path`.

    Each line is written with one `write` call on an O_APPEND descriptor, so a reader (`gcflow
    report`, `tail -f`) sees it at once and a crash loses at most the line being written. The file is
    never opened through a symbolic link (SymlinkError), like every run file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def scalars(self, step: int, values: Mapping[str, float | int | str | None]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        record = {"step": int(step), **{k: _json_number(v) for k, v in values.items()}}
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        """Ignored: the run folder's samples.png holds the latest grid."""

    def text(self, name: str, text: str) -> None:
        """Ignored: the run folder's config.json holds the config."""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package (the `tb` extra) is importable."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """TensorBoard event files in `log_dir` via torch.utils.tensorboard.SummaryWriter.

    Scalars go under their own names (`loss`, `grad_norm`, `w2`, ...), or `<kind>/<name>` when the
    record has a "kind" (`train/loss` every log_every steps, `eval/w2` at evaluations), so the two
    losses do not share a curve; image grids under `name`, texts as markdown code blocks. With
    `purge_step` (a resumed run's first step), events that an interrupted run wrote at or after that
    step are hidden, so the resumed curves do not fold back.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        if not tensorboard_available():
            raise SinkError(f"TensorBoard logging needs the tensorboard package: {TB_EXTRA_HINT}")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float | int | str | None]) -> None:
        kind = values.get("kind")
        prefix = f"{kind}/" if isinstance(kind, str) else ""
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(prefix + key, float(value), int(step))
        self._writer.flush()

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        if grid.dtype != np.uint8 or grid.ndim != 3:
            raise ValueError(f"an image grid must be uint8 (H, W, C), got {grid.dtype} of shape {grid.shape}")
        self._writer.add_image(name, grid, int(step), dataformats="HWC")
        self._writer.flush()

    def text(self, name: str, text: str) -> None:
        # TensorBoard renders text as markdown; indenting by four spaces keeps JSON verbatim.
        self._writer.add_text(name, "\n".join("    " + line for line in text.splitlines()), 0)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Sinks:
    """Several sinks behind one MetricSink: every call goes to each, in order."""

    def __init__(self, sinks: Iterable[MetricSink]) -> None:
        self.sinks = list(sinks)

    def scalars(self, step: int, values: Mapping[str, float | int | str | None]) -> None:
        for s in self.sinks:
            s.scalars(step, values)

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        for s in self.sinks:
            s.image(step, name, grid)

    def text(self, name: str, text: str) -> None:
        for s in self.sinks:
            s.text(name, text)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


TENSORBOARD_CHOICES = ("auto", "on", "off")


def open_sinks(run_dir: Path, tensorboard: str = "auto", purge_step: int | None = None) -> Sinks:
    """The sinks of a run folder: metrics.jsonl, plus TensorBoard events in RUN/tb.

    Args:
        run_dir: the run folder.
        tensorboard: "auto" (when the tensorboard package is installed), "on" (a SinkError naming
            the fix when it is not) or "off".
        purge_step: a resumed run's first step (see TensorBoardSink); None for a new run.
    """
    if tensorboard not in TENSORBOARD_CHOICES:
        raise SinkError(f"tensorboard must be one of {', '.join(TENSORBOARD_CHOICES)}, got {tensorboard!r}")
    run_dir = Path(run_dir)
    sinks: list[MetricSink] = [JsonlSink(run_dir / "metrics.jsonl")]
    if tensorboard == "on" or (tensorboard == "auto" and tensorboard_available()):
        sinks.append(TensorBoardSink(run_dir / "tb", purge_step=purge_step))
    return Sinks(sinks)
