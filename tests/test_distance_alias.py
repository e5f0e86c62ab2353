"""The distance once called "l1" (the Euclidean norm) is now "l2_norm"; saved configs with "l1" still work."""

import json

import torch

from gcflow.training import checkpoint as ckpt
from gcflow.training.config import apply_overrides, load_config, save_config
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

TINY = [
    "train.steps=12",
    "train.batch_size=32",
    "train.eval_every=0",
    "train.checkpoint_every=12",
    "network.width=16",
    "network.depth=1",
    "train.log_every=6",
]


def _quiet(*_args, **_kwargs) -> None:
    return None


def test_config_saved_with_l1_loads(tmp_path):
    cfg = apply_overrides(load_preset("toy-gc"), ["method.distance=l2_norm"])
    save_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    data["method"]["distance"] = "l1"  # as an older gcflow wrote it
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_config(tmp_path / "config.json").method.distance == "l1"


def test_l1_and_l2_norm_train_identically(tmp_path):
    runs = {}
    for name in ("l1", "l2_norm"):
        cfg = apply_overrides(load_preset("toy-gc"), TINY + [f"method.distance={name}"])
        res = train(cfg, tmp_path / name, progress=False, log=_quiet)
        runs[name] = ckpt.load_latest_checkpoint(res.run_dir / "checkpoints").tensors
    old, new = runs["l1"], runs["l2_norm"]
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old)
    # ... and the name matters at all: the squared norm trains to different weights.
    cfg = apply_overrides(load_preset("toy-gc"), TINY + ["method.distance=l2"])
    other = ckpt.load_latest_checkpoint(
        train(cfg, tmp_path / "l2", progress=False, log=_quiet).run_dir / "checkpoints"
    ).tensors
    assert not all(torch.equal(old[k], other[k]) for k in old if k.startswith("model."))
