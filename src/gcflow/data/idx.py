"""MNIST and Fashion-MNIST from their original IDX files.

Expected layout (the files exactly as distributed), in the first of these directories that
holds them: `<root>`, `<root>/<name>` (e.g. `<root>/mnist`), `<root>/MNIST/raw` or
`<root>/FashionMNIST/raw` (torchvision's layout)::

    train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz

The `.gz` files are checked against the official MD5s in `CHECKSUMS`. Uncompressed files
with the same names minus `.gz` are accepted too; no official checksum exists for them, so
they are checked only for a well-formed header and exact length.

IDX format: a big-endian header (two zero bytes, a type byte 0x08 for unsigned bytes, the
number of dimensions d), then d big-endian uint32 sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from gcflow.data.common import (
    ROOT_HINT,
    DatasetError,
    ImageDataset,
    check_resolution,
    check_split,
    md5_of_bytes,
    require_root,
    resize_square,
    tensor_from,
    verify_md5,
)

# Official MD5 of each distributed .gz file. Tests override entries to verify small files.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_SOURCES = {
    "mnist": "the MNIST distribution",
    "fashion-mnist": "the Fashion-MNIST distribution (github.com/zalandoresearch/fashion-mnist)",
}
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_UBYTE = 0x08
_SIDE = 28


def parse_idx(data: bytes, path: Path) -> np.ndarray:
    """Decode uncompressed IDX bytes of unsigned-byte type into an array of the header's shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"not an IDX file (bad magic number): {path}; re-download it")
    if data[2] != _UBYTE:
        raise DatasetError(
            f"IDX file {path} has element type 0x{data[2]:02x}, expected 0x08 (unsigned byte); re-download it"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"truncated IDX header in {path}; re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        problem = "truncated" if len(data) - header < expected else "has trailing bytes"
        raise DatasetError(
            f"IDX file {path} {problem}: header {dims} needs {expected} data bytes, "
            f"found {len(data) - header}; re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, expected_md5: str | None, source: str) -> np.ndarray:
    """Read a `.gz` (checksummed, then decompressed) or raw IDX file."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror}; check the file and its permissions") from None
    if path.suffix == ".gz":
        verify_md5(md5_of_bytes(raw), expected_md5, path, source)
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"corrupt or truncated gzip file {path} ({err}); re-download it from {source}") from None
    return parse_idx(raw, path)


def find_idx_file(name: str, root: Path, stem: str) -> Path:
    """The first existing `<dir>/<stem>.gz` or `<dir>/<stem>` over the accepted directories."""
    dirs = [root, root / name, root / _TORCHVISION_DIRS[name] / "raw"]
    for d in dirs:
        for candidate in (d / f"{stem}.gz", d / stem):
            if candidate.is_file():
                return candidate
    raise DatasetError(
        f"{name} file missing: {root / (stem + '.gz')}; expected <root>/{stem}.gz (from {_SOURCES[name]}); {ROOT_HINT}"
    )


def load_idx_dataset(name: str, root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """MNIST-style dataset: (N, 1, 28, 28) images, 10 classes; resized when `resolution` differs."""
    check_split(name, split, tuple(SPLIT_FILES))
    check_resolution(name, resolution)
    root = require_root(name, root, f"<root>/train-images-idx3-ubyte.gz etc. (from {_SOURCES[name]})")
    table = CHECKSUMS.get(name, {})
    arrays = []
    for stem in SPLIT_FILES[split]:
        path = find_idx_file(name, root, stem)
        arrays.append((path, read_idx(path, table.get(f"{stem}.gz"), _SOURCES[name])))
    (image_path, images), (label_path, labels) = arrays
    if images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
        raise DatasetError(
            f"{name} images in {image_path} have shape {images.shape}, "
            f"expected (N, {_SIDE}, {_SIDE}); re-download the file"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{name} labels in {label_path} have shape {labels.shape}, "
            f"expected ({images.shape[0]},) to match {image_path}; re-download both files"
        )
    if labels.size and labels.max() >= 10:
        raise DatasetError(f"{name} labels in {label_path} exceed 9; re-download the file")
    pixels = images[:, None]
    if resolution is not None:
        pixels = resize_square(pixels, resolution)
    return ImageDataset(
        images=tensor_from(pixels),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=10,
        name=name,
    )


def load_mnist(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    return load_idx_dataset("mnist", root, split, resolution)


def load_fashion_mnist(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    return load_idx_dataset("fashion-mnist", root, split, resolution)
