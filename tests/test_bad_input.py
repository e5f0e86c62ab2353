"""Bad input: every case ends with one line `gcflow: error: ...`, exit status 2, and nothing overwritten."""

from __future__ import annotations

import errno
import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from gcflow.cli import main
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import ConfigError
from gcflow.training.distributed import split_global_batch
from gcflow.training.run_dir import RunLock
from gcflow.training.trainer import train

TINY = [
    "train.steps=10",
    "train.batch_size=16",
    "train.eval_samples=50",
    "train.checkpoint_every=5",
    "network.width=8",
    "network.depth=1",
    "train.device=cpu",
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails_with_one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, (code, out.err)
    assert len(lines) == 1 and lines[0].startswith("gcflow: error: "), out.err
    return lines[0]


def _holds_no_run(folder: Path) -> bool:
    return not (folder / "config.json").exists() and not (folder / "checkpoints").exists()


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    """A finished run folder that no bad command may change."""
    from gcflow.training.config import apply_overrides
    from gcflow.training.presets import load_preset

    return train(
        apply_overrides(load_preset("toy-ic"), TINY),
        tmp_path_factory.mktemp("bad") / "run",
        progress=False,
        log=lambda *_: None,
    ).run_dir


# --- Options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["train.stepz=3"], "unknown option 'train.stepz'"),
        (["network.kind"], "not of the form group.field=value"),
        (["train.steps=ten"], "'ten' is not a valid int"),
        (["train.steps=2.5"], "not a valid int"),
        (["method.gc_mu=half"], "not a valid float"),
        (["data.flip=maybe"], "not a valid bool"),
        (["network.channel_mult=1,x"], "not a valid list of int"),
        (["method.sigma_min=90"], "must be smaller than method.sigma_max"),
        (["method.sigma_min=80", "method.sigma_max=80"], "must be smaller than method.sigma_max"),
        (["method.sigma_min=0"], "noise levels must be positive"),
        (["method.sigma_max=-1"], "noise levels must be positive"),
        (["method.sigma_min=nan"], "not a finite number"),
        (["--mu", "1.5"], "outside [0, 1]"),
        (["method.gc_mu=-0.1"], "outside [0, 1]"),
        (["method.coupling=sinkhorn"], "not one of independent, ot"),
        (["train.batch_size=0"], "must be >= 1"),
        (["train.device=gpu"], "is not a device"),
        (["method.pairs=cd", "method.gc_mu=0.5"], "cannot be combined"),
    ],
)
def test_bad_options_fail_before_touching_the_run_folder(capsys, existing, args, fragment):
    """Even with --overwrite, a bad option leaves the existing run byte-for-byte as it was."""
    before = _snapshot(existing)
    tiny = [o for o in TINY if o.split("=")[0] not in {a.split("=")[0] for a in args}]  # a key twice is its own error
    line = _fails_with_one_line(capsys, ["train", "--no-progress", "--out", str(existing), "--overwrite", *tiny, *args])
    assert fragment in line, line
    assert _snapshot(existing) == before


@pytest.mark.parametrize(
    "argv", [["train", "--steps", "ten"], ["train", "--mu"], ["sample"], ["sample", "x", "--n", "many"]]
)
def test_bad_command_line_syntax_is_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("gcflow: error: ") and "--help" in err[0], err


@pytest.mark.parametrize(
    "batch, world, local",
    [(512, 1, 512), (512, 4, 128), (6, 3, 2), (510, 4, None), (3, 2, None), (0, 1, None), (8, 0, None)],
)
def test_global_batch_must_split_evenly_over_processes(batch, world, local):
    if local is not None:
        assert split_global_batch(batch, world) == local
    else:
        with pytest.raises(ConfigError, match="not divisible|must be >= 1") as info:
            split_global_batch(batch, world)
        assert "\n" not in str(info.value)
        if batch == 510:
            assert "train.batch_size=508" in str(info.value)


# --- Data files ---------------------------------------------------------------------------------


def _idx(dims: tuple[int, ...], data: bytes | None = None) -> bytes:
    """An IDX file of unsigned bytes with the given dims (data defaults to the right number of zeros)."""
    n = int(np.prod(dims))
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + (bytes(n) if data is None else data)


