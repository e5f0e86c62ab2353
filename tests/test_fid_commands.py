"""`gcflow fid-ref` and `gcflow evaluate` end to end on digits (classifier features), and their errors."""

import json

import pytest

from gcflow.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GCFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fid_ref_then_evaluate_digits(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "digits-gc",
                "--out",
                str(run),
                "--no-progress",
                "network.channels=8",
                "train.steps=4",
                "train.batch_size=16",
                "train.eval_samples=32",
                "train.checkpoint_every=4",
            ]
        )
        == 0
    )
    ref = tmp_path / "digits-ref.npz"
    assert main(["fid-ref", "digits", "--out", str(ref)]) == 0
    assert ref.is_file()
    # Refuses to overwrite without --overwrite.
    assert main(["fid-ref", "digits", "--out", str(ref)]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--ref",
                str(ref),
                "--num-samples",
                "100",
                "--draws",
                "2",
                "--kid-subsets",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["draws"] == 2 and len(res["fid_draws"]) == 2
    assert res["fid_mean"] > 0 and "kid_mean" in res and "is_mean" in res
    assert res["extractor"].startswith("classifier-digits-")


def test_inception_needs_weights(tmp_path, cache, capsys):
    assert main(["fid-ref", "cifar10", "--root", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inception-weights" in err[0]
    assert (
        main(["fid-ref", "cifar10", "--root", str(tmp_path), "--inception-weights", str(tmp_path / "missing.pth")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pth" in err[0]
