"""Checkpoints that never execute code: tensors in safetensors, everything else in JSON metadata.

A checkpoint file `ckpt-<step>.safetensors` holds the model, EMA and optimizer tensors; its
safetensors header metadata holds one JSON document (`gcflow`) with the step, the resolved config,
the optimizer's hyper-parameters, the data-loader state, a SHA-256 checksum of all tensor bytes and
one of the metadata itself. (Random draws need no saved state: they are pure functions of
(seed, step, stream), see gcflow.randomness.) Writes are atomic (temporary file, flush, fsync,
rename), so a crash leaves either the old file set or the new one; loads verify the checksum and fall back to the previous
good checkpoint when the newest is truncated or corrupt. A write killed before its rename leaves
only a hidden temporary file (`.ckpt-<step>.safetensors.tmp-<pid>`), which loading ignores and the
next write removes.

Nothing here unpickles: a pickle or `torch.save` file, whatever its name, is refused with a
one-line CheckpointError before any of it is interpreted.

Test hook: when the environment variable `GCFLOW_TEST_SLOW_CHECKPOINT` holds a number of seconds,
every atomic write sleeps that long between writing (and fsyncing) its temporary file and renaming
it into place, so that tests/test_crash_safety.py can land SIGKILLs inside checkpoint writes.
Unset (always, outside that test) it does nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from gcflow.files import SLOW_WRITE_ENV, atomic_write_bytes  # noqa: F401  (re-exported)

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.safetensors$")
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
FORMAT_VERSION = 1
# First bytes of files gcflow refuses to interpret: a pickle (protocol >= 2) and a zip (torch.save).
_PICKLE_MAGIC, _ZIP_MAGIC = b"\x80", b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the run; the message is one line."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: `tensors` by name and the JSON `meta` document."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of all tensors, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def meta_checksum(doc: dict[str, Any]) -> str:
    """SHA-256 of the JSON metadata (sorted keys), leaving out the `meta_checksum` field itself."""
    body = {k: v for k, v in doc.items() if k != "meta_checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temporary files left by atomic writes whose process has died (a killed write); returns them."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = TEMP_RE.match(p.name)
        if m and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_checkpoint(directory: Path, step: int, tensors: dict[str, Tensor], meta: dict[str, Any], keep: int = 3) -> Path:
    """Write `ckpt-<step>.safetensors` atomically, then delete all but the newest `keep` checkpoints.

    Non-finite tensors are refused (a diverged model never replaces a good checkpoint), and a failed
    write (disk full, no permission) raises a one-line CheckpointError leaving the older files intact.
    """
    directory = Path(directory)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"refusing to write a checkpoint with non-finite values in {name!r} at step {step}; "
                "the previous checkpoints are kept"
            )
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    doc = dict(meta, step=int(step), format=FORMAT_VERSION, checksum=tensor_checksum(cpu))
    doc["meta_checksum"] = meta_checksum(doc)
    data = st_save(cpu, metadata={"gcflow": json.dumps(doc)})
    path = directory / f"ckpt-{step:08d}.safetensors"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(directory)
        atomic_write_bytes(path, data)
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointError(
            f"cannot write checkpoint {path}: {why}; the previous checkpoints are intact, "
            "fix the problem and continue with --resume"
        ) from None
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if CKPT_RE.match(p.name))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint file; raises CheckpointError if it is truncated or corrupt.

    Only the safetensors parser and `json.loads` touch the file, so loading cannot execute code.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors checkpoint; gcflow never loads pickled (.pt/.pkl) checkpoints")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, TypeError, UnicodeDecodeError) as exc:
        if raw[:1] == _PICKLE_MAGIC or raw[:4] == _ZIP_MAGIC:
            raise CheckpointError(f"{path} is a pickle or torch.save file, not a safetensors checkpoint; gcflow never unpickles checkpoints") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__})") from None
    try:
        meta = json.loads(header["__metadata__"]["gcflow"])
        if not isinstance(meta, dict) or "step" not in meta or "config" not in meta:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} is not a gcflow checkpoint (its metadata has no gcflow step and config)") from None
    if meta.get("checksum") != tensor_checksum(tensors) or meta.get("meta_checksum", meta_checksum(meta)) != meta_checksum(meta):
        raise CheckpointError(f"checkpoint {path} failed its checksum: the file is corrupt")
    return Checkpoint(path, tensors, meta)


def load_latest_checkpoint(directory: Path, warn: Any = print) -> Checkpoint | None:
    """The newest checkpoint in `directory` that verifies; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"gcflow: warning: {exc}; trying the previous checkpoint")
    return None


def split_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with `prefix.`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (`optim.<param>.<key>`) and JSON (groups, scalars)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_flat`: restore `opt` in place."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in split_prefix(tensors, "optim").items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