def _mnist_root(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    labels = _idx((2,))
    if kind == "missing-dir":
        return tmp_path / "no-such-dir"
    if kind == "missing-labels":
        (root / "train-images-idx3-ubyte").write_bytes(_idx((2, 28, 28)))
    elif kind == "checksum":
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx((2, 28, 28))))
        (root / "train-labels-idx1-ubyte").write_bytes(labels)
    elif kind == "truncated":
        (root / "train-images-idx3-ubyte").write_bytes(_idx((2, 28, 28))[:500])
        (root / "train-labels-idx1-ubyte").write_bytes(labels)
    elif kind == "wrong-size":
        (root / "train-images-idx3-ubyte").write_bytes(_idx((2, 27, 28)))
        (root / "train-labels-idx1-ubyte").write_bytes(labels)
    elif kind == "not-idx":
        (root / "train-images-idx3-ubyte").write_bytes(b"<html>404 not found</html>")
        (root / "train-labels-idx1-ubyte").write_bytes(labels)
    return root


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("missing-dir", "data root does not exist"),
        ("empty", "mnist file missing"),
        ("missing-labels", "train-labels-idx1-ubyte.gz"),
        ("checksum", "checksum mismatch"),
        ("truncated", "truncated"),
        ("wrong-size", "expected (N, 28, 28)"),
        ("not-idx", "not an IDX file"),
    ],
)
def test_bad_mnist_files(capsys, tmp_path, kind, fragment):
    root = _mnist_root(tmp_path, kind)
    out = tmp_path / "run"
    line = _fails_with_one_line(
        capsys, ["train", "--no-progress", "--preset", "mnist-ic", f"data.root={root}", "--out", str(out)]
    )
    assert fragment in line, line
    assert _holds_no_run(out)


def _npz(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    arrays = {
        "two-channels": {"images": rng.integers(0, 256, (4, 8, 8, 2), dtype=np.uint8)},
        "not-square": {"images": rng.integers(0, 256, (4, 8, 6, 3), dtype=np.uint8)},
        "channels-first": {"images": rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)},
        "nan": {"images": np.where(rng.random((4, 8, 8, 1)) < 0.1, np.nan, 0.5).astype(np.float32)},
        "inf": {"images": np.where(rng.random((4, 8, 8, 1)) < 0.1, np.inf, 0.5)},
        "out-of-range": {"images": rng.random((4, 8, 8, 1)) * 2},
        "pickled-object": {"images": np.array([object()] * 4, dtype=object)},
        "no-images": {"pixels": rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)},
    }.get(kind)
    if arrays is not None:
        np.savez(path, **arrays)
    elif kind == "truncated":
        np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("two-channels", "C in [1, 3]"),
        ("not-square", "square images"),
        ("channels-first", "channels last"),
        ("nan", "contains NaN or inf"),
        ("inf", "contains NaN or inf"),
        ("out-of-range", "must hold values in [0, 1]"),
        ("pickled-object", "corrupt or truncated npz"),
        ("no-images", "lacks array(s) ['images']"),
        ("truncated", "corrupt or truncated npz"),
    ],
)
def test_bad_npz_images(capsys, tmp_path, kind, fragment):
    out = tmp_path / "run"
    argv = [
        "train",
        "--no-progress",
        "--preset",
        "digits-ic",
        "data.name=npz",
        f"data.root={_npz(tmp_path, kind)}",
        "--out",
        str(out),
    ]
    line = _fails_with_one_line(capsys, argv)
    assert fragment in line, line
    assert _holds_no_run(out)


