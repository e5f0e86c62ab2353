"""Run folders: creation rules (never clobber a run, or anything that is not a run, by accident), a
lock against concurrent runs, symlink-safe run files, atomic metrics rewrites and unique default names.

Run files (`.lock`, `.write-test`, config.json, metrics.jsonl, summary.json, checkpoints) are never
opened through a symbolic link: a planted link is refused with one line, so gcflow cannot be made
to write a file outside the run folder.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from gcflow.files import SymlinkError, atomic_write_text, open_nofollow

# Files that do not make a folder "a run": the lock (possibly left by a killed process) and the
# write probe. A folder holding only these can be (re)used for a new run without --overwrite.
_NOT_A_RUN = (".lock", ".write-test")
# Everything gcflow writes at the top of a train run or an experiment folder; a folder holding only
# these (e.g. a run killed before its config.json) is recognisably gcflow's and may be replaced.
RUN_FILES = frozenset(
    {
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "samples.png",
        "metrics.png",
        "checkpoints",
        "samples",
        "results.json",
        "report.md",
        "events.jsonl",
        "tb",
        *_NOT_A_RUN,
    }
)
_GCFLOW_ARTEFACT = re.compile(r"^(eval-\d+step\.json|\.[^/]+\.tmp-\d+|[\w.-]+\.(png|svg|pdf|md))$")
_MAX_CONFIG_BYTES = 1 << 20
_DEFAULT_NAME_TRIES = 100


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked; the message is one line with the fix."""


