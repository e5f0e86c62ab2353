"""The image-dataset registry: one name -> one reader, and the public entry point.

Every reader has the signature `(root, split, resolution) -> ImageDataset` and raises
`DatasetError` (one line: problem, path, fix) when files are missing, corrupt or malformed.

| name          | root layout (see each module)                       | native size | splits          |
| ------------- | --------------------------------------------------- | ----------- | --------------- |
| digits        | ignored (bundled with scikit-learn)                 | 1×8×8       | train, test     |
| mnist         | train-images-idx3-ubyte.gz etc. (`idx`)             | 1×28×28     | train, test     |
| fashion-mnist | same file names as MNIST (`idx`)                    | 1×28×28     | train, test     |
| cifar10       | cifar-10-batches-py/ or cifar-10-python.tar.gz      | 3×32×32     | train, test     |
| imagenet32    | train_data_batch_1..10.npz, val_data.npz (`npz`)    | 3×32×32     | train, val      |
| imagenet32-full | full ImageNet train/<wnid>/*.JPEG, val/ (`folder`)  | 3×32×32     | train, val (= test) |
| celeba64      | img_align_celeba/ (+ list_eval_partition.txt) / npz | 3×64×64     | train, valid, test, all |
| celeba64-crop140 | as celeba64; 140×140 crop before resizing        | 3×64×64     | train, valid, test, all |
| lsun-church64 | image files / npz (`folder`)                        | 3×64×64     | train           |
| ffhq64        | image files / npz (`folder`)                        | 3×64×64     | train           |
| folder        | any tree of png/jpg/webp (`folder`)                 | resolution  | train           |
| npz           | root is a .npz with `images` (N, S, S, C)           | S           | train           |

`resolution=None` keeps the native size; any other value resizes with Pillow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gcflow.data.cifar import load_cifar10
from gcflow.data.common import ImageDataset
from gcflow.data.digits import load_digits
from gcflow.data.folder import (
    load_celeba64,
    load_celeba64_crop140,
    load_ffhq64,
    load_folder,
    load_imagenet32_full,
    load_lsun_church64,
)
from gcflow.data.idx import load_fashion_mnist, load_mnist
from gcflow.data.npz import load_imagenet32, load_npz

DatasetReader = Callable[[Path | None, str, int | None], ImageDataset]

IMAGE_DATASETS: dict[str, DatasetReader] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imagenet32": load_imagenet32,
    "imagenet32-full": load_imagenet32_full,
    "celeba64": load_celeba64,
    "celeba64-crop140": load_celeba64_crop140,
    "lsun-church64": load_lsun_church64,
    "ffhq64": load_ffhq64,
    "folder": load_folder,
    "npz": load_npz,
}


def load_image_dataset(
    name: str, root: str | Path | None, split: str = "train", resolution: int | None = None
) -> ImageDataset:
    """Load one split of the named dataset into memory as uint8 (N, C, H, W).

    Args:
        name: a key of IMAGE_DATASETS.
        root: the data directory (or file, for prepared .npz); None or "" means unset; ignored by "digits".
        split: "train", "test", ... (each dataset lists its own).
        resolution: output side length; None keeps the dataset's native size.

    Raises:
        KeyError: unknown name (the message lists the choices).
        DatasetError: missing, corrupt, truncated, checksum-failing or malformed files.
    """
    try:
        reader = IMAGE_DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown image dataset {name!r}; choose one of {sorted(IMAGE_DATASETS)}") from None
    path = None if root is None or str(root) == "" else Path(root).expanduser()  # "" = unset (config default)
    return reader(path, split, resolution)
