"""Atomic file writes and symlink-safe opens: the helpers every gcflow writer uses (checkpoints,
configs, summaries, metrics, experiment results, reference statistics, samples).

A write goes to a hidden temporary file in the same folder (`.<name>.tmp-<pid>`), is flushed and
fsynced, then renamed over the target, and the folder is fsynced: a crash leaves either the old
file or the new one, never a torn one. A temporary file left by a killed writer is ignored by the
readers and removed by the next checkpoint write (see gcflow.training.checkpoint).

The temporary file is created with O_CREAT | O_EXCL | O_NOFOLLOW, so a symlink planted under its
name is never written through (it is removed and replaced by a real file); the rename replaces a
symlink at the target itself, never the file it points to. `open_nofollow` opens other run files
(lock, metrics) the same way and refuses a symlinked entry with one line.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class SymlinkError(OSError):
    """A run file is a symbolic link; gcflow refuses to write (or read) through it. One-line message."""

    def __init__(self, path: Path) -> None:
        why = f"{path} is a symbolic link; gcflow never writes through links, remove it"
        super().__init__(errno.ELOOP, why, str(path))

    def __str__(self) -> str:
        return str(self.strerror)


class DiskFullError(OSError):
    """No space left while writing `filename`; `needed` is the number of bytes the write needed."""

    def __init__(self, path: Path, needed: int | None) -> None:
        how = f" ({needed} bytes needed)" if needed is not None else ""
        super().__init__(errno.ENOSPC, f"no space left on the device writing {path}{how}", str(path))
        self.needed = needed

    def __str__(self) -> str:
        return str(self.strerror)


def temp_path(path: Path) -> Path:
    """The hidden temporary file a write of `path` goes through before its rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def open_nofollow(path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
    """`os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)`; a symlink at `path` raises SymlinkError (one line)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (os.path.islink(path)):
            raise SymlinkError(Path(path)) from None
        raise


def refuse_symlink(path: str | os.PathLike) -> None:
    """Raise SymlinkError if `path` is a symbolic link (a missing path is fine)."""
    if os.path.islink(path):
        raise SymlinkError(Path(path))


def open_regular_nofollow(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open `path` for binary reading only if it is a regular file and not a symlink.

    A FIFO, device (e.g. a link to /dev/zero) or folder is refused with a one-line OSError before
    any byte is read; O_NONBLOCK keeps the open of a FIFO from hanging.
    """
    fd = open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{what} {path} is not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], size: int | None = None) -> None:
    """Call `write(fh)` on a temporary binary file beside `path`, then rename it onto `path` atomically.

    `size` (bytes, if known) is only used in the message of a full disk (DiskFullError).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        try:
            tmp.unlink()  # a leftover of ours, or a planted symlink: removed, never followed
        except FileNotFoundError:
            pass
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
            raise DiskFullError(path, size) from None
        raise
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data), size=len(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
