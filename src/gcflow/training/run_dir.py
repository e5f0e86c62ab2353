"""Run folders: creation rules (never clobber a run by accident) and a lock against concurrent runs."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked; the message is one line with the fix."""


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse a run folder.

    A folder that already holds a run is refused unless `resume` (continue it) or `overwrite`
    (delete it first) is given. Unwritable locations fail with a one-line RunDirError.
    """
    path = Path(path)
    has_run = path.is_dir() and any(path.iterdir())
    if resume:
        if not (path / "config.json").is_file():
            raise RunDirError(f"cannot resume: {path} holds no run (no config.json); start a new run there without --resume")
        return path
    if has_run and not overwrite:
        raise RunDirError(f"run folder {path} already exists; pass --resume to continue it or --overwrite to replace it")
    try:
        if has_run and overwrite:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        why = "disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise RunDirError(f"cannot write to run folder {path}: {why}; choose another folder with --out") from None
    return path


class RunLock:
    """An exclusive lock file `<run>/.lock` holding the owner's PID; a stale lock (dead PID) is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._owner_alive():
                    raise RunDirError(
                        f"run folder {self.path.parent} is in use by another gcflow process (pid {self._owner()}); "
                        "wait for it to finish or use another --out folder"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died without cleaning up
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return self
        raise RunDirError(f"could not lock run folder {self.path.parent}")

    def _owner(self) -> int:
        try:
            return int(self.path.read_text().strip() or "0")
        except (OSError, ValueError):
            return 0

    def _owner_alive(self) -> bool:
        pid = self._owner()
        if pid <= 0:
            return False
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