def test_dataset_smaller_than_a_batch(capsys, tmp_path):
    path = tmp_path / "small.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8))
    line = _fails_with_one_line(
        capsys,
        [
            "train",
            "--no-progress",
            "--preset",
            "digits-ic",
            "data.name=npz",
            f"data.root={path}",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "fewer than one batch" in line


def test_bad_image_folder(capsys, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    base = ["train", "--no-progress", "--preset", "digits-ic", "data.name=folder", f"data.root={images}"]
    assert "cannot decode image" in _fails_with_one_line(
        capsys, [*base, "data.resolution=8", "--out", str(tmp_path / "r1")]
    )
    assert "needs a resolution" in _fails_with_one_line(capsys, [*base, "--out", str(tmp_path / "r2")])
    (images / "a.png").unlink()
    assert "no images found" in _fails_with_one_line(
        capsys, [*base, "data.resolution=8", "--out", str(tmp_path / "r3")]
    )
    for name in ("r1", "r2", "r3"):
        assert _holds_no_run(tmp_path / name)


# --- The output folder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, error, fragment",
    [
        ("write_bytes", OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
        ("mkdir", PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        ("mkdir", OSError(errno.EROFS, "Read-only file system"), "permission denied"),
    ],
)
def test_unwritable_or_full_output_folder(capsys, tmp_path, monkeypatch, target, error, fragment):
    """(Tests run as root, where chmod does not stop writes, so the OS errors are simulated.)"""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Path, target, fail)
    line = _fails_with_one_line(capsys, ["train", "--no-progress", "--out", str(tmp_path / "run"), *TINY])
    assert "cannot write to run folder" in line and fragment in line, line


def test_output_folder_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("keep me")
    assert "is a file" in _fails_with_one_line(
        capsys, ["train", "--no-progress", "--out", str(tmp_path / "file"), *TINY]
    )
    assert (tmp_path / "file").read_text() == "keep me"


def test_full_disk_while_writing_samples(capsys, existing, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s.npy"))

    monkeypatch.setattr(np, "save", fail)
    line = _fails_with_one_line(capsys, ["sample", str(existing), "--n", "8", "--out", str(tmp_path / "s")])
    assert "no space left" in line and "s.npy" in line


def test_existing_run_needs_resume_or_overwrite(capsys, existing):
    before = _snapshot(existing)
    line = _fails_with_one_line(capsys, ["train", "--no-progress", "--out", str(existing), *TINY])
    assert "already exists; pass --resume to continue it or --overwrite to replace it" in line
    assert _snapshot(existing) == before


def test_resume_of_a_folder_without_a_run(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        assert "holds no run" in _fails_with_one_line(capsys, ["train", "--no-progress", "--resume", str(folder)])


def test_damaged_config_json_on_resume(capsys, existing, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(existing, run)
    (run / "config.json").write_text('{"train": {"steps": ')
    before = _snapshot(run)
    assert "the run folder is damaged" in _fails_with_one_line(capsys, ["train", "--no-progress", "--resume", str(run)])
    assert _snapshot(run) == before


def test_a_running_run_locks_its_folder(capsys, existing):
    """While one process trains in a folder, a second (resume or overwrite) is refused and changes nothing."""
    before = _snapshot(existing)
    with RunLock(existing):  # what a running `gcflow train` holds
        for argv in (
            ["train", "--no-progress", "--resume", str(existing)],
            ["train", "--no-progress", "--out", str(existing), "--overwrite", *TINY],
        ):
            line = _fails_with_one_line(capsys, argv)
            assert "is in use by another gcflow process" in line, line
        assert (existing / ".lock").exists()
    assert not (existing / ".lock").exists()
    assert _snapshot(existing) == before


# --- Checkpoints from elsewhere -----------------------------------------------------------------


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """A run with another architecture (width 16 instead of 8)."""
    from gcflow.training.config import apply_overrides
    from gcflow.training.presets import load_preset

    return train(
        apply_overrides(load_preset("toy-ic"), TINY + ["network.width=16"]),
        tmp_path_factory.mktemp("other") / "run",
        progress=False,
        log=lambda *_: None,
    ).run_dir


def test_checkpoint_of_another_config_is_refused(capsys, existing, other, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(existing, run)
    for name in ("ckpt-00000005.safetensors", "ckpt-00000010.safetensors"):
        shutil.copy(other / "checkpoints" / name, run / "checkpoints" / name)
    before = _snapshot(run)
    assert "was written by another config" in _fails_with_one_line(
        capsys, ["train", "--no-progress", "--resume", str(run)]
    )
    assert "was written by another config than" in _fails_with_one_line(capsys, ["sample", str(run), "--n", "4"])
    assert _snapshot(run) == before


def test_checkpoint_of_another_architecture_is_refused(capsys, existing, other, tmp_path):
    """A checkpoint whose config says one network but whose tensors are another's (e.g. edited by hand)."""
    run = tmp_path / "run"
    shutil.copytree(existing, run)
    mine = ckpt.load_checkpoint(run / "checkpoints" / "ckpt-00000010.safetensors")
    theirs = ckpt.load_checkpoint(other / "checkpoints" / "ckpt-00000010.safetensors")
    meta = {k: v for k, v in mine.meta.items() if k not in ("checksum", "meta_checksum", "format")}
    forged = ckpt.save_checkpoint(run / "checkpoints", 10, theirs.tensors, meta)
    before = _snapshot(run)
    for argv in (
        ["train", "--no-progress", "--resume", str(run)],
        ["sample", str(run), "--n", "4"],
        ["sample", str(forged), "--n", "4", "--out", str(tmp_path / "s")],
        [
            "train",
            "--no-progress",
            "--out",
            str(tmp_path / "gc"),
            *TINY,
            "method.gc_mu=0.5",
            "method.gc_predictor=frozen",
            f"method.gc_checkpoint={forged}",
        ],
    ):
        line = _fails_with_one_line(capsys, argv)
        assert "does not fit this run's architecture or config" in line, line
    assert _snapshot(run) == before
