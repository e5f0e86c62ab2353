"""Atomic file writes: the one helper every gcflow writer uses (checkpoints, configs, summaries,
experiment results, reference statistics, samples).

A write goes to a hidden temporary file in the same folder (`.<name>.tmp-<pid>`), is flushed and
fsynced, then renamed over the target, and the folder is fsynced: a crash leaves either the old
file or the new one, never a torn one. A temporary file left by a killed writer is ignored by the
readers and removed by the next checkpoint write (see gcflow.training.checkpoint).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import BinaryIO, Callable

SLOW_WRITE_ENV = "GCFLOW_TEST_SLOW_CHECKPOINT"


def temp_path(path: Path) -> Path:
    """The hidden temporary file a write of `path` goes through before its rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(fh)` on a temporary binary file beside `path`, then rename it onto `path` atomically."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _test_pause()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _test_pause() -> None:
    """Crash-safety test hook: sleep GCFLOW_TEST_SLOW_CHECKPOINT seconds before the rename (unset: no-op)."""
    delay = os.environ.get(SLOW_WRITE_ENV)
    if delay:
        time.sleep(float(delay))
