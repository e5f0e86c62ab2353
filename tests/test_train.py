import json

import pytest
import torch

from gcflow.training import checkpoint as ckpt
from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.run_state import load_run
from gcflow.training.trainer import train

TINY = [
    "train.steps=30",
    "train.batch_size=64",
    "train.eval_every=15",
    "train.eval_samples=200",
    "train.checkpoint_every=10",
    "network.width=32",
    "network.depth=1",
    "train.log_every=10",
]


def _tiny(preset="toy-gc", extra=()):
    return apply_overrides(load_preset(preset), TINY + list(extra))


def test_run_folder_contents(tmp_path):
    res = train(_tiny(), tmp_path / "run", progress=False, log=lambda *_: None)
    run = res.run_dir
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples.png", "metrics.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("kind") != "train"]  # the evaluations (training curves: test_monitor.py)
    assert [r["step"] for r in records] == [15, 30]
    assert {"w2", "sliced_w2", "w2_noise_floor", "loss"} <= set(records[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 30 and summary["w2"] == records[-1]["w2"]
    # keep_checkpoints=3: steps 10, 20, 30 remain; only .safetensors files, no pickles.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt-00000010.safetensors", "ckpt-00000020.safetensors", "ckpt-00000030.safetensors"]


@pytest.mark.parametrize("preset", ["toy-gc", "toy-ot", "toy-cd"])
def test_tiny_run_is_deterministic(tmp_path, preset):
    extra = ["network.dropout=0.2"] if preset == "toy-gc" else []
    a = train(_tiny(preset, extra), tmp_path / "a", progress=False, log=lambda *_: None)
    b = train(_tiny(preset, extra), tmp_path / "b", progress=False, log=lambda *_: None)
    ta = ckpt.load_latest_checkpoint(a.run_dir / "checkpoints").tensors
    tb = ckpt.load_latest_checkpoint(b.run_dir / "checkpoints").tensors
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    c = train(_tiny(preset, extra + ["train.seed=1"]), tmp_path / "c", progress=False, log=lambda *_: None)
    tc = ckpt.load_latest_checkpoint(c.run_dir / "checkpoints").tensors
    assert not all(torch.equal(ta[k], tc[k]) for k in ta if k.startswith("model."))


def test_resume_is_bit_identical(tmp_path):
    full = train(_tiny(), tmp_path / "full", progress=False, log=lambda *_: None)
    part = train(_tiny(extra=["train.steps=30"]), tmp_path / "part", progress=False, log=lambda *_: None)
    # Delete the last checkpoint so resume restarts from step 20 and redoes 10 steps.
    (part.run_dir / "checkpoints" / "ckpt-00000030.safetensors").unlink()
    res = train(_tiny(), tmp_path / "part", resume=True, progress=False, log=lambda *_: None)
    ta = ckpt.load_latest_checkpoint(full.run_dir / "checkpoints").tensors
    tb = ckpt.load_latest_checkpoint(res.run_dir / "checkpoints").tensors
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert res.summary["w2"] == full.summary["w2"]


def test_frozen_predictor_from_checkpoint(tmp_path):
    first = train(_tiny("toy-ic"), tmp_path / "teacher", progress=False, log=lambda *_: None)
    loaded = load_run(first.run_dir)
    assert loaded.data_shape == (2,) and loaded.num_classes == 0 and not loaded.model.training
    run = train(
        _tiny("toy-gc", ["method.gc_predictor=frozen", f"method.gc_checkpoint={first.run_dir}"]),
        tmp_path / "s",
        progress=False,
        log=lambda *_: None,
    )
    assert run.summary["step"] == 30


def test_existing_folder_is_protected(tmp_path):
    from gcflow.training.run_dir import RunDirError

    train(_tiny(), tmp_path / "run", progress=False, log=lambda *_: None)
    before = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(RunDirError, match="already exists"):
        train(_tiny(), tmp_path / "run", progress=False, log=lambda *_: None)
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


def test_nonfinite_loss_stops_with_step(tmp_path):
    from gcflow.training.trainer import TrainingError

    with pytest.raises(TrainingError, match="non-finite .* at step 1"):
        train(
            _tiny(extra=["optim.lr=1e30", "optim.name=adam", "method.sigma_data=1e30"]),
            tmp_path / "nan",
            progress=False,
            log=lambda *_: None,
        )
