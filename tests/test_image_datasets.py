"""Image datasets: each reader on small files written in the real on-disk formats, and its errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcflow.data import (
    DatasetError,
    ImageDataset,
    cifar,
    idx,
    load_image_dataset,
    save_prepared_npz,
    to_uint8,
    to_unit_range,
)

REAL_MNIST = Path("/work/shared/data/mnist")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    """The error's message, checked to be one line containing every fragment."""
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----------------------------------------------------------------------------- registry, helpers


def test_unknown_name_lists_choices():
    with pytest.raises(KeyError, match="cifar10.*mnist"):
        load_image_dataset("cifar-11", None)


def test_unknown_split_is_a_dataset_error():
    with pytest.raises(DatasetError) as err:
        load_image_dataset("digits", None, split="validation")
    one_line_error(err, "validation", "train", "test")


def test_unit_range_round_trip_is_exact():
    levels = torch.arange(256, dtype=torch.uint8)
    x = to_unit_range(levels)
    assert x.dtype == torch.float32
    assert x[0] == -1.0 and x[-1] == 1.0
    assert torch.equal(to_uint8(x), levels)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


# ----------------------------------------------------------------------------- digits


def test_digits_split_shapes_and_range():
    train = load_image_dataset("digits", None, "train")
    test = load_image_dataset("digits", None, "test")
    assert len(train) + len(test) == 1797 and len(train) == 1500
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert train.images.max() == 255 and train.images.min() == 0  # 16 -> 255, 0 -> 0
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))
    assert load_image_dataset("digits", None, "test", resolution=16).images.shape == (297, 1, 16, 16)


# ----------------------------------------------------------------------------- MNIST-style IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 d, d big-endian uint32 sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> dict[str, str]:
    """Write one split's two IDX files; return {file name: md5} for the checksum table."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    table = {}
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(array)
        if gz:
            data = gzip.compress(data)
            table[f"{stem}.gz"] = md5(data)
        (folder / (f"{stem}.gz" if gz else stem)).write_bytes(data)
    return table


def small_mnist(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_round_trip(tmp_path, monkeypatch, gz, split):
    images, labels = small_mnist()
    table = write_idx_split(tmp_path, split, images, labels, gz)
    for name, md5 in table.items():
        monkeypatch.setitem(idx.CHECKSUMS["mnist"], name, md5)
    ds = load_image_dataset("mnist", tmp_path, split)
    assert ds.images.shape == (6, 1, 28, 28) and ds.num_classes == 10 and ds.name == "mnist"
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert np.array_equal(ds.labels.numpy(), labels.astype(np.int64))
    assert load_image_dataset("mnist", tmp_path, split, resolution=32).images.shape == (6, 1, 32, 32)


def test_fashion_mnist_in_named_subfolder(tmp_path, monkeypatch):
    images, labels = small_mnist(seed=1)
    table = write_idx_split(tmp_path / "fashion-mnist", "train", images, labels, gz=True)
    for name, md5 in table.items():
        monkeypatch.setitem(idx.CHECKSUMS["fashion-mnist"], name, md5)
    ds = load_image_dataset("fashion-mnist", tmp_path, "train")
    assert np.array_equal(ds.images[:, 0].numpy(), images)


def test_idx_checksum_mismatch(tmp_path):
    write_idx_split(tmp_path, "train", *small_mnist(), gz=True)  # official table: cannot match
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    one_line_error(err, "checksum mismatch", path, "f68b3c2dcbeaaa9fbdd348bbdeb94873", "re-download")


def test_idx_missing_file_names_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "missing", "train-images-idx3-ubyte.gz", "data.root=DIR")
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", None)
    one_line_error(err, "data.root=DIR")


def _trust(monkeypatch, folder: Path) -> None:
    """Put the current md5 of every .gz in `folder` into the checksum table."""
    for path in folder.glob("*.gz"):
        monkeypatch.setitem(idx.CHECKSUMS["mnist"], path.name, md5(path.read_bytes()))


def test_idx_corrupt_gzip(tmp_path, monkeypatch):
    write_idx_split(tmp_path, "train", *small_mnist(), gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(os.urandom(300))
    _trust(monkeypatch, tmp_path)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "corrupt or truncated gzip", "train-images-idx3-ubyte.gz")


def test_idx_truncated_gzip_stream(tmp_path, monkeypatch):
    write_idx_split(tmp_path, "train", *small_mnist(), gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    _trust(monkeypatch, tmp_path)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "truncated", str(path))


def test_idx_truncated_data(tmp_path):
    write_idx_split(tmp_path, "train", *small_mnist(), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "truncated", str(path), "(6, 28, 28)")


def test_idx_bad_magic(tmp_path):
    write_idx_split(tmp_path, "train", *small_mnist(), gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04not idx")
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "magic", "train-labels-idx1-ubyte")


def test_idx_wrong_image_size_and_label_count(tmp_path):
    images, labels = small_mnist()
    write_idx_split(tmp_path, "train", images[:, :20, :20], labels, gz=False)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "(6, 20, 20)", "(N, 28, 28)")
    write_idx_split(tmp_path, "train", images, labels[:5], gz=False)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("mnist", tmp_path)
    one_line_error(err, "labels", "(5,)")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason="real MNIST not present")
def test_real_mnist_checksums_and_contents():
    train = load_image_dataset("mnist", REAL_MNIST, "train")
    test = load_image_dataset("mnist", REAL_MNIST, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9] and test.labels[:3].tolist() == [7, 2, 1]
    assert torch.bincount(train.labels).tolist()[:2] == [5923, 6742]


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """A batch dict like the official ones: b"data" (n, 3072) uint8 R|G|B planes, b"labels" list."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    batch = {
        b"batch_label": b"training batch",
        b"labels": labels.tolist(),
        b"data": images.reshape(n, 3072),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    return batch, images, labels


