"""Read NVlabs EDM network pickles without executing anything from the file.

What such a file is (NVlabs/edm `training/training_loop.py`, `torch_utils/persistence.py`): a
plain `pickle.dump` of `dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...)`. The
networks are instances of classes decorated with `persistence.persistent_class`, whose
`__reduce__` pickles them as a call `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with `meta = dict(type='class', version=6, module_src=<the whole source file>, class_name=...,
state=<the instance __dict__>)`; loading normally `exec`s `module_src`. Inside the state, torch
modules keep their `_parameters`, `_buffers` and `_modules` dicts; a parameter is pickled as
`torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`, a tensor as
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, and a storage as
`torch.storage._load_from_bytes(<bytes of a legacy torch.save stream>)`; that inner stream is
magic number, protocol version, sys info, the storage as a persistent id
`('storage', torch.FloatStorage, key, location, numel, None)`, the key list, then per key an
int64 element count and the raw little-endian bytes. Plain containers (`collections.OrderedDict`,
non-persistent modules such as `torch.nn.ModuleDict` via NEWOBJ/BUILD) appear around them.

`SafeUnpickler.find_class` resolves only the handful of names above to our own functions that
rebuild tensors from bytes; every other global (classes, `exec`, `os.system`, ...) becomes an
inert `Opaque` stand-in that records its arguments and never runs anything. Persistent objects
become `PersistentObject(class_name, state)`; their `module_src` is never executed (nor kept).
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Self

import torch
from torch import Tensor

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class EDMPickleError(ValueError):
    """The file is not a readable EDM pickle; the message is one line for the user."""


class Opaque:
    """Inert stand-in for any class or callable named in the pickle: calling it only records arguments.

    It also accepts the container opcodes (SETITEMS, APPENDS, BUILD) so unknown dict or list
    subclasses load as inert records instead of failing.
    """

    module: str = "?"
    name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, elements=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.module}.{self.name}>"


_STAND_INS: dict[tuple[str, str], type[Opaque]] = {}


def stand_in(module: str, name: str) -> type[Opaque]:
    """The (cached) inert subclass of `Opaque` standing for the global `module.name`."""
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(f"Inert_{name}", (Opaque,), {"module": module, "name": name})
    return _STAND_INS[key]


@dataclass
class PersistentObject:
    """An object of a `persistence.persistent_class`, as data: its class name and its `__dict__`."""

    class_name: str
    state: dict


@dataclass
class StorageType:
    """Stand-in for `torch.FloatStorage` etc.: only the element dtype matters."""

    dtype: torch.dtype


@dataclass
class RawStorage:
    """A storage read from a legacy stream: element dtype and raw bytes (filled after the pickle part)."""

    dtype: torch.dtype
    numel: int
    data: bytes = b""


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Replacement for EDM's loader: keep the class name and state, drop (never run) the source."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise EDMPickleError("a persistent object in the file has no class name; it is not an EDM/StyleGAN pickle")
    state = meta.get("state")
    return PersistentObject(meta["class_name"], dict(state) if isinstance(state, dict) else {})


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """copyreg._reconstructor (protocol < 2 objects): an empty inert instance; BUILD fills it."""
    if isinstance(cls, type) and issubclass(cls, Opaque):
        return cls.__new__(cls)
    return Opaque.__new__(Opaque)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    """torch._utils._rebuild_tensor(_v2) from a `RawStorage`: a fresh tensor that owns its memory."""
    if not isinstance(storage, RawStorage):
        raise EDMPickleError("a tensor in the file does not point at a tensor storage")
    if storage.numel == 0:
        base = torch.empty(0, dtype=storage.dtype)
    else:
        base = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype)
    try:
        return torch.as_strided(base, tuple(size), tuple(stride), int(offset)).clone()
    except RuntimeError as exc:
        raise EDMPickleError(f"a tensor in the file lies outside its storage ({exc})") from None


def _rebuild_parameter(data: Any, requires_grad: bool = False, hooks: Any = None, state: Any = None) -> Tensor:
    """torch._utils._rebuild_parameter(_with_state): the parameter's tensor (hooks and extra state dropped)."""
    if not isinstance(data, Tensor):
        raise EDMPickleError("a parameter in the file holds no tensor")
    return data


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it to store bytes; latin-1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise EDMPickleError("unexpected _codecs.encode call in the file")
    return text.encode("latin1")


