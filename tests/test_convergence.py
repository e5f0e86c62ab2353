"""Toy convergence with an exact metric: IC and GC runs reach a stated W2 relative to the noise floor.

W2 is the exact optimal-transport distance between 1000 one-step samples and 1000 data points; the
noise floor is the same metric between two independent data samples. An untrained model scores far
above the threshold, so the test cannot pass without learning.
"""

import pytest
import torch

from gcflow.toy.mixture import make_toy
from gcflow.training.builders import build_model
from gcflow.training.config import apply_overrides
from gcflow.training.evaluate import ToyEvaluator
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

STEPS = ["train.steps=1500", "train.eval_every=0", "train.checkpoint_every=0"]
THRESHOLD = 1.6  # W2 must be within 1.6× the data-to-data noise floor after 1500 steps


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["toy-ic", "toy-gc"])
def test_toy_converges_near_noise_floor(tmp_path, preset):
    cfg = apply_overrides(load_preset(preset), STEPS)
    res = train(cfg, tmp_path / preset, progress=False, log=lambda *_: None)
    s = res.summary
    assert s["w2"] < THRESHOLD * s["w2_noise_floor"], s
    # The same metric on an untrained model is far above the threshold.
    torch.manual_seed(0)
    mix = make_toy(cfg.data.name)
    untrained = build_model(cfg, (2,))
    ev = ToyEvaluator(lambda n, g: mix.sample(n, g), cfg.train.eval_samples, 2, cfg.train.seed, torch.device("cpu"))
    metrics, _ = ev(untrained.eval(), cfg)
    assert metrics["w2"] > 3 * THRESHOLD * s["w2_noise_floor"]
