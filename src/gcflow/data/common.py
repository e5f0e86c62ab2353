"""The types every image dataset shares, the one error they raise, and small checked helpers.

An `ImageDataset` is the whole split in memory as uint8 (N, C, H, W); the per-format readers
(`idx`, `cifar`, `npz`, `folder`, `digits`) each turn files on disk into one, and the
registry in `gcflow.data.images` picks the reader by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# How the command line names the data directory; every "missing file" message ends with it.
ROOT_HINT = "pass data.root=DIR"


class DatasetError(Exception):
    """A data file is missing, corrupt, truncated, fails its checksum, or has the wrong shape.

    The message is always one line: the problem, the path, and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class ImageDataset:
    """One split of an image dataset, resident in memory.

    Attributes:
        images: (N, C, H, W) uint8, C in {1, 3}, values 0..255.
        labels: (N,) int64 class indices in [0, num_classes), or None for unlabelled data.
        num_classes: number of classes (0 when unlabelled).
        name: registry name of the dataset, e.g. "cifar10".
    """

    images: Tensor
    labels: Tensor | None
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
                raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 0..255 -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return images.to(torch.float32, copy=True).div_(127.5).sub_(1.0)  # in place on the copy: one allocation


def to_uint8(images: Tensor) -> Tensor:
    """float in [-1, 1] -> uint8 0..255, rounding to nearest and clamping; inverts `to_unit_range`."""
    return ((images.to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    """Raise a DatasetError unless `split` is one of `allowed`."""
    if split not in allowed:
        raise DatasetError(f"unknown split {split!r} for {name}; choose one of {list(allowed)}")


def require_root(name: str, root: Path | None, layout: str) -> Path:
    """The data root as a directory or file path, or a DatasetError describing the expected layout."""
    if root is None:
        raise DatasetError(f"{name} needs a data root; expected {layout}; {ROOT_HINT}")
    if not root.exists():
        raise DatasetError(f"{name} data root does not exist: {root}; expected {layout}; {ROOT_HINT}")
    return root


def md5_of_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_of_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(actual: str, expected: str | None, path: Path, source: str) -> None:
    """Raise a DatasetError when `expected` is given and differs from `actual`."""
    if expected is not None and actual != expected:
        raise DatasetError(
            f"checksum mismatch for {path}: md5 {actual}, expected {expected}; "
            f"the file is corrupt or not the official one, re-download it from {source}"
        )


def as_uint8_pixels(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Check an array of pixel values from a file and return it as uint8.

    uint8 passes through; other integer arrays must lie in 0..255; float arrays are read as
    values in [0, 1] (the usual float-image convention) and must be finite.
    """
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DatasetError(f"array {key!r} in {path} has integer values outside 0..255; store pixels as uint8")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DatasetError(
                f"array {key!r} in {path} contains NaN or inf; "
                "re-create the file with finite pixel values (uint8 preferred)"
            )
        if array.size and (array.min() < -1e-6 or array.max() > 1 + 1e-6):
            raise DatasetError(
                f"float array {key!r} in {path} must hold values in [0, 1], "
                f"found [{array.min():g}, {array.max():g}]; store pixels as uint8 0..255"
            )
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise DatasetError(f"array {key!r} in {path} has dtype {array.dtype}; expected uint8 pixels")


def resize_square(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize square uint8 images (N, C, S, S) to (N, C, R, R) with Pillow (Lanczos down, bicubic up)."""
    n, c, h, w = images.shape
    if h == resolution and w == resolution:
        return images
    if h != w:
        raise ValueError(f"resize_square needs square images, got {h}x{w}")
    resample = Image.Resampling.LANCZOS if resolution < h else Image.Resampling.BICUBIC
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    hwc = images.transpose(0, 2, 3, 1)
    for i in range(n):  # one-time preprocessing at load; batches never loop per sample
        pixels = hwc[i, :, :, 0] if c == 1 else hwc[i]
        resized = np.asarray(Image.fromarray(pixels).resize((resolution, resolution), resample))
        out[i] = resized[None] if c == 1 else resized.transpose(2, 0, 1)
    return out


def check_resolution(name: str, resolution: int | None) -> None:
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise DatasetError(f"resolution for {name} must be a positive integer, got {resolution!r}")


def tensor_from(array: np.ndarray) -> Tensor:
    """A torch tensor owning a contiguous, writable copy-if-needed of `array`."""
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)
