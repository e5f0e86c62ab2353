"""`gcflow export RUN --out DIR`: the EMA weights alone, named as in the model's state_dict, load back
into the same model without the optimizer state; an existing export is never overwritten silently."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gcflow.cli import main
from gcflow.commands import export as export_cmd
from gcflow.export import export_run, is_export, load_exported
from gcflow.training import checkpoint as ckpt
from gcflow.training.checkpoint import CheckpointError

TINY = [
    "train.steps=20",
    "train.batch_size=32",
    "train.eval_samples=100",
    "network.width=16",
    "network.depth=1",
    "train.checkpoint_every=10",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "toy"
    assert main(["train", "--no-progress", "--preset", "toy-gc", *TINY, "--out", str(out)]) == 0
    return out


def export_cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="gcflow export")
    export_cmd.add_arguments(p)
    return export_cmd.run(p.parse_args(list(argv)))


def test_export_holds_the_ema_weights_alone(run, tmp_path):
    assert export_cli(str(run), "--out", str(tmp_path / "exp")) == 0
    exp = tmp_path / "exp"
    assert sorted(p.name for p in exp.iterdir()) == ["README.md", "config.json", "model.safetensors"] and is_export(exp)
    chk = ckpt.load_latest_checkpoint(run / "checkpoints")
    weights = load_file(str(exp / "model.safetensors"))
    want = ckpt.split_prefix(chk.tensors, "ema")
    assert weights.keys() == want.keys() and all(torch.equal(weights[k], want[k]) for k in want)
    assert all(k.startswith("net.") for k in weights)  # the ConsistencyModel's names, no model./optim. tensors
    with safe_open(str(exp / "model.safetensors"), framework="pt") as fh:
        info = json.loads(fh.metadata()["gcflow"])
    assert info["step"] == 20 and info["data_shape"] == [2] and info["num_classes"] == 0
    assert json.loads((exp / "config.json").read_text()) == chk.meta["config"]
    assert "gcflow.load_run" in (exp / "README.md").read_text()


def test_exported_model_equals_the_runs_inference_model(run, tmp_path):
    from gcflow.training.trainer import load_model_for_inference

    export_run(run, tmp_path / "exp")
    loaded = load_exported(tmp_path / "exp")
    ours, cfg = loaded.model, loaded.config
    ref, ref_cfg = load_model_for_inference(run)
    assert cfg == ref_cfg and loaded.data_shape == (2,) and not any(p.requires_grad for p in ours.parameters())
    x, sigma = torch.randn(64, 2), torch.logspace(-2, 1.9, 64)
    assert torch.equal(ours(x, sigma), ref(x, sigma))


def test_export_refuses_to_overwrite(run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert export_cli(str(run), "--out", str(out)) == 0
    (out / "config.json").write_text("{}")
    assert export_cli(str(run), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gcflow: error:") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "config.json").read_text() == "{}"
    assert export_cli(str(run), "--out", str(out), "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["method"]["gc_mu"] == 0.5


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    assert export_cli(str(tmp_path / "missing"), "--out", str(tmp_path / "x")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert export_cli(str(run), "--out", str(run)) == 2
    assert "run's own folder" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not a gcflow export folder"):
        load_exported(run)  # a run folder is not an export
    export_run(run, tmp_path / "exp")
    (tmp_path / "exp" / "model.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="not a gcflow export"):
        load_exported(tmp_path / "exp")


def test_load_run_reads_an_export_once_integrated(run, tmp_path):
    """After integration gcflow.training.run_state dispatches an export folder to load_exported."""
    pytest.importorskip("gcflow.training.run_state")
    import gcflow

    export_run(run, tmp_path / "exp")
    model, _ = gcflow.load_model_for_inference(tmp_path / "exp")
    x, sigma = torch.randn(8, 2), torch.full((8,), 1.0)
    assert torch.equal(model(x, sigma), load_exported(tmp_path / "exp").model(x, sigma))
    assert gcflow.load_run(tmp_path / "exp") is not None
