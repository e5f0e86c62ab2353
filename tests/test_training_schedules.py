"""Issue 11 in the trainer: EMA and μ schedules from the config, train.precision (fp16, auto), resume."""

import json

import pytest
import torch

from gcflow.ema import EmaSchedule, weight_shares
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    to_dict,
    validate,
)
from gcflow.training.presets import PRESETS, load_preset
from gcflow.training.run_state import read_metrics
from gcflow.training.step import draw_inputs, ema_schedule, mu_schedule
from gcflow.training.trainer import train

TINY = [
    "train.steps=40",
    "train.batch_size=64",
    "train.eval_every=20",
    "train.eval_samples=200",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=5",
    "network.width=32",
    "network.depth=1",
]
QUIET = {"progress": False, "log": lambda *_: None}


def _tiny(extra=(), preset="toy-gc"):
    return apply_overrides(load_preset(preset), TINY + list(extra))


# -- Config ----------------------------------------------------------------------------------------


def test_old_configs_load_with_the_old_schedules():
    old = to_dict(load_preset("toy-gc"))
    for key in ("ema_schedule", "ema_update_every", "ema_start", "ema_inv_gamma", "ema_power"):
        del old["optim"][key]
    del old["method"]["gc_mu_end"], old["method"]["gc_start"]
    cfg = from_dict(old)
    assert ema_schedule(cfg, 0.995) == EmaSchedule(0.995)  # constant from step 1, never a copy
    assert mu_schedule(cfg).at(0, 10) == mu_schedule(cfg).at(9, 10) == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.ema_schedule=warmup", "ema_start"),
        ("optim.ema_update_every=0", "ema_update_every"),
        ("optim.ema_power=0", "ema_power"),
        ("method.gc_mu_end=1.5", "gc_mu_end"),
        ("method.gc_start=-3", "gc_start"),
        ("train.precision=fp8", "train.precision"),
        ("train.precision_check_every=0", "precision_check_every"),
    ],
)
def test_bad_schedule_options_fail_in_validate(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(apply_overrides(load_preset("toy-gc"), [override]))


def test_paper_presets_use_the_released_settings():
    for name in PRESETS:
        if name.split("-")[0] not in ("cifar10", "imagenet32", "celeba64", "lsun"):
            continue
        cfg = load_preset(name)
        validate(cfg)
        assert cfg.train.precision == "fp32" and cfg.data.flip is False, name
        if "-edm" in name or "-ect-" in name:  # EDM and ECT settings: their own EMA (tests/test_teacher_modes.py)
            continue
        o = cfg.optim
        assert (o.ema_schedule, o.ema_decay, o.ema_update_every) == ("warmup", 0.9999, 5), name
        assert o.ema_start == (10000 if name.startswith("imagenet32") else 0), name
        assert cfg.train.precision == "fp32" and cfg.data.flip is False, name
    # The warm-up holds none of the initial weights at step 10 000 (a constant 0.9999 would hold 37 %).
    shares = weight_shares(ema_schedule(load_preset("cifar10-gc"), 0.9999), 10_000)
    assert shares[0] == 0.0


# -- Schedules in the step -------------------------------------------------------------------------


def test_mu_schedule_in_the_draws():
    from gcflow.training.data_source import build_source

    cfg = _tiny(["method.gc_start=10", "method.gc_mu=0.0", "method.gc_mu_end=1.0", "train.batch_size=4000"])
    source = build_source(cfg, torch.device("cpu"), 0, 1)
    before = draw_inputs(cfg, source, 9, torch.device("cpu")).gc_mask
    assert before is not None and not before.any()  # μ = 0 before gc_start
    late = draw_inputs(cfg, source, 30, torch.device("cpu")).gc_mask.double().mean()
    assert abs(float(late) - 30 / 40) < 0.03  # linear from 0 to 1 over the 40 steps
    const = _tiny()  # a constant μ draws the same mask as before schedules existed (select_gc at μ)
    from gcflow.pairs.gc import select_gc
    from gcflow.randomness import step_generator

    mask = draw_inputs(const, build_source(const, torch.device("cpu"), 0, 1), 3, torch.device("cpu")).gc_mask
    assert torch.equal(mask, select_gc(64, 0.5, step_generator(const.train.seed, 3, "gc")))


def test_warmup_ema_in_the_trainer_copies_then_averages(tmp_path):
    cfg = _tiny(
        [
            "optim.ema_schedule=warmup",
            "optim.ema_start=0",
            "optim.ema_update_every=5",
            "train.steps=6",
            "train.eval_every=0",
            "train.checkpoint_every=0",
        ]
    )
    one = train(apply_overrides(cfg, ["train.steps=1"]), tmp_path / "one", **QUIET)
    for p, q in zip(one.ema.parameters(), one.model.parameters()):
        assert torch.equal(p, q)  # step 1 copies the weights (ema-pytorch's first update)
    five = train(apply_overrides(cfg, ["train.steps=5"]), tmp_path / "five", **QUIET)
    for p, q in zip(five.ema.parameters(), one.model.parameters()):
        assert torch.equal(p, q)  # steps 2..5 leave the EMA alone (update_every = 5)
    six = train(cfg, tmp_path / "six", **QUIET)
    for p, q in zip(six.ema.parameters(), six.model.parameters()):
        assert torch.equal(p, q)  # step 6 is the first update after start: ema-pytorch copies once more


def test_resume_with_warmup_ema_auto_precision_and_mu_ramp_is_bit_identical(tmp_path):
    extra = [
        "optim.ema_schedule=warmup",
        "optim.ema_start=3",
        "optim.ema_update_every=5",
        "optim.ema_decay=0.99",
        "method.gc_mu=0.2",
        "method.gc_mu_end=0.8",
        "method.gc_start=4",
        "train.precision=auto",
        "train.precision_check_every=7",
    ]
    full = train(_tiny(extra), tmp_path / "full", **QUIET)
    part = train(_tiny(extra), tmp_path / "part", **QUIET)
    # As if killed after the checkpoint at step 20: the later checkpoints never existed.
    for step in (30, 40):
        (part.run_dir / "checkpoints" / f"ckpt-{step:08d}.safetensors").unlink()
    (part.run_dir / "summary.json").unlink()
    res = train(_tiny(extra), tmp_path / "part", resume=True, **QUIET)
    ta = ckpt.load_latest_checkpoint(full.run_dir / "checkpoints").tensors
    tb = ckpt.load_latest_checkpoint(res.run_dir / "checkpoints").tensors
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    def records(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        wall_time = ("seconds", "images_per_s", "step_time_ms")  # the records' only non-deterministic values
        return [{k: v for k, v in json.loads(x).items() if k not in wall_time} for x in lines]

    assert records(full.run_dir) == records(res.run_dir)  # same events, none twice
    events = [r for r in records(full.run_dir) if r.get("event") == "precision"]
    assert events and events[0]["step"] == 0
    assert all(e["precision"] in ("fp32", "bf16") and 0 <= e["sign_agreement"] <= 1 for e in events)
    assert all(a["precision"] != b["precision"] for a, b in zip(events, events[1:]))  # only switches
    assert all("event" not in r for kind in ("eval", "train") for r in read_metrics(full.run_dir, kind))
    assert res.summary["step"] == 40 and "event" not in res.summary


# -- Precision -------------------------------------------------------------------------------------


def test_auto_switches_to_fp32_when_the_check_fails(tmp_path):
    # Tolerances no precision can meet: the first check already keeps fp32 (and logs it).
    cfg = _tiny(["train.precision=auto", "train.steps=5", "train.eval_every=0", "train.checkpoint_every=0"])
    from gcflow.training import precision_policy

    original = precision_policy.precision_agrees
    precision_policy.precision_agrees = lambda *a, **k: (False, original(*a, **k)[1])
    try:
        run = train(cfg, tmp_path / "run", **QUIET)
    finally:
        precision_policy.precision_agrees = original
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in lines if r.get("event")] == ["fp32"]


def test_fp16_trains_with_loss_scaling(tmp_path):
    cfg = _tiny(["train.precision=fp16", "train.steps=5", "train.eval_every=0", "train.checkpoint_every=0"])
    run = train(cfg, tmp_path / "run", **QUIET)
    assert torch.isfinite(torch.tensor(run.summary["loss"]))
    ref = train(apply_overrides(cfg, ["train.precision=fp32"]), tmp_path / "ref", **QUIET)
    # Same draws, different rounding: close to fp32, not equal.
    assert run.summary["loss"] == pytest.approx(ref.summary["loss"], rel=0.05)
