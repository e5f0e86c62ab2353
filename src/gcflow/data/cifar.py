"""CIFAR-10 from the official "python version", read without executing anything from the files.

Expected layout, either of::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   (unpacked tarball)
    <root>/data_batch_1 .. data_batch_5, test_batch                       (root is that folder)
    <root>/cifar-10-python.tar.gz                                         (official tarball)

The tarball is checked against its published MD5 and read in memory (nothing is extracted).
Each batch is a pickled dict {b"data": (10000, 3072) uint8, b"labels": [int] * 10000, ...};
rows hold the red, green and blue 32×32 planes in that order.

Pickle can run arbitrary code, so batches are read with `SafeUnpickler`, which resolves only the
numpy globals needed to rebuild an ndarray; any other global (os.system, builtins.eval, ...) is
refused before it can be called.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcflow.data.common import (
    ROOT_HINT,
    DatasetError,
    ImageDataset,
    check_resolution,
    check_split,
    md5_of_file,
    require_root,
    resize_square,
    tensor_from,
    verify_md5,
)

TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
# Published MD5 of the official tarball. Tests override it to verify small tarballs.
CHECKSUMS: dict[str, str] = {TARBALL: "c58f30108f718f92721af3b95e74349a"}
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)"
LAYOUT = f"<root>/{FOLDER}/data_batch_1..5 and test_batch, or <root>/{TARBALL}"

# (module, name) pairs an ndarray pickle needs: numpy 1.x and 2.x spellings, protocols 2-5.
# `_codecs.encode` is how Python 3 writes bytes objects at protocol <= 2; it only transcodes.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside SAFE_GLOBALS."""


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in SAFE_GLOBALS and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise ForbiddenGlobal(f"global {module}.{name} is not allowed")


def safe_unpickle(data: bytes, path: str) -> Any:
    """Unpickle `data` with SafeUnpickler (bytes keys, as the official CIFAR recipe)."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ForbiddenGlobal as err:
        raise DatasetError(
            f"refused to unpickle {path}: {err}; CIFAR batches may contain only numpy arrays, re-download from {SOURCE}"
        ) from None
    except Exception as err:  # truncated or garbled pickles raise many types (EOFError, ValueError, ...)
        raise DatasetError(
            f"corrupt or truncated CIFAR batch {path} ({type(err).__name__}: {err}); re-download from {SOURCE}"
        ) from None


def decode_batch(obj: Any, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Check an unpickled batch dict and return ((N, 3, 32, 32) uint8, (N,) int64)."""
    if not isinstance(obj, dict):
        raise DatasetError(
            f"CIFAR batch {path} holds a {type(obj).__name__}, expected a dict; re-download from {SOURCE}"
        )
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(
            f"CIFAR batch {path} lacks 'data' or 'labels' (keys {sorted(map(str, batch))}); re-download from {SOURCE}"
        )
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DatasetError(
            f"CIFAR batch {path} has data of shape {shape}, expected uint8 (N, "
            f"3072) for 3×32×32 images; re-download from {SOURCE}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"CIFAR batch {path} has {labels.shape} labels for {data.shape[0]} images; re-download from {SOURCE}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR batch {path} has labels outside 0..9; re-download from {SOURCE}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_from_folder(folder: Path, names: tuple[str, ...]) -> list[tuple[bytes, str]]:
    out = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"CIFAR-10 batch missing: {path}; expected {LAYOUT}; {ROOT_HINT}")
        out.append((path.read_bytes(), str(path)))
    return out


def _read_from_tarball(tarball: Path, names: tuple[str, ...]) -> list[tuple[bytes, str]]:
    verify_md5(md5_of_file(tarball), CHECKSUMS.get(TARBALL), tarball, SOURCE)
    wanted = {f"{FOLDER}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:  # one pass over the gzip stream, in archive order
                f = tar.extractfile(member) if member.name in wanted and member.isfile() else None
                if f is not None:
                    found[wanted[member.name]] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"corrupt or truncated tarball {tarball} ({err}); re-download it from {SOURCE}") from None
    missing = [f"{FOLDER}/{name}" for name in names if name not in found]
    if missing:
        raise DatasetError(f"CIFAR-10 tarball {tarball} has no file {missing[0]}; re-download it from {SOURCE}")
    return [(found[name], f"{tarball}:{FOLDER}/{name}") for name in names]


def load_cifar10(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """CIFAR-10: (N, 3, 32, 32) uint8, 10 classes (50000 train / 10000 test)."""
    check_split("cifar10", split, tuple(SPLIT_FILES))
    check_resolution("cifar10", resolution)
    root = require_root("cifar10", root, LAYOUT)
    names = SPLIT_FILES[split]
    if (root / FOLDER / names[0]).is_file():
        blobs = _read_from_folder(root / FOLDER, names)
    elif (root / names[0]).is_file():
        blobs = _read_from_folder(root, names)
    elif (root / TARBALL).is_file():
        blobs = _read_from_tarball(root / TARBALL, names)
    else:
        raise DatasetError(f"CIFAR-10 not found in {root}; expected {LAYOUT} (from {SOURCE}); {ROOT_HINT}")
    parts = [decode_batch(safe_unpickle(data, where), where) for data, where in blobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if resolution is not None:
        images = resize_square(images, resolution)
    return ImageDataset(images=tensor_from(images), labels=torch.from_numpy(labels), num_classes=10, name="cifar10")
