"""A tiny end-to-end training run on real images (scikit-learn's bundled 8×8 digits)."""

import json

import pytest

from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.run_state import load_run
from gcflow.training.trainer import train

TINY = [
    "network.channels=8",
    "network.num_blocks=1",
    "train.steps=12",
    "train.batch_size=32",
    "train.eval_every=6",
    "train.eval_samples=64",
    "train.checkpoint_every=6",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("gcflow-cache")
    old = os.environ.get("GCFLOW_CACHE")
    os.environ["GCFLOW_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["GCFLOW_CACHE"]
    else:
        os.environ["GCFLOW_CACHE"] = old


@pytest.mark.parametrize("preset", ["digits-gc", "digits-ot"])
def test_tiny_digits_run(tmp_path, cache, preset):
    cfg = apply_overrides(load_preset(preset), TINY)
    res = train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    run = res.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("kind") != "train"]  # the evaluations
    assert [r["step"] for r in records] == [6, 12]
    last = records[-1]
    for key in (
        "classifier_fd",
        "classifier_fd_noise_floor",
        "pixel_sliced_w2",
        "pixel_sliced_w2_noise_floor",
        "classifier_test_accuracy",
    ):
        assert key in last, key
    # An untrained generator is far from the data; real held-out digits are close.
    assert last["classifier_fd"] > 2 * last["classifier_fd_noise_floor"]
    assert last["classifier_test_accuracy"] > 0.9
    assert (run / "samples.png").is_file() and (run / "metrics.png").is_file()
    loaded = load_run(run)
    assert loaded.data_shape == (1, 8, 8) and loaded.num_classes == 0


@pytest.mark.parametrize("preset", ["digits-ic", "digits-gc"])
def test_class_conditional_digits(tmp_path, cache, preset):
    # GC with a class-conditional network: the predictor gets the labels of the selected rows.
    cfg = apply_overrides(load_preset(preset), TINY + ["network.class_conditional=true", "train.steps=6"])
    res = train(cfg, tmp_path / "cond", progress=False, log=lambda *_: None)
    assert res.summary["step"] == 6
    loaded = load_run(res.run_dir)
    assert loaded.num_classes == 10 and loaded.config.network.class_conditional