def _load_from_bytes(data: bytes) -> RawStorage:
    """torch.storage._load_from_bytes: parse the legacy torch.save stream of one storage."""
    if not isinstance(data, (bytes, bytearray)):
        raise EDMPickleError("a storage in the file is not stored as bytes")
    return read_legacy_storage(bytes(data))


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that maps every global to a safe function or an inert stand-in.

    `storages` collects the persistent ids of a legacy torch.save stream (inner streams only);
    the outer EDM pickle has none and any persistent id there is an error.
    """

    def __init__(self, file: io.BufferedIOBase, legacy_storages: dict[str, RawStorage] | None = None) -> None:
        super().__init__(file)
        self.legacy_storages = legacy_storages

    def find_class(self, module: str, name: str) -> Any:
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(STORAGE_DTYPES[name])
        return stand_in(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self.legacy_storages is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise EDMPickleError("unexpected persistent reference in the file; it is not an EDM network pickle")
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(kind, StorageType) or not isinstance(numel, int) or numel < 0:
            raise EDMPickleError("a storage in the file has an unknown element type")
        if len(pid) > 5 and pid[5] is not None:
            raise EDMPickleError("storage views of pre-1.0 PyTorch files are not supported")
        storage = self.legacy_storages.setdefault(str(key), RawStorage(kind.dtype, numel))
        return storage


def _load_one(f: io.BytesIO, legacy_storages: dict[str, RawStorage] | None = None) -> Any:
    try:
        return SafeUnpickler(f, legacy_storages).load()
    except EDMPickleError:
        raise
    # A malformed or hostile stream fails inside pickle in many ways: report each as one line.
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
        IndexError,
        RuntimeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise EDMPickleError(f"cannot read the pickle ({type(exc).__name__}: {exc})") from None


def read_legacy_storage(data: bytes) -> RawStorage:
    """Parse `torch.save(storage, _use_new_zipfile_serialization=False)` bytes into a `RawStorage`."""
    f = io.BytesIO(data)
    if _load_one(f) != LEGACY_MAGIC or _load_one(f) != LEGACY_PROTOCOL:
        raise EDMPickleError("a storage in the file is not a legacy torch.save stream")
    sys_info = _load_one(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise EDMPickleError("big-endian tensor data is not supported")
    storages: dict[str, RawStorage] = {}
    result = _load_one(f, storages)
    keys = _load_one(f)
    if not isinstance(result, RawStorage) or not isinstance(keys, list):
        raise EDMPickleError("a storage stream in the file holds something other than one storage")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise EDMPickleError("a storage stream in the file lists an unknown storage")
        count = int.from_bytes(f.read(8), "little")
        nbytes = count * torch.empty(0, dtype=storage.dtype).element_size()
        raw = f.read(nbytes)
        if count != storage.numel or len(raw) != nbytes:
            raise EDMPickleError("a storage in the file is truncated")
        storage.data = raw
    return result


def safe_load(data: bytes) -> Any:
    """Unpickle `data` with `SafeUnpickler`: tensors and plain containers come back, nothing runs."""
    return _load_one(io.BytesIO(data))


def module_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of an unpickled module tree: `_parameters` and `_buffers` through `_modules`.

    `obj` is a `PersistentObject` or an inert stand-in whose state is a module `__dict__`; names
    are dotted as in torch's state_dict; None entries (absent bias, no resample filter) are skipped.
    """
    state = obj.state if isinstance(obj, (PersistentObject, Opaque)) else None
    if not isinstance(state, dict):
        return {}
    out: dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, Tensor):
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        out.update(module_tensors(child, f"{prefix}{name}."))
    return out
