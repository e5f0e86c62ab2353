import json

import pytest

from gcflow.training.config import Config, ConfigError, apply_overrides, from_dict, to_dict, validate
from gcflow.training.presets import all_presets, load_preset


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(), ["method.gc_mu=0.3", "train.steps=200", "network.channel_mult=1,2,2,2", "data.flip=true"]
    )
    assert cfg.method.gc_mu == 0.3 and cfg.train.steps == 200
    assert cfg.network.channel_mult == (1, 2, 2, 2) and cfg.data.flip is True


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.stepz=3", "unknown option 'train.stepz'"),
        ("train.steps=abc", "not a valid int"),
        ("method.gc_mu=half", "not a valid float"),
        ("data.flip=maybe", "not a valid bool"),
        ("steps", "group.field=value"),
    ],
)
def test_bad_overrides_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override, match",
    [
        ("method.sigma_min=100", "must be smaller than"),
        ("method.sigma_min=-1", "positive"),
        ("method.gc_mu=1.5", "outside"),
        ("method.coupling=sinkhorn", "not one of"),
        ("optim.lr=0", "positive"),
        ("network.dropout=1.0", "dropout"),
        ("method.sigma_max=inf", "not a finite number"),
        ("optim.lr=nan", "not a finite number"),
    ],
)
def test_validation(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(apply_overrides(Config(), [override]))


def test_round_trip_and_unknown_keys():
    cfg = apply_overrides(Config(), ["method.gc_mu=0.5"])
    d = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(d) == cfg
    d["train"]["bogus"] = 1
    with pytest.raises(ConfigError, match="unknown option 'train.bogus'"):
        from_dict(d)
    with pytest.raises(ConfigError, match="not a valid int"):
        from_dict({"train": {"steps": "10"}})


def test_presets_load_and_validate():
    presets = all_presets()
    for name in ("toy-ic", "toy-ot", "toy-gc", "toy-cd"):
        assert name in presets
    for name in presets:
        validate(load_preset(name))
    gc = load_preset("toy-gc")
    assert gc.method.gc_mu == 0.5 and gc.method.coupling == "independent"
    assert load_preset("toy-ot").method.coupling == "ot"
    assert load_preset("toy-cd").method.pairs == "cd"
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("toy-xyz")
