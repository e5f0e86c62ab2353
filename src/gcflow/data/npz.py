"""Array datasets stored as `.npz`: downsampled ImageNet 32×32 and prepared image arrays.

ImageNet32 (the "Downsampled ImageNet" npz release, Chrabaszcz et al. 2017). Expected layout,
in `<root>`, `<root>/Imagenet32_train_npz` + `<root>/Imagenet32_val_npz`, or a mix::

    train_data_batch_1.npz .. train_data_batch_10.npz     (split "train", 1,281,167 images)
    val_data.npz                                           (split "val", 50,000 images)

Each holds `data`: (N, 3072) uint8, the red, green and blue 32×32 planes in that order, and
`labels`: (N,) class indices 1..1000 (returned 0-based).

Prepared arrays (for celeba64, lsun-church64, ffhq64, or anything made with
`save_prepared_npz`): one `.npz` with `images`, uint8 (N, H, W, 3) (channels last, square),
and optionally `labels` (N,) int. Float `images` are read as values in [0, 1] and must be finite.

Files are opened with `allow_pickle=False`, so loading never executes code from them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from gcflow.data.common import (
    ROOT_HINT,
    DatasetError,
    ImageDataset,
    as_uint8_pixels,
    check_resolution,
    check_split,
    require_root,
    resize_square,
    tensor_from,
)

IMAGENET32_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"train_data_batch_{i}.npz" for i in range(1, 11)),
    "val": ("val_data.npz",),
}
IMAGENET32_SOURCE = "https://image-net.org/download-images (Downsampled ImageNet 32x32, npz format)"
IMAGENET32_LAYOUT = "<root>/train_data_batch_1..10.npz and <root>/val_data.npz"


def read_npz(path: Path, keys: tuple[str, ...], source: str, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read the `keys` arrays (and any `optional` ones present) from an npz without pickles.

    Any failure (missing, not a zip, truncated, object arrays) becomes a one-line DatasetError.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DatasetError(
                    f"{path} lacks array(s) {missing} (has {f.files}); "
                    f"expected keys {list(keys)}, re-create it from {source}"
                )
            return {k: f[k] for k in keys + optional if k in f.files}
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"file missing: {path}; {ROOT_HINT}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:
        raise DatasetError(
            f"corrupt or truncated npz {path} ({type(err).__name__}: {err}); re-download or re-create it from {source}"
        ) from None


def _find_imagenet32(root: Path, name: str) -> Path:
    sub = "Imagenet32_train_npz" if name.startswith("train") else "Imagenet32_val_npz"
    for candidate in (root / name, root / sub / name):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"imagenet32 file missing: {root / name}; expected {IMAGENET32_LAYOUT} (from {IMAGENET32_SOURCE}); {ROOT_HINT}"
    )


def load_imagenet32(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """ImageNet 32×32: (N, 3, 32, 32) uint8, 1000 classes, labels made 0-based."""
    check_split("imagenet32", split, tuple(IMAGENET32_FILES))
    check_resolution("imagenet32", resolution)
    root = require_root("imagenet32", root, IMAGENET32_LAYOUT)
    paths = [_find_imagenet32(root, name) for name in IMAGENET32_FILES[split]]  # all present before any is read
    images, labels = [], []
    for path in paths:
        arrays = read_npz(path, ("data", "labels"), IMAGENET32_SOURCE)
        data = as_uint8_pixels(arrays["data"], path, "data")
        y = arrays["labels"]
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(
                f"imagenet32 array 'data' in {path} has shape {data.shape}, "
                "expected (N, 3072) for 3×32×32 images; use the 32x32 npz release"
            )
        if y.shape != (data.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(
                f"imagenet32 array 'labels' in {path} has shape {y.shape} dtype {y.dtype}, "
                f"expected ({data.shape[0]},) integers; re-download it"
            )
        if y.size and (y.min() < 1 or y.max() > 1000):
            raise DatasetError(
                f"imagenet32 labels in {path} must be 1-based in 1..1000, found {y.min()}..{y.max()}; re-download it"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y.astype(np.int64) - 1)
    pixels = np.concatenate(images) if len(images) > 1 else images[0]
    if resolution is not None:
        pixels = resize_square(pixels, resolution)
    y_all = np.concatenate(labels) if len(labels) > 1 else labels[0]
    return ImageDataset(images=tensor_from(pixels), labels=torch.from_numpy(y_all), num_classes=1000, name="imagenet32")


def load_prepared_npz(name: str, path: Path, resolution: int | None, channels: tuple[int, ...] = (3,)) -> ImageDataset:
    """A prepared `images` (N, S, S, C) array (+ optional `labels`), resized to `resolution` if given."""
    arrays = read_npz(path, ("images",), "the script that prepared it (see gcflow.data.npz)", optional=("labels",))
    pixels = as_uint8_pixels(arrays["images"], path, "images")
    if pixels.ndim != 4 or pixels.shape[3] not in channels or pixels.shape[1] != pixels.shape[2]:
        raise DatasetError(
            f"{name} array 'images' in {path} has shape {pixels.shape}, expected (N, S, S, C) square images, "
            f"channels last, C in {list(channels)}; re-create it"
        )
    if pixels.shape[0] == 0:
        raise DatasetError(f"{name} array 'images' in {path} is empty; re-create it")
    check_resolution(name, resolution)
    pixels = pixels.transpose(0, 3, 1, 2)
    if resolution is not None:
        pixels = resize_square(pixels, resolution)
    labels, num_classes = None, 0
    if "labels" in arrays:
        y = arrays["labels"]
        if y.shape != (pixels.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise DatasetError(
                f"{name} array 'labels' in {path} must be ({pixels.shape[0]},) non-negative integers, "
                f"got {y.dtype} {y.shape}; re-create it"
            )
        labels, num_classes = torch.from_numpy(y.astype(np.int64)), int(y.max()) + 1
    return ImageDataset(images=tensor_from(pixels), labels=labels, num_classes=num_classes, name=name)


def load_npz(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """Any prepared npz (root is the file): `images` (N, S, S, 1 or 3) uint8, optional `labels`."""
    check_split("npz", split, ("train",))
    root = require_root("npz", root, "a .npz file with 'images' (N, S, S, C) uint8 and optional 'labels' (N,)")
    if not root.is_file():
        raise DatasetError(f"npz dataset root must be a .npz file, got directory {root}; pass data.root=FILE.npz")
    return load_prepared_npz("npz", root, resolution, channels=(1, 3))


def save_prepared_npz(dataset: ImageDataset, path: str | Path) -> Path:
    """Write `dataset` as a prepared npz (`images` uint8 (N, H, W, C), `labels` if any) for fast reloads."""
    path = Path(path)
    arrays = {"images": dataset.images.permute(0, 2, 3, 1).contiguous().numpy()}
    if dataset.labels is not None:
        arrays["labels"] = dataset.labels.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object stops numpy from appending ".npz" to the name
        np.savez(f, **arrays)
    return path
