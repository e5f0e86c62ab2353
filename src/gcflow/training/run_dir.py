"""Run folders: creation rules (never clobber a run by accident) and a lock against concurrent runs."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

# Files that do not make a folder "a run": the lock (possibly left by a killed process) and the
# write probe. A folder holding only these can be (re)used for a new run without --overwrite.
_NOT_A_RUN = (".lock", ".write-test")


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked; the message is one line with the fix."""


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse a run folder.

    A folder that already holds a run is refused unless `resume` (continue it) or `overwrite`
    (delete it first; refused while another process holds the run's lock) is given. Unwritable
    locations fail with a one-line RunDirError.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {path} is a file; choose another folder with --out")
    has_run = path.is_dir() and any(p.name not in _NOT_A_RUN for p in path.iterdir())
    if resume:
        if not (path / "config.json").is_file():
            raise RunDirError(f"cannot resume: {path} holds no run (no config.json); start a new run there without --resume")
        return path
    if has_run and not overwrite:
        raise RunDirError(f"run folder {path} already exists; pass --resume to continue it or --overwrite to replace it")
    try:
        if has_run and overwrite:
            with RunLock(path):  # never delete a run another process is writing
                for p in path.iterdir():
                    if p.name != ".lock":
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to run folder {path}: {_why(exc)}; choose another folder with --out") from None
    return path


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({exc.strerror})"
    return exc.strerror or str(exc)


class RunLock:
    """An exclusive lock on `<run>/.lock`, which holds the owner's PID for error messages.

    The lock is an advisory `flock` on that file, so the kernel releases it when its process exits
    in any way (even SIGKILL): a lock file left by a dead process is simply taken over, and PID reuse
    cannot make a stale lock look alive. Two processes (or two trainers in one process) can never
    both hold it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "RunLock":
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot lock run folder {self.path.parent}: {_why(exc)}; choose another folder with --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                who = f" (pid {owner})" if owner else ""
                raise RunDirError(
                    f"run folder {self.path.parent} is in use by another gcflow process{who}; "
                    "wait for it to finish or use another --out folder"
                ) from None
            except OSError as exc:  # e.g. a file system without locks
                os.close(fd)
                raise RunDirError(f"cannot lock run folder {self.path.parent}: {_why(exc)}; use a folder on a local disk") from None
            # The holder we waited on may have unlinked the file before we locked it: retry on the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        raise RunDirError(f"could not lock run folder {self.path.parent}; try again")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # unlink while still locked, then unlock by closing
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0")
    except (OSError, ValueError):
        return 0