def out_path(text: str) -> Path:
    """argparse `type=` for --out: an empty path (e.g. an unset shell variable) is an error, not the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty --out path is not allowed (an unset variable?); name a folder")
    return Path(text)


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or reuse a run folder.

    A folder that already holds anything is refused unless `resume` (continue it) or `overwrite`
    (delete it first) is given; `overwrite` only ever deletes a folder that `check_overwritable`
    recognises as a gcflow run or experiment, and is refused while another process holds the run's
    lock. Symlinked run files are refused. Unwritable locations fail with a one-line RunDirError.
    """
    if not str(path).strip():  # (before Path(), which turns "" into ".")
        raise RunDirError("an empty run folder path is not allowed (an unset variable?); name a folder with --out")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {path} is a file; choose another folder with --out")
    has_run = path.is_dir() and any(p.name not in _NOT_A_RUN for p in path.iterdir())
    if resume:
        if not (path / "config.json").is_file():
            raise RunDirError(
                f"cannot resume: {path} holds no run (no config.json); start a new run there without --resume"
            )
        check_no_symlinks(path)
        _remove_stale_temp_files(path)  # e.g. a config.json or metrics.jsonl write killed before its rename
        return path
    if has_run and not overwrite:
        raise RunDirError(
            f"run folder {path} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if has_run:
        check_overwritable(path)
    check_no_symlinks(path)
    try:
        if has_run and overwrite:
            with RunLock(path):  # never delete a run another process is writing
                for p in path.iterdir():
                    if p.name != ".lock":
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        path.mkdir(parents=True, exist_ok=True)
        _write_probe(path / ".write-test")
    except OSError as exc:
        raise RunDirError(f"cannot write to run folder {path}: {_why(exc)}; choose another folder with --out") from None
    return path


def _remove_stale_temp_files(path: Path) -> None:
    from gcflow.training.checkpoint import remove_stale_temp_files

    remove_stale_temp_files(path)


def holds_run(path: Path) -> bool:
    """For --auto-resume: True if folder `path` holds a run to resume (its config.json exists, even
    with no checkpoint yet: a kill during start-up); False if a new run should start there.

    Remnants of a start-up killed before config.json (the lock, the write probe, temporary files of
    dead processes) are removed, so the folder counts as empty. Anything else is left to
    `prepare_run_dir`, which refuses a folder that holds other files.
    """
    path = Path(path)
    if (path / "config.json").exists() or (path / "config.json").is_symlink():
        return True
    if path.is_dir() and not path.is_symlink():
        _remove_stale_temp_files(path)
    return False


def first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of `path` (or `path` itself) that does not exist yet; None if `path` exists.

    What a command creates on the way to a new run folder, so that a failed start can remove it again.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return None
    missing = path
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing = parent
    return missing


def remove_failed_start(path: Path, created: Path | None) -> None:
    """After a new run failed to start: delete run folder `path` and the folders above it up to
    `created` (from `first_missing_folder`, taken before the command made them), if this command
    created them and they hold nothing but files gcflow writes at start-up and no checkpoint.

    A folder that existed before the command, or holds a checkpoint or a user's file, is kept.
    """
    from gcflow.training.checkpoint import list_checkpoints

    path = Path(path)
    if created is None or not path.is_dir() or path.is_symlink() or list_checkpoints(path / "checkpoints"):
        return
    start_up = {"config.json", "metrics.jsonl", "events.jsonl", ".write-test", "checkpoints"}
    entries = list(path.iterdir())
    if not all(p.name in start_up or _is_artefact(p) for p in entries):
        return
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    folder = path
    while True:
        try:
            folder.rmdir()  # only ever an empty folder
        except OSError:
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


def _write_probe(probe: Path) -> None:
    """Create, write and delete `probe` without following a link planted under its name."""
    probe.unlink(missing_ok=True)  # a leftover or a planted link: unlinking never touches the target
    os.close(open_nofollow(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))  # a fresh regular file of ours
    probe.write_bytes(b"ok")
    probe.unlink()


def is_run_dir(path: Path) -> bool:
    """True if `path` is recognisably a gcflow run or experiment folder (see `check_overwritable`)."""
    try:
        check_overwritable(path)
    except RunDirError:
        return False
    return Path(path).is_dir()


def check_overwritable(path: Path) -> None:
    """Raise a one-line RunDirError unless `--overwrite` may delete the contents of folder `path`.

    Allowed: a missing or empty folder; a gcflow run (a config.json holding a gcflow config, or a
    checkpoints/ folder with gcflow checkpoints); a gcflow experiment folder (results.json naming
    an experiment, or sub-folders that are runs); or a folder holding only files gcflow writes
    (e.g. a run killed before its config.json). Anything else, such as a folder with a user's
    files or the current directory of an unset `--out "$RUN"`, is refused.
    """
    path = Path(path)
    if not path.is_dir():
        return
    entries = [p for p in path.iterdir() if p.name not in _NOT_A_RUN]
    if not entries or _has_gcflow_config(path) or _has_checkpoints(path) or _is_experiment(path, entries):
        return
    if all(_is_artefact(p) for p in entries):
        return
    foreign = sorted(p.name for p in entries if not _is_artefact(p))[:3]
    raise RunDirError(
        f"refusing to --overwrite {path}: it is not a gcflow run folder (it holds {', '.join(foreign)}); "
        "choose another folder with --out, or empty it yourself"
    )


def _is_artefact(p: Path) -> bool:
    if p.is_symlink():
        return False
    # (config.json and results.json count only when they parse as gcflow's, see check_overwritable)
    return (
        (p.name in RUN_FILES and p.name not in ("checkpoints", "samples", "config.json", "results.json"))
        or (p.is_file() and bool(_GCFLOW_ARTEFACT.match(p.name)))
        or (p.name in ("checkpoints", "samples") and p.is_dir() and _only_gcflow_outputs(p))
    )


def _only_gcflow_outputs(folder: Path) -> bool:
    """Whether `folder` (checkpoints/ or samples/) holds only what gcflow writes there: checkpoints,
    temp files, samples (.npy, .npz, .png) and `gcflow sample`'s folders of numbered PNGs."""
    from gcflow.training.checkpoint import CKPT_RE, TEMP_RE

    pattern = re.compile(r"^[\w.-]+\.(npy|npz|png)$")
    for p in folder.iterdir():
        if p.is_symlink():
            return False
        if p.is_dir():
            if not all(q.is_file() and not q.is_symlink() and re.match(r"^\d+\.png$", q.name) for q in p.iterdir()):
                return False
        elif not (p.is_file() and (CKPT_RE.match(p.name) or TEMP_RE.match(p.name) or pattern.match(p.name))):
            return False
    return True


def _has_gcflow_config(path: Path) -> bool:
    """config.json is a regular file holding a JSON object of gcflow config groups."""
    doc = _read_json(path / "config.json")
    from gcflow.training.config import GROUPS

    return isinstance(doc, dict) and bool(doc) and all(k in GROUPS and isinstance(v, dict) for k, v in doc.items())


def _has_checkpoints(path: Path) -> bool:
    from gcflow.training.checkpoint import list_checkpoints

    folder = path / "checkpoints"
    return folder.is_dir() and not folder.is_symlink() and bool(list_checkpoints(folder))


def _is_experiment(path: Path, entries: list[Path]) -> bool:
    doc = _read_json(path / "results.json")
    if isinstance(doc, dict) and isinstance(doc.get("experiment"), str):
        return True
    subdirs = [p for p in entries if p.is_dir() and not p.is_symlink()]
    return (
        bool(subdirs)
        and all(_is_artefact(p) or p in subdirs for p in entries)
        and all(_has_gcflow_config(d) or _has_checkpoints(d) for d in subdirs)
    )


def _read_json(path: Path) -> Any:
    """The JSON value of a small regular, non-symlinked file; None if there is none or it does not parse."""
    from gcflow.files import open_regular_nofollow

    try:
        with open_regular_nofollow(path) as fh:
            text = fh.read(_MAX_CONFIG_BYTES + 1)
        return json.loads(text) if len(text) <= _MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None


def check_no_symlinks(path: Path) -> None:
    """Raise a one-line RunDirError if a run file of folder `path` is a symbolic link.

    (A symlinked checkpoint file is only ever read, and then refused as not verifiable by
    gcflow.training.checkpoint, so resume falls back to an older one; it is never written through.)
    """
    path = Path(path)
    for p in (path / name for name in RUN_FILES):
        if p.is_symlink():
            raise RunDirError(f"{p} is a symbolic link; gcflow never writes run files through links, remove it")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of metrics.jsonl with `step` <= `step`, rewriting the file atomically.

    Used on resume: records written after the checkpoint we resume from are recomputed. A line
    torn by a crash is dropped. A kill at any moment leaves either the old file or the new one,
    never a truncated history. A symlinked file is refused (SymlinkError), never followed.
    """
    path = Path(path)
    if path.is_symlink():
        raise SymlinkError(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) and record["step"] <= step:
                keep.append(line)
        except ValueError:
            pass  # a line torn by a crash
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to metrics.jsonl, refusing (SymlinkError) to follow a link at `path`."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def default_run_dir(root: Path, preset: str, overrides: list[str]) -> Path:
    """Create and return a new, unique run folder `root/<preset>[-<tag>]-<YYYYmmdd-HHMMSS>-<4 hex>`.

    `<tag>` shows the overrides that differ from the preset, shortened (`method.gc_mu=0.3` ->
    `mu0.3`, `train.seed=1` -> `seed1`). The folder is created with an exclusive mkdir and a fresh
    random suffix is drawn on a collision, so jobs started in the same second never share a folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = "-".join(p for p in (_safe(preset), overrides_tag(preset, overrides)) if p)
    for _ in range(_DEFAULT_NAME_TRIES):
        path = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"could not create a unique run folder under {root}; name one with --out")


