"""Golden numbers: one tiny CPU run per method, its final loss pinned.

Each number is the mean training loss over the 30 steps of a fixed-seed toy run, recorded with the
code before the structure refactor (issue 10). A change in any part of the method — level draws,
coupling, GC augmentation, CD pairs, loss, optimizer, EMA — moves it far beyond the tolerance, which
only absorbs float summation order across platforms.
"""

import pytest

from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train

TINY = [
    "train.steps=30",
    "train.batch_size=64",
    "train.eval_every=0",
    "train.eval_samples=64",
    "train.checkpoint_every=0",
    "network.width=32",
    "network.depth=1",
    "train.seed=3",
]

# preset -> mean loss over steps 1..30 (summary.json "loss"), from the pre-refactor trainer.
GOLDEN_LOSS = {
    "toy-ic": 0.7021731694539388,
    "toy-ot": 0.4993878364562988,
    "toy-gc": 0.6464693705240886,
    "toy-cd": 0.47889655431111655,
}


@pytest.mark.parametrize("preset", sorted(GOLDEN_LOSS))
def test_final_loss_is_pinned(tmp_path, preset):
    cfg = apply_overrides(load_preset(preset), TINY)
    result = train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert result.summary["step"] == 30
    assert result.summary["loss"] == pytest.approx(GOLDEN_LOSS[preset], rel=1e-6)
