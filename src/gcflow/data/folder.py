"""Image-file datasets: any folder of images, and CelebA, LSUN Church and FFHQ at 64×64.

`folder`: every .png/.jpg/.jpeg/.webp file under `<root>` (recursively; names starting with "."
skipped), in sorted path order, turned upright by its EXIF orientation, converted to RGB (16-bit
greyscale scaled 0..65535 -> 0..255), centre-cropped to the largest square and resized to
`resolution` (Lanczos). Unlabelled. `resolution` is required. A path that is not a regular file
(a FIFO or device named *.png) is refused with one line instead of being opened.

`celeba64`: the aligned-and-cropped CelebA images (img_align_celeba, 178×218 JPEGs):
`<root>/img_align_celeba/*.jpg` or `<root>/*.jpg`, with `list_eval_partition.txt` in `<root>`
(or beside img_align_celeba) for the official splits. As the paper's released code
(torchvision `Resize(64, LANCZOS)` + `CenterCrop(64)`): the shorter side is resized to 64 (178×218 ->
64×78, Lanczos), then the centre 64×64 is cut (rows 7..70). `celeba64-crop140`: the common 140×140
centre crop (box (19, 39, 159, 179)), then resized to 64 (or `resolution`), gcflow's earlier default
(tighter on the face). Splits:
"train" / "valid" / "test" (need list_eval_partition.txt: 162770 / 19867 / 19962 images) or
"all" (every image in the folder).

`imagenet32-full`: full-size ImageNet (ILSVRC-2012) JPEGs as the paper's released code read them
(torchvision `Resize(32)` + `CenterCrop(32)`, bilinear): `<root>/train/<wnid>/*.JPEG` and
`<root>/val/<wnid>/*.JPEG` (split "val", also under the name "test"); label = the index of <wnid> in
the sorted class folders. (`imagenet32` reads the downsampled npz release instead, see `npz`.)

`lsun-church64`: LSUN church_outdoor exported to image files (e.g. webp/jpg, shorter side 256)
anywhere under `<root>`; shorter side resized and centre-cropped to 64. Split "train".

`ffhq64`: FFHQ PNGs (e.g. images1024x1024/00000/00000.png, ...) anywhere under `<root>`;
resized to 64. Split "train".

For celeba64, lsun-church64 and ffhq64 `<root>` may instead be a prepared `.npz` file (see
`gcflow.data.npz`): an `images` uint8 (N, S, S, 3) array, already cropped; it is resized to the
target resolution if S differs. `save_prepared_npz` writes one from a decoded dataset, so
decoding JPEGs happens once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from gcflow.data.common import (
    ROOT_HINT,
    DatasetError,
    ImageDataset,
    check_resolution,
    check_split,
    require_root,
    tensor_from,
)
from gcflow.data.npz import load_prepared_npz

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
CELEBA_SIZE = (178, 218)  # (width, height) of img_align_celeba
CELEBA_CROP = 140
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}

# Returns the crop box (left, top, right, bottom) for an image of size (width, height).
CropRule = Callable[[Path, tuple[int, int]], tuple[int, int, int, int]]


def list_images(root: Path) -> list[Path]:
    """All image files under `root`, recursively, sorted by path; hidden files and folders skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(
            Path(folder) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(found)


def centre_square(path: Path, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred square: shorter side kept, longer side cropped equally on both ends."""
    w, h = size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


class ResizeThenCrop:
    """torchvision's `Resize(R, resample)` followed by `CenterCrop(R)` on a PIL image (the released code's transform).

    The shorter side becomes R and the longer int(R·long/short) (torchvision's rounding), then the centre
    R×R is cut at offsets round((h − R)/2), round((w − R)/2).
    """

    def __init__(self, resample: Image.Resampling) -> None:
        self.resample = resample

    def __call__(self, img: Image.Image, size: int) -> Image.Image:
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short != size:
            new_long = int(size * long / short)
            img = img.resize((size, new_long) if w <= h else (new_long, size), self.resample)
        w, h = img.size
        top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # torchvision: int(round(...))
        return img.crop((left, top, left + size, top + size))


RELEASED_CELEBA = ResizeThenCrop(Image.Resampling.LANCZOS)
RELEASED_IMAGENET = ResizeThenCrop(Image.Resampling.BILINEAR)


def celeba_crop(path: Path, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The common CelebA 140×140 centre crop of a 178×218 aligned image."""
    if size != CELEBA_SIZE:
        raise DatasetError(
            f"celeba64 expects aligned CelebA images of {CELEBA_SIZE[0]}x{CELEBA_SIZE[1]}, "
            f"got {size[0]}x{size[1]}: {path}; "
            "use img_align_celeba, or dataset 'folder' for other images"
        )
    w, h = size
    left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
    return left, top, left + CELEBA_CROP, top + CELEBA_CROP


def decode_image(path: Path, resolution: int, crop: CropRule | ResizeThenCrop) -> np.ndarray:
    """Open one file, turn it upright (EXIF), convert to RGB, crop with `crop`, resize to resolution²
    (a `ResizeThenCrop` resizes first, then crops, as torchvision's transforms).

    Returns (H, W, 3) uint8.
    """
    _require_regular_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot decode image {path} ({type(err).__name__}: {err}); "
            "the file is corrupt or truncated, replace or remove it"
        ) from None
    if isinstance(crop, ResizeThenCrop):
        return np.asarray(crop(rgb, resolution))
    box = crop(path, rgb.size)
    resample = Image.Resampling.LANCZOS if box[2] - box[0] >= resolution else Image.Resampling.BICUBIC
    # Crop, then resize: the filter must not reach pixels outside the crop (as `box=` would).
    return np.asarray(rgb.crop(box).resize((resolution, resolution), resample))


def _require_regular_file(path: Path) -> None:
    """Refuse a FIFO, device or folder named like an image: opening a FIFO would block forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DatasetError(f"cannot read image {path} ({err.strerror}); replace or remove it") from None
    if not stat.S_ISREG(mode):
        raise DatasetError(
            f"image path {path} is not a regular file (a FIFO, device or folder); remove it from the dataset"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB version of `img`; 16- and 32-bit integer greyscale (modes I;16*, I) scaled from 0..65535 to 0..255.

    (Pillow's own convert("RGB") clips such values at 255, which turns a 16-bit image white.)
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


def decode_images(
    paths: list[Path], resolution: int, crop: CropRule | ResizeThenCrop = centre_square, workers: int | None = None
) -> np.ndarray:
    """Decode many files in parallel threads (Pillow releases the GIL) into (N, 3, R, R) uint8."""
    out = np.empty((len(paths), resolution, resolution, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], resolution, crop)

    pool = ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1))
    try:
        for _ in pool.map(work, range(len(paths))):  # re-raises the first failure, in path order
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # on failure, do not decode the rest
    return out.transpose(0, 3, 1, 2)


def _image_dataset(name: str, paths: list[Path], resolution: int, crop: CropRule | ResizeThenCrop) -> ImageDataset:
    return ImageDataset(
        images=tensor_from(decode_images(paths, resolution, crop)), labels=None, num_classes=0, name=name
    )


def load_folder(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """Every image under `root`, RGB, centre-cropped and resized to `resolution`."""
    check_split("folder", split, ("train",))
    check_resolution("folder", resolution)
    if resolution is None:
        raise DatasetError("dataset 'folder' needs a resolution; pass data.resolution=N")
    root = require_root("folder", root, "a directory tree of .png/.jpg/.jpeg/.webp images")
    if not root.is_dir():
        raise DatasetError(f"folder dataset root is not a directory: {root}; {ROOT_HINT}")
    paths = list_images(root)
    if not paths:
        raise DatasetError(
            f"no images found under {root}; expected .png/.jpg/.jpeg/.webp files (searched recursively); {ROOT_HINT}"
        )
    return _image_dataset("folder", paths, resolution, centre_square)


def _folder_or_npz(
    name: str, root: Path | None, split: str, resolution: int | None, layout: str
) -> tuple[Path, int, ImageDataset | None]:
    """Shared front half of the 64×64 datasets: the root, the target size, or a loaded prepared npz."""
    check_resolution(name, resolution)
    target = resolution or 64
    root = require_root(name, root, layout)
    if root.is_file():
        if root.suffix != ".npz":
            raise DatasetError(
                f"{name} root must be a directory of images or a prepared .npz file, got {root}; {ROOT_HINT}"
            )
        check_split(name, split, ("train", "all"))
        return root, target, load_prepared_npz(name, root, target)
    return root, target, None


def load_celeba64(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """CelebA 64×64 as the released code: shorter side resized to 64 (Lanczos), centre 64×64 cut."""
    return _load_celeba("celeba64", RELEASED_CELEBA, root, split, resolution)


def load_celeba64_crop140(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """CelebA 64×64, gcflow's earlier variant: 140×140 centre crop of the aligned images, resized (Lanczos)."""
    return _load_celeba("celeba64-crop140", celeba_crop, root, split, resolution)


def _load_celeba(
    name: str, crop: CropRule | ResizeThenCrop, root: Path | None, split: str, resolution: int | None
) -> ImageDataset:
    layout = "<root>/img_align_celeba/*.jpg (+ <root>/list_eval_partition.txt), or a prepared .npz"
    root, target, prepared = _folder_or_npz(name, root, split, resolution, layout)
    if prepared is not None:
        return prepared
    check_split(name, split, (*CELEBA_SPLITS, "all"))
    image_dir = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    if split == "all":
        paths = list_images(image_dir)
    else:
        paths = [image_dir / f for f in _celeba_partition(root, image_dir, split)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{name} image missing: {missing[0]} "
                f"({len(missing)} of {len(paths)} listed in list_eval_partition.txt); "
                f"expected {layout}"
            )
    if not paths:
        raise DatasetError(f"no {name} images found under {image_dir}; expected {layout}; {ROOT_HINT}")
    return _image_dataset(name, paths, target, crop)


def _celeba_partition(root: Path, image_dir: Path, split: str) -> list[str]:
    """File names of one official split, from list_eval_partition.txt ("000001.jpg 0" per line)."""
    candidates = [root / "list_eval_partition.txt", image_dir.parent / "list_eval_partition.txt"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DatasetError(
            f"celeba64 split {split!r} needs {candidates[0]} (from the CelebA Eval folder); "
            "add it, or use split 'all' for every image in the folder"
        )
    want = CELEBA_SPLITS[split]
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetError(
                f"malformed line {number} in {path}: {line!r}; expected '<file> <0|1|2>', re-download it"
            )
        if int(fields[1]) == want:
            names.append(fields[0])
    return names


def _load_square64(name: str, source: str, root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    layout = f"image files ({source}) anywhere under <root>, or a prepared .npz"
    root, target, prepared = _folder_or_npz(name, root, split, resolution, layout)
    if prepared is not None:
        return prepared
    check_split(name, split, ("train",))
    paths = list_images(root)
    if not paths:
        raise DatasetError(f"no {name} images found under {root}; expected {layout}; {ROOT_HINT}")
    return _image_dataset(name, paths, target, centre_square)


def load_lsun_church64(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """LSUN church_outdoor 64×64: shorter side resized, centre-cropped."""
    return _load_square64("lsun-church64", "LSUN church_outdoor exported to .webp/.jpg", root, split, resolution)


def load_ffhq64(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """FFHQ 64×64: the 1024×1024 (or any square) PNGs resized."""
    return _load_square64("ffhq64", "FFHQ .png", root, split, resolution)


def load_imagenet32_full(root: Path | None, split: str, resolution: int | None) -> ImageDataset:
    """ImageNet 32×32 from the full-size JPEGs, as the released code (Resize(32) + CenterCrop(32), bilinear)."""
    layout = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (ILSVRC-2012, one folder per class)"
    check_resolution("imagenet32-full", resolution)
    check_split("imagenet32-full", split, ("train", "val", "test"))
    root = require_root("imagenet32-full", root, layout)
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DatasetError(f"imagenet32-full split {split!r} needs {folder}; expected {layout}; {ROOT_HINT}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, wnid in enumerate(classes):
        found = list_images(folder / wnid)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DatasetError(f"no imagenet32-full images found under {folder}; expected {layout}; {ROOT_HINT}")
    images = tensor_from(decode_images(paths, resolution or 32, RELEASED_IMAGENET))
    return ImageDataset(
        images=images, labels=torch.tensor(labels, dtype=torch.int64), num_classes=len(classes), name="imagenet32-full"
    )
