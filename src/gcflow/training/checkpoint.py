"""Checkpoints that never execute code: tensors in safetensors, everything else in JSON metadata.

A checkpoint file `ckpt-<step>.safetensors` holds the model, EMA and optimizer tensors; its
safetensors header metadata holds one JSON document (`gcflow`) with the step, the resolved config,
the optimizer's hyper-parameters, the data-loader state, a SHA-256 checksum of all tensor bytes and
one of the metadata itself. (Random draws need no saved state: they are pure functions of
(seed, step, stream), see gcflow.randomness.) Writes are atomic (temporary file, flush, fsync,
rename), so a crash leaves either the old file set or the new one; loads verify the checksum and
fall back to the previous good checkpoint when the newest is truncated or corrupt. A write killed
before its rename leaves only a hidden temporary file (`.ckpt-<step>.safetensors.tmp-<pid>`),
which loading ignores and the next write removes.

Nothing here unpickles: a pickle or `torch.save` file, whatever its name, is refused with a
one-line CheckpointError before any of it is interpreted.

A checksum proves only that a file is what its writer wrote, not that the writer was gcflow: the
metadata is also checked against a schema (`validate_meta`: types, bounds, the format version,
JSON size and nesting depth), only regular files are read (never a link to a device or a FIFO),
at most the size its safetensors header announces, and non-finite weights are refused. Any such
checkpoint is "not verifiable": a one-line CheckpointError, and resume falls back to an older one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
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

from gcflow.files import atomic_write_bytes, open_regular_nofollow

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.safetensors$")
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 << 20  # a safetensors header (tensor table + metadata) larger than this is refused
MAX_META_CHARS = 16 << 20  # the gcflow JSON metadata document
MAX_JSON_DEPTH = 64  # nesting depth of that document (gcflow writes at most ~6)
MAX_STEP = 10**12
MAX_DIM = 1 << 24  # largest data dimension accepted in data_shape
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
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


def save_checkpoint(
    directory: Path, step: int, tensors: dict[str, Tensor], meta: dict[str, Any], keep: int = 3
) -> Path:
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
    """Load and verify one checkpoint file; raises a one-line CheckpointError if it is not verifiable.

    Only the safetensors parser and a depth-guarded `json.loads` touch the file, so loading cannot
    execute code; only a regular file (not a symlink, FIFO or device) is read, and at most as many
    bytes as its header announces.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path} is not a .safetensors checkpoint; gcflow never loads pickled (.pt/.pkl) checkpoints"
        )
    raw = _read_bounded(path)
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise _corrupt(path, raw, exc) from None
    meta = _parse_meta(path, header)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {meta.get('format')!r}, this gcflow reads format {FORMAT_VERSION}; "
            "use the gcflow version that wrote it"
        )
    if not isinstance(meta.get("meta_checksum"), str):
        raise CheckpointError(f"checkpoint {path} has no metadata checksum, so it cannot be verified")
    if meta.get("checksum") != tensor_checksum(tensors) or meta["meta_checksum"] != meta_checksum(meta):
        raise CheckpointError(f"checkpoint {path} failed its checksum: the file is corrupt")
    try:
        validate_meta(meta)
    except ValueError as exc:
        raise CheckpointError(
            f"checkpoint {path} has invalid metadata ({exc}); it is not a checkpoint gcflow wrote"
        ) from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint {path} holds non-finite values in {name!r}; it cannot be used")
    return Checkpoint(path, tensors, meta)


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular, non-symlinked file, no more than its safetensors header announces."""
    try:
        with open_regular_nofollow(path, "checkpoint") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
                return head  # too short or a huge announced header: the parser reports it as corrupt
            header = fh.read(header_len)
            return head + header + fh.read(max(0, min(size, 8 + header_len + _data_length(header)) - 8 - header_len))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None


def _data_length(header: bytes) -> int:
    """The tensor-data length a safetensors header announces (0 if the header does not parse)."""
    try:
        table = loads_bounded(header.decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in table.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError):
        return 0
    return max(ends, default=0)


def _corrupt(path: Path, raw: bytes, exc: Exception) -> CheckpointError:
    if raw[:1] == _PICKLE_MAGIC or raw[:4] == _ZIP_MAGIC:
        return CheckpointError(
            f"{path} is a pickle or torch.save file, not a safetensors checkpoint; gcflow never unpickles checkpoints"
        )
    return CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__})")


def _parse_meta(path: Path, header: Any) -> dict[str, Any]:
    """The gcflow JSON document of a parsed safetensors header, size- and depth-checked."""
    try:
        text = header["__metadata__"]["gcflow"]
        if not isinstance(text, str):
            raise TypeError
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{path} is not a gcflow checkpoint (its metadata has no gcflow step and config)"
        ) from None
    try:
        meta = loads_bounded(text)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or "step" not in meta or "config" not in meta:
        raise CheckpointError(f"{path} is not a gcflow checkpoint (its metadata has no gcflow step and config)")
    return meta


def loads_bounded(text: str) -> Any:
    """`json.loads` of at most MAX_META_CHARS characters nested at most MAX_JSON_DEPTH deep.

    The depth is measured on the text (strings removed) before parsing, so a 100 000-deep document
    is refused with ValueError instead of exhausting the recursion limit.
    """
    if len(text) > MAX_META_CHARS:
        raise ValueError(f"JSON document of {len(text)} characters, more than {MAX_META_CHARS}")
    depth = deepest = 0
    for ch in re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested {deepest} levels deep, more than {MAX_JSON_DEPTH}")
    return json.loads(text)


def _is_int(x: Any, lo: int = 0, hi: int = MAX_STEP) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_scalar(x: Any) -> bool:
    """A JSON value an optimizer may hold as a hyper-parameter: number, bool, None, string or a list of numbers."""
    if isinstance(x, list):
        return len(x) <= 16 and all(_is_number(v) for v in x)
    return x is None or isinstance(x, (bool, str)) or _is_number(x)


def validate_meta(meta: dict[str, Any]) -> None:
    """Check a checkpoint's metadata against gcflow's schema; raises ValueError naming the first problem.

    Keys: step (int in [0, 1e12]), format, checksum and meta_checksum (hex SHA-256), config (object),
    data_shape (1 to 4 positive ints), num_classes (int >= 0), loss_window (null or [finite sum,
    count >= 0]), data (loader state: {} or non-negative epoch/position), threads (optional: the
    torch CPU thread count of the writer), optimizer (param_groups and per-parameter scalars, see
    `optimizer_to_flat`).
    """
    if not _is_int(meta.get("step")):
        raise ValueError(f"step must be an integer in [0, {MAX_STEP}], got {meta.get('step')!r}")
    for key in ("checksum", "meta_checksum"):
        if not isinstance(meta.get(key), str) or not _HEX64.match(meta[key]):
            raise ValueError(f"{key} must be a SHA-256 hex digest")
    if not isinstance(meta.get("config"), dict):
        raise ValueError("config must be an object")
    shape = meta.get("data_shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_is_int(d, 1, MAX_DIM) for d in shape)):
        raise ValueError(f"data_shape must be a list of 1 to 4 positive integers, got {_short(shape)}")
    if not _is_int(meta.get("num_classes"), 0, 1 << 20):
        raise ValueError(f"num_classes must be a non-negative integer, got {_short(meta.get('num_classes'))}")
    window = meta.get("loss_window")
    if window is not None and not (
        isinstance(window, list) and len(window) == 2 and _is_number(window[0]) and _is_int(window[1])
    ):
        raise ValueError(f"loss_window must be null or [loss sum, count], got {_short(window)}")
    data = meta.get("data")
    if not isinstance(data, dict) or not all(k in ("epoch", "position") and _is_int(v) for k, v in data.items()):
        raise ValueError(f"data must be a loader state {{epoch, position}}, got {_short(data)}")
    if "threads" in meta and not _is_int(meta["threads"], 1, 1 << 16):
        raise ValueError(f"threads must be a positive integer, got {_short(meta['threads'])}")
    _validate_optimizer_meta(meta.get("optimizer"))


def _validate_optimizer_meta(opt: Any) -> None:
    if not (
        isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("scalars"), dict)
    ):
        raise ValueError("optimizer must be an object with param_groups (list) and scalars (object)")
    for group in opt["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise ValueError("optimizer param_groups must be objects with a params list")
        if not all(_is_int(p, 0, 1 << 30) for p in group["params"]):
            raise ValueError("optimizer params must be non-negative integers")
        if not all(isinstance(k, str) and (k == "params" or _is_scalar(v)) for k, v in group.items()):
            raise ValueError("optimizer hyper-parameters must be numbers, booleans, strings or null")
    for pid, values in opt["scalars"].items():
        if not pid.isdigit() or not isinstance(values, dict) or not all(_is_scalar(v) for v in values.values()):
            raise ValueError("optimizer scalars must map parameter ids to objects of numbers")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