def overrides_tag(preset: str, overrides: list[str], limit: int = 48) -> str:
    """A short, file-name-safe summary of the overrides that change `preset` (e.g. 'mu0.3-seed1')."""
    parts = []
    for text in overrides:
        key, _, value = text.partition("=")
        if not value or _is_default(preset, text):
            continue
        name = key.rsplit(".", 1)[-1].removeprefix("gc_").replace("_", "")
        parts.append(_safe(name + os.path.basename(value.rstrip("/"))))
    return "-".join(p for p in parts if p)[:limit].strip("-")


def _is_default(preset: str, override: str) -> bool:
    """True if `override` leaves the preset's value unchanged (False if either cannot be read)."""
    from gcflow.training.config import ConfigError, apply_overrides, to_dict
    from gcflow.training.presets import load_preset

    try:
        base = load_preset(preset)
        return to_dict(apply_overrides(base, [override])) == to_dict(base)
    except (ConfigError, KeyError, ValueError, TypeError):  # the command reports a bad one; the name keeps it
        return False


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_-")


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

    def acquire(self) -> RunLock:
        for _ in range(10):
            try:
                fd = open_nofollow(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except SymlinkError as exc:
                raise RunDirError(f"{exc}; gcflow never follows a link for its lock file") from None
            except OSError as exc:
                raise RunDirError(
                    f"cannot lock run folder {self.path.parent}: {_why(exc)}; choose another folder with --out"
                ) from None
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
                raise RunDirError(
                    f"cannot lock run folder {self.path.parent}: {_why(exc)}; use a folder on a local disk"
                ) from None
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

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or "0")
    except (OSError, ValueError):
        return 0


def check_same_config(path: Path, saved: Any, wanted: Any) -> None:
    """(--auto-resume) Raise a one-line RunDirError if the run in `path` has another config than the command's.

    saved, wanted: `gcflow.training.config.Config` of the run folder and of the command line.
    """
    from gcflow.training.config import to_dict

    a, b = to_dict(saved), to_dict(wanted)
    diffs = [f"{g}.{k}={a[g][k]!r} in the run, {b[g][k]!r} now" for g in a for k in a[g] if a[g][k] != b[g].get(k)]
    if diffs:
        more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
        raise RunDirError(
            f"--auto-resume: {path} holds a run of another config ({'; '.join(diffs[:2])}{more}); "
            f"use another --out, or 'gcflow train --resume {path}' to continue it with its own config"
        )
