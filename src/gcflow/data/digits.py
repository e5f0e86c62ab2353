"""scikit-learn's bundled 8×8 handwritten digits: a real image dataset that needs no download.

1797 grayscale images with values 0..16, rescaled to 0..255 (round(v · 255 / 16)). The split is
fixed and deterministic: the first 1500 images are "train", the remaining 297 are "test".
`root` is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gcflow.data.common import ImageDataset, check_resolution, check_split, resize_square, tensor_from

TRAIN_SIZE = 1500


def load_digits(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """(N, 1, 8, 8) uint8 digits, 10 classes; resized with Pillow when `resolution` is given."""
    check_split("digits", split, ("train", "test"))
    check_resolution("digits", resolution)
    from sklearn.datasets import load_digits as sklearn_digits  # deferred: sklearn is slow to import

    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    rows = slice(0, TRAIN_SIZE) if split == "train" else slice(TRAIN_SIZE, None)
    pixels, labels = pixels[rows], labels[rows]
    if resolution is not None:
        pixels = resize_square(pixels, resolution)
    labels = torch.from_numpy(np.ascontiguousarray(labels))
    return ImageDataset(images=tensor_from(pixels), labels=labels, num_classes=10, name="digits")
