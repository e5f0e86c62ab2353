"""`gcflow sample` outputs people can use (issue 14, item 10): PNG folder + uint8 arr_0 .npz for image runs,
--sigmas levels, --label on an unconditional run refused; toy samples in float32 (item 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcflow.cli import main
from gcflow.commands.sample import sampler_levels
from gcflow.sampling import default_multistep_sigmas
from gcflow.toy import make_toy
from gcflow.training import trainer as trainer_mod
from gcflow.training.config import ConfigError, apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

TOY = [
    "train.steps=4",
    "train.batch_size=16",
    "train.eval_samples=50",
    "train.eval_every=0",
    "train.checkpoint_every=4",
    "network.width=8",
    "network.depth=1",
    "train.device=cpu",
    "train.tensorboard=off",
]
DIGITS = [
    "network.channels=8",
    "network.num_blocks=1",
    "network.attn_resolutions=none",
    "train.steps=2",
    "train.batch_size=8",
    "train.eval_every=0",
    "train.eval_samples=8",
    "train.checkpoint_every=2",
    "train.device=cpu",
    "train.tensorboard=off",
]


def _one_line_error(capsys, code: int) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gcflow: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "run"
    train(apply_overrides(load_preset("toy-ic"), TOY), run, progress=False, log=lambda *_: None)
    return run


class _NoMetrics:
    """A stand-in evaluator: the sample outputs do not need the digits classifier."""

    def __call__(self, model, cfg):
        return {}, torch.zeros(4, 1, 8, 8)

    def write_pictures(self, run_dir, samples, records):
        pass


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("digits") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_mod, "build_evaluator", lambda *a, **k: _NoMetrics())
    try:
        train(apply_overrides(load_preset("digits-ic"), DIGITS), run, progress=False, log=lambda *_: None)
    finally:
        mp.undo()
    return run


def test_image_samples_come_as_a_png_folder_and_a_uint8_npz(digits_run, tmp_path, capsys):
    stem = tmp_path / "s"
    assert main(["sample", str(digits_run), "--n", "5", "--device", "cpu", "--out", str(stem)]) == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32
    with np.load(tmp_path / "s.npz") as f:
        assert list(f.keys()) == ["arr_0"]
        arr = f["arr_0"]
    # ADM / clean-fid layout: uint8 (N, H, W, 3); greyscale repeated over the channels.
    want = np.clip(np.round((x.astype(np.float32) + 1) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 8, 3)
    assert np.array_equal(arr, np.repeat(want, 3, axis=3))
    pngs = sorted((tmp_path / "s").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(5)]
    for i, p in enumerate(pngs):
        img = Image.open(p)
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), arr[i])
    assert "uint8 arr_0" in capsys.readouterr().out
    # Outputs are never replaced without --overwrite; with it, the folder is rebuilt.
    assert "already exists" in _one_line_error(
        capsys, main(["sample", str(digits_run), "--n", "2", "--device", "cpu", "--out", str(stem)])
    )
    assert main(["sample", str(digits_run), "--n", "2", "--device", "cpu", "--out", str(stem), "--overwrite"]) == 0
    assert len(list((tmp_path / "s").iterdir())) == 2 and not list(tmp_path.glob(".s.tmp-*"))


def test_label_on_an_unconditional_model_is_an_error(digits_run, toy_run, tmp_path, capsys):
    for run in (digits_run, toy_run):
        line = _one_line_error(
            capsys,
            main(["sample", str(run), "--n", "2", "--label", "3", "--device", "cpu", "--out", str(tmp_path / "x")]),
        )
        assert "unconditional" in line and "drop --label" in line
    assert not list(tmp_path.iterdir())


def test_sigmas_set_the_multistep_levels(toy_run, tmp_path):
    run_cfg = load_preset("toy-ic")
    default = [80.0, *default_multistep_sigmas(2, 0.002, 80.0, 7.0)]
    assert main(["sample", str(toy_run), "--n", "6", "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    spelled = ",".join(repr(s) for s in default)
    assert main(["sample", str(toy_run), "--n", "6", "--sigmas", spelled, "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))  # the same sampler
    assert main(["sample", str(toy_run), "--n", "6", "--sigmas", "80,0.821", "--out", str(tmp_path / "c")]) == 0
    assert main(["sample", str(toy_run), "--n", "6", "--sigmas", "80,5,0.821", "--out", str(tmp_path / "d")]) == 0
    c, d = np.load(tmp_path / "c.npy"), np.load(tmp_path / "d.npy")
    assert c.shape == d.shape == (6, 2) and not np.array_equal(c, d)
    assert sampler_levels(run_cfg, None, "80, 0.821") == [80.0, 0.821]
    assert sampler_levels(run_cfg, 3, None) == [80.0, *default_multistep_sigmas(3, 0.002, 80.0, 7.0)]


@pytest.mark.parametrize("sigmas", ["0.821,80", "80,80", "100,1", "80,0.001", "80,0.002", "80,x", "", "80,nan"])
def test_bad_sigmas_are_one_line_errors(toy_run, tmp_path, capsys, sigmas):
    line = _one_line_error(capsys, main(["sample", str(toy_run), "--sigmas", sigmas, "--out", str(tmp_path / "x")]))
    assert "--sigmas" in line and "strictly decreasing" in line and "[0.002, 80]" in line
    with pytest.raises(ConfigError, match="disagree"):
        sampler_levels(load_preset("toy-ic"), 3, "80,1")


def test_toy_samples_in_float32_are_the_float64_draw_rounded():
    toy = make_toy("ring8")
    x64 = toy.sample(100, torch.Generator().manual_seed(3))
    x32 = toy.sample(100, torch.Generator().manual_seed(3), dtype=torch.float32)
    assert x64.dtype == torch.float64 and x32.dtype == torch.float32 and torch.equal(x32, x64.float())
    pts, labels = toy.sample(10, torch.Generator().manual_seed(3), return_labels=True, dtype=torch.float32)
    assert pts.dtype == torch.float32 and labels.shape == (10,)
