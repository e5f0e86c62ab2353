"""Issue 11: CelebA-64 and ImageNet-32 prepared as the paper's released code (torchvision Resize + CenterCrop)."""

import pytest
import torch
from PIL import Image
from test_image_datasets import striped, write_celeba

from gcflow.data import load_image_dataset
from gcflow.data.folder import RELEASED_CELEBA, RELEASED_IMAGENET
from gcflow.data.shapes import dataset_shape


def _noise_image(w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def test_released_celeba_geometry():
    # torchvision Resize(64): 178×218 -> 64×int(64·218/178) = 64×78; CenterCrop(64): rows round(14/2) = 7..70.
    img = _noise_image(178, 218)
    out = RELEASED_CELEBA(img, 64)
    want = img.resize((64, 78), Image.Resampling.LANCZOS).crop((0, 7, 64, 71))
    assert out.size == (64, 64) and out.tobytes() == want.tobytes()


def test_released_imagenet_geometry():
    # Landscape 500×375 -> int(32·500/375) = 42 × 32 (bilinear), columns round(10/2) = 5..36.
    img = _noise_image(500, 375, 1)
    want = img.resize((42, 32), Image.Resampling.BILINEAR).crop((5, 0, 37, 32))
    assert RELEASED_IMAGENET(img, 32).tobytes() == want.tobytes()
    square = _noise_image(32, 32, 2)
    assert RELEASED_IMAGENET(square, 32).tobytes() == square.tobytes()  # already 32: untouched


def test_celeba64_is_the_released_transform(tmp_path):
    write_celeba(tmp_path)  # blue inside the 140×140 box (19, 39, 159, 179), red outside
    ds = load_image_dataset("celeba64", tmp_path, "all")
    assert ds.images.shape == (5, 3, 64, 64) and ds.name == "celeba64"
    img = ds.images.int()
    # The whole 178-pixel width survives: 19/178·64 ≈ 6.8 red columns on each side, blue in the middle.
    assert (img[:, 0, 32, :4] > 200).all() and (img[:, 2, 32, :4] < 60).all()
    assert (img[:, 2, 32, 20:44] > 200).all()
    crop = load_image_dataset("celeba64-crop140", tmp_path, "all").images.int()
    assert (crop[:, 2] > 230).all()  # the earlier variant: only the 140×140 box


def test_imagenet32_full_reads_class_folders(tmp_path):
    for split in ("train", "val"):
        for wnid, size in (("n01440764", (500, 375)), ("n01443537", (300, 400))):
            (tmp_path / split / wnid).mkdir(parents=True)
            striped(*size).save(tmp_path / split / wnid / "a.JPEG", quality=95)
    ds = load_image_dataset("imagenet32-full", tmp_path)
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.tolist() == [0, 1] and ds.num_classes == 2
    assert load_image_dataset("imagenet32-full", tmp_path, "test").images.shape == (2, 3, 32, 32)
    assert dataset_shape("imagenet32-full") == ((3, 32, 32), 1000)
    with pytest.raises(Exception, match="imagenet32-full"):
        load_image_dataset("imagenet32-full", tmp_path / "nowhere")
