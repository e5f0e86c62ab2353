"""The shape of each named image dataset, known without reading its files."""

from __future__ import annotations

# name -> ((C, H, W) at the native resolution, number of classes; 0 = unlabelled)
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "cifar10": ((3, 32, 32), 10),
    "imagenet32": ((3, 32, 32), 1000),
    "imagenet32-full": ((3, 32, 32), 1000),
    "celeba64": ((3, 64, 64), 0),
    "celeba64-crop140": ((3, 64, 64), 0),
    "lsun-church64": ((3, 64, 64), 0),
    "ffhq64": ((3, 64, 64), 0),
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
}
FOLDER_DEFAULT_RESOLUTION = 64  # an image folder is resized/centre-cropped to this side unless told otherwise


def dataset_shape(name: str, resolution: int = 0) -> tuple[tuple[int, ...], int]:
    """(C, H, W) and the number of classes of the named image dataset.

    `resolution` > 0 replaces the native side (as data.resolution does); "folder" datasets are RGB,
    unlabelled and 64×64 by default. Unknown names raise KeyError.
    """
    if name in DATASET_SHAPES:
        shape, classes = DATASET_SHAPES[name]
        if resolution:
            shape = (shape[0], resolution, resolution)
        return shape, classes
    if name == "folder":
        r = resolution or FOLDER_DEFAULT_RESOLUTION
        return (3, r, r), 0
    raise KeyError(f"unknown dataset {name!r}")