def write_cifar(folder: Path, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, name in enumerate([*cifar.SPLIT_FILES["train"], "test_batch"]):
        batch, images, labels = cifar_batch(n, seed)
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2 if seed % 2 else 4))
        written[name] = (images, labels)
    return written


def expected_cifar(written, split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [written[name] for name in cifar.SPLIT_FILES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_folder_round_trip(tmp_path, split):
    written = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_image_dataset("cifar10", tmp_path, split)
    images, labels = expected_cifar(written, split)
    assert ds.images.shape == (len(images), 3, 32, 32) and ds.num_classes == 10
    assert np.array_equal(ds.images.numpy(), images)  # channel planes land in C
    assert np.array_equal(ds.labels.numpy(), labels)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official files store it: a Python 2 protocol-2 pickle with str (BINSTRING) keys.

    Python 3 cannot write these, so the opcodes are assembled by hand, numpy-1.x global names included.
    """

    def text(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(v: int) -> bytes:  # BININT1 / BININT
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    dtype = b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R("
    dtype += integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b") + b"\x87R"
    array += b"(" + integer(1) + b"(" + integer(data.shape[0]) + integer(data.shape[1]) + b"t" + dtype
    array += b"\x89" + text(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    items = text(b"data") + array + text(b"labels") + label_list + text(b"batch_label") + text(b"batch 1")
    return b"\x80\x02}(" + items + b"u."


def test_cifar_reads_python2_pickles(tmp_path):
    written = write_cifar(tmp_path)  # root is the batches folder itself
    images, labels = written["data_batch_1"]
    (tmp_path / "data_batch_1").write_bytes(py2_cifar_pickle(images.reshape(len(images), 3072), labels.tolist()))
    ds = load_image_dataset("cifar10", tmp_path, "train")
    assert np.array_equal(ds.images[: len(images)].numpy(), images)
    assert np.array_equal(ds.labels[: len(images)].numpy(), labels)


def make_cifar_tarball(tmp_path: Path) -> tuple[Path, dict]:
    written = write_cifar(tmp_path / "staging" / "cifar-10-batches-py")
    tarball = tmp_path / "root" / cifar.TARBALL
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "staging" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tarball, written


def test_cifar_tarball_round_trip_and_checksum(tmp_path, monkeypatch):
    tarball, written = make_cifar_tarball(tmp_path)
    with pytest.raises(DatasetError) as err:  # the published checksum cannot match a test tarball
        load_image_dataset("cifar10", tarball.parent)
    one_line_error(err, "checksum mismatch", str(tarball), "c58f30108f718f92721af3b95e74349a")
    monkeypatch.setitem(cifar.CHECKSUMS, cifar.TARBALL, md5(tarball.read_bytes()))
    ds = load_image_dataset("cifar10", tarball.parent, "train")
    images, labels = expected_cifar(written, "train")
    assert np.array_equal(ds.images.numpy(), images) and np.array_equal(ds.labels.numpy(), labels)
    assert not (tarball.parent / "cifar-10-batches-py").exists()  # read in memory, nothing extracted


def test_cifar_truncated_tarball(tmp_path, monkeypatch):
    tarball, _ = make_cifar_tarball(tmp_path)
    tarball.write_bytes(tarball.read_bytes()[:-200])
    monkeypatch.setitem(cifar.CHECKSUMS, cifar.TARBALL, md5(tarball.read_bytes()))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10", tarball.parent)
    one_line_error(err, str(tarball))


class MkdirPayload:
    """A pickle that would create a directory when loaded by an unrestricted Unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("where", ["value", "top"])
def test_cifar_malicious_pickle_is_refused_without_running(tmp_path, where):
    # Control: the payload is live under plain pickle.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(MkdirPayload(control)))
    assert control.exists()

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned_marker"
    evil = MkdirPayload(marker) if where == "top" else {b"data": MkdirPayload(marker), b"labels": []}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10", tmp_path, "train")
    one_line_error(err, "refused", "data_batch_3", "mkdir")
    assert not marker.exists()


def test_cifar_truncated_and_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10", tmp_path, "test")
    one_line_error(err, "corrupt or truncated", str(path))
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10", tmp_path, "test")
    one_line_error(err, "(2, 100)", "3072")
    (folder / "data_batch_5").unlink()
    with pytest.raises(DatasetError) as err:
        load_image_dataset("cifar10", tmp_path, "train")
    one_line_error(err, "missing", "data_batch_5")


# ----------------------------------------------------------------------------- ImageNet 32


def write_imagenet32(root: Path, n: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    names = [f"train_data_batch_{i}.npz" for i in range(1, 11)] + ["val_data.npz"]
    for seed, name in enumerate(names):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        arrays = {"data": images.reshape(n, 3072), "labels": labels.tolist()}
        if name.startswith("train"):
            arrays["mean"] = np.zeros(3072)
        np.savez(root / name, **arrays)
        written[name] = (images, labels)
    return written


def test_imagenet32_round_trip(tmp_path):
    written = write_imagenet32(tmp_path)
    train = load_image_dataset("imagenet32", tmp_path, "train")
    assert train.images.shape == (20, 3, 32, 32) and train.num_classes == 1000
    images = np.concatenate([written[f"train_data_batch_{i}.npz"][0] for i in range(1, 11)])
    labels = np.concatenate([written[f"train_data_batch_{i}.npz"][1] for i in range(1, 11)])
    assert np.array_equal(train.images.numpy(), images)
    assert np.array_equal(train.labels.numpy(), labels - 1)  # 1-based on disk, 0-based in memory
    val = load_image_dataset("imagenet32", tmp_path, "val")
    assert np.array_equal(val.images.numpy(), written["val_data.npz"][0])


def test_imagenet32_errors(tmp_path):
    write_imagenet32(tmp_path)
    val = tmp_path / "val_data.npz"
    np.savez(val, data=np.zeros((2, 12288), np.uint8), labels=np.array([1, 2]))  # 64x64 release
    with pytest.raises(DatasetError) as err:
        load_image_dataset("imagenet32", tmp_path, "val")
    one_line_error(err, "(2, 12288)", "(N, 3072)", str(val))
    np.savez(val, data=np.full((2, 3072), np.nan, np.float32), labels=np.array([1, 2]))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("imagenet32", tmp_path, "val")
    one_line_error(err, "NaN", str(val))
    np.savez(val, data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("imagenet32", tmp_path, "val")
    one_line_error(err, "1-based")
    val.write_bytes(val.read_bytes()[:100])
    with pytest.raises(DatasetError) as err:
        load_image_dataset("imagenet32", tmp_path, "val")
    one_line_error(err, "corrupt or truncated", str(val))
    (tmp_path / "train_data_batch_7.npz").unlink()
    with pytest.raises(DatasetError) as err:
        load_image_dataset("imagenet32", tmp_path, "train")
    one_line_error(err, "missing", "train_data_batch_7.npz", "data.root=DIR")


# ----------------------------------------------------------------------------- image folders


def striped(width: int, height: int, outer=(255, 0, 0), inner=(0, 0, 255), box=None) -> Image.Image:
    """An RGB image coloured `inner` inside `box` (default: centred largest square), `outer` elsewhere."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = outer
    if box is None:
        s = min(width, height)
        box = ((width - s) // 2, (height - s) // 2, (width - s) // 2 + s, (height - s) // 2 + s)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = inner
    return Image.fromarray(pixels)


def test_folder_crop_resize_modes_and_formats(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    striped(60, 20).save(tmp_path / "wide.png")
    striped(20, 60).save(tmp_path / "a" / "tall.jpg", quality=100, subsampling=0)
    striped(16, 16).convert("L").save(tmp_path / "a" / "b" / "gray.webp", lossless=True)
    Image.new("RGBA", (9, 9), (0, 0, 255, 128)).save(tmp_path / "a" / "rgba.PNG")
    Image.new("P", (12, 12)).save(tmp_path / "palette.png")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")  # skipped
    (tmp_path / "notes.txt").write_text("not an image")  # skipped
    ds = load_image_dataset("folder", tmp_path, resolution=8)
    assert ds.images.shape == (5, 3, 8, 8) and ds.labels is None and ds.num_classes == 0
    by_name = dict(zip(["a/b/gray.webp", "a/rgba.PNG", "a/tall.jpg", "palette.png", "wide.png"], ds.images))
    for name in ["a/tall.jpg", "wide.png"]:  # the centre square is pure blue: the red margins were cropped
        img = by_name[name].int()
        assert (img[2] > 240).all() and (img[0] < 15).all(), name
    gray = by_name["a/b/gray.webp"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_image_dataset("folder", tmp_path, resolution=8)
    one_line_error(err, "no images found", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("folder", tmp_path, resolution=None)
    one_line_error(err, "resolution")
    striped(10, 10).save(tmp_path / "ok.png")
    broken = tmp_path / "broken.jpg"
    buffer = io.BytesIO()
    striped(64, 64).save(buffer, format="JPEG")
    broken.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(DatasetError) as err:
        load_image_dataset("folder", tmp_path, resolution=8)
    one_line_error(err, "cannot decode", str(broken))


def test_folder_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 65535 // 63).astype(np.uint16)  # 0 .. 65535
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really a 16-bit greyscale PNG
    img = load_image_dataset("folder", tmp_path, resolution=8).images[0].numpy()
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(img[0], expected) and np.array_equal(img[0], img[2])  # not pure white


def test_folder_applies_exif_orientation(tmp_path):
    # Stored sideways (blue on the left half) with EXIF orientation 6 ("rotate 90° clockwise to view"):
    # upright, blue is the top half.
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[:, :4] = (0, 0, 255)
    pixels[:, 4:] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "sideways.png", exif=exif.tobytes())
    img = load_image_dataset("folder", tmp_path, resolution=8).images[0].int()
    assert (img[2, :4] > 240).all() and (img[0, :4] < 15).all()  # top half blue
    assert (img[0, 4:] > 240).all() and (img[2, 4:] < 15).all()  # bottom half red


def test_folder_refuses_a_fifo_named_like_an_image_instead_of_hanging(tmp_path):
    striped(10, 10).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(DatasetError) as err:
        load_image_dataset("folder", tmp_path, resolution=8)
    one_line_error(err, "not a regular file", str(tmp_path / "pipe.png"))


def write_celeba(root: Path, count: int = 5) -> None:
    """img_align_celeba-sized images: blue inside the 140×140 centre crop, red outside."""
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(count):
        striped(178, 218, box=(19, 39, 159, 179)).save(folder / f"{i + 1:06d}.jpg", quality=100, subsampling=0)
    partitions = [0, 0, 0, 1, 2][:count]
    (root / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(partitions)))


def test_celeba64_crop140_crop_and_splits(tmp_path):
    write_celeba(tmp_path)
    train = load_image_dataset("celeba64-crop140", tmp_path)
    assert train.images.shape == (3, 3, 64, 64) and train.name == "celeba64-crop140"
    img = train.images.int()
    assert (img[:, 2] > 230).all() and (img[:, 0] < 25).all()  # only the crop survives
    assert len(load_image_dataset("celeba64-crop140", tmp_path, "test")) == 1
    assert load_image_dataset("celeba64-crop140", tmp_path, "all", resolution=16).images.shape == (5, 3, 16, 16)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError) as err:
        load_image_dataset("celeba64-crop140", tmp_path, "train")
    one_line_error(err, "list_eval_partition.txt", "'all'")


def test_celeba64_crop140_rejects_unaligned_images(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    striped(64, 64).save(tmp_path / "img_align_celeba" / "000001.jpg")
    with pytest.raises(DatasetError) as err:
        load_image_dataset("celeba64-crop140", tmp_path, "all")
    one_line_error(err, "178x218", "64x64", "000001.jpg")


@pytest.mark.parametrize("name", ["lsun-church64", "ffhq64"])
def test_square64_folders(tmp_path, name):
    (tmp_path / "00000").mkdir()
    striped(96, 72).save(tmp_path / "00000" / "0.webp", lossless=True)
    striped(128, 128).save(tmp_path / "00000" / "1.png")
    ds = load_image_dataset(name, tmp_path)
    assert ds.images.shape == (2, 3, 64, 64) and ds.name == name
    assert (ds.images.int()[:, 2] > 240).all()
    with pytest.raises(DatasetError):
        load_image_dataset(name, tmp_path, "test")


def test_prepared_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    source = ImageDataset(torch.from_numpy(rng.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)), None, 0, "celeba64")
    path = save_prepared_npz(source, tmp_path / "celeba16.npz")
    ds = load_image_dataset("celeba64", path, resolution=16)
    assert torch.equal(ds.images, source.images) and ds.labels is None
    assert load_image_dataset("ffhq64", path).images.shape == (4, 3, 64, 64)  # resized to the default 64

    labelled = ImageDataset(source.images, torch.tensor([0, 2, 1, 2]), 3, "npz")
    path = save_prepared_npz(labelled, tmp_path / "labelled.npz")
    ds = load_image_dataset("npz", path)
    assert torch.equal(ds.images, labelled.images) and torch.equal(ds.labels, labelled.labels) and ds.num_classes == 3

    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 16, 12, 3), np.uint8))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("celeba64", bad)
    one_line_error(err, "(2, 16, 12, 3)", "square", str(bad))
    np.savez(bad, images=np.zeros((2, 16, 16, 1), np.uint8))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("lsun-church64", bad)
    one_line_error(err, "channels last")
    floats = np.full((2, 16, 16, 3), 0.5, np.float32)
    floats[1, 3, 4, 0] = np.inf
    np.savez(bad, images=floats)
    with pytest.raises(DatasetError) as err:
        load_image_dataset("ffhq64", bad)
    one_line_error(err, "NaN or inf", str(bad))
    np.savez(bad, images=np.full((2, 8, 8, 3), 0.5, np.float32))
    assert (load_image_dataset("npz", bad).images == 128).all()  # floats read as [0, 1]
    np.savez(bad, pixels=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as err:
        load_image_dataset("npz", bad)
    one_line_error(err, "'images'", str(bad))
