import subprocess
import sys

import pytest

from gcflow.cli import main

TINY = [
    "train.steps=20",
    "train.batch_size=32",
    "train.eval_samples=100",
    "network.width=16",
    "network.depth=1",
    "train.checkpoint_every=10",
]


def _one_line_error(capsys, code):
    out = capsys.readouterr()
    assert code == 2
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gcflow: error: "), out.err
    return lines[0]


def test_presets_lists_one_line_each(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert {"toy-ic", "toy-ot", "toy-gc", "toy-cd"} <= set(names)


def test_presets_show(capsys):
    assert main(["presets", "--show", "toy-gc"]) == 0
    out = capsys.readouterr().out
    assert '"gc_mu": 0.5' in out and "parameters" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "train.stepz=3"], "unknown option 'train.stepz'"),
        (["train", "train.steps=ten"], "not a valid int"),
        (["train", "--mu", "1.5"], "outside [0, 1]"),
        (["train", "method.sigma_min=90"], "must be smaller than"),
        (["train", "method.sigma_min=0"], "positive"),
        (["presets", "--show", "nope"], "unknown preset"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(capsys, tmp_path, argv, fragment):
    line = _one_line_error(capsys, main(argv + ["--out", str(tmp_path / "r")] if argv[0] == "train" else argv))
    assert fragment in line
    assert not (tmp_path / "r").exists()


def test_train_then_sample(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", *TINY]) == 0
    out = capsys.readouterr().out
    assert "noise floor" in out and str(run) in out
    # The existing run is protected.
    code = main(["train", "--out", str(run), "--no-progress", *TINY])
    assert "already exists" in _one_line_error(capsys, code)
    assert main(["sample", str(run), "--n", "50", "--steps", "2"]) == 0
    assert (run / "samples" / "n50-steps2-seed0.npy").is_file()
    assert (run / "samples" / "n50-steps2-seed0.png").is_file()
    import numpy as np

    a = np.load(run / "samples" / "n50-steps2-seed0.npy")
    assert main(["sample", str(run), "--n", "10", "--steps", "1", "--seed", "5", "--out", str(tmp_path / "x")]) == 0
    assert main(["sample", str(run), "--n", "15", "--steps", "1", "--out", str(tmp_path / "y")]) == 0
    # Sample i depends only on seed i (one-step sampler).
    assert np.allclose(np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")[5:15], atol=1e-6)
    assert a.shape == (50, 2)


def test_flags_and_overrides_can_be_intermixed(capsys, tmp_path):
    run = tmp_path / "mixed"
    assert main(["train", "--mu", "0.3", *TINY[:3], "--no-progress", *TINY[3:], "--out", str(run)]) == 0
    import json

    assert json.loads((run / "config.json").read_text())["method"]["gc_mu"] == 0.3


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("gcflow: error:")


def test_sample_missing_run_is_clear(capsys, tmp_path):
    line = _one_line_error(capsys, main(["sample", str(tmp_path / "missing")]))
    assert "not a gcflow run folder" in line


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "gcflow", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "method.gc_mu" in out and "probability that a sample is a generator-augmented" in out
