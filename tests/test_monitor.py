"""Watching a run (issue 14, items 1-2): training records every train.log_every steps, gathered a window
late without reading the device; evaluation lines; metrics.png; TensorBoard events from a real run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gcflow.plotting import _points
from gcflow.training import monitor as mon
from gcflow.training.config import ConfigError, apply_overrides, validate
from gcflow.training.presets import load_preset
from gcflow.training.run_state import read_metrics
from gcflow.training.step import TrainStep, draw_inputs
from gcflow.training.trainer import train

TINY = [
    "train.steps=12",
    "train.batch_size=32",
    "train.eval_every=6",
    "train.eval_samples=100",
    "train.checkpoint_every=12",
    "network.width=16",
    "network.depth=1",
    "train.log_every=4",
    "train.device=cpu",
    "train.tensorboard=off",
]


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def step_values(monkeypatch):
    """Every step's (loss, grad norm), read synchronously from the tensors the step returns."""
    seen: list[tuple[float, float]] = []
    original = TrainStep.forward_backward

    def spy(self, step):
        loss, grad_norm = original(self, step)
        seen.append((loss.item(), grad_norm.item()))
        return loss, grad_norm

    monkeypatch.setattr(TrainStep, "forward_backward", spy)
    return seen


def test_train_records_hold_the_window_means_of_a_synchronous_computation(tmp_path, step_values):
    lines: list[str] = []
    res = train(apply_overrides(load_preset("toy-gc"), TINY), tmp_path / "run", progress=False, log=lines.append)
    records = _records(res.run_dir)
    train_recs = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    # Windows end at log steps (4, 8, 12) and at evaluations and checkpoints (6, 12).
    assert [r["step"] for r in train_recs] == [4, 6, 8, 12] and [r["step"] for r in evals] == [6, 12]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)  # written in step order
    bounds = [0, 4, 6, 8, 12]
    for rec, lo, hi in zip(train_recs, bounds, bounds[1:]):
        window = step_values[lo:hi]
        assert rec["loss"] == pytest.approx(sum(v[0] for v in window) / len(window), rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(sum(v[1] for v in window) / len(window), rel=1e-6)
        assert rec["lr"] == 1e-3 and rec["mu"] == 0.5 and 0.0 < rec["gc_fraction"] < 1.0
        assert rec["images_per_s"] > 0 and rec["step_time_ms"] > 0 and rec["n_scales"] >= 10
    # summary.json: the last evaluation, without the record kind.
    assert res.summary["step"] == 12 and res.summary["w2"] == evals[-1]["w2"] and "kind" not in res.summary
    assert read_metrics(res.run_dir, "eval") == evals and read_metrics(res.run_dir, "train") == train_recs
    # One printed line per evaluation, with the noise floors.
    printed = [line for line in lines if line.startswith("gcflow: step ")]
    assert len(printed) == 2 and printed[-1].startswith("gcflow: step 12  loss ") and "w2 " in printed[-1]
    assert "(floor " in printed[-1]


def test_gc_fraction_counts_the_step_s_own_gc_draw():
    cfg = apply_overrides(load_preset("toy-gc"), TINY)
    from gcflow.training.data_source import build_source

    source = build_source(cfg, torch.device("cpu"))
    for step in range(5):
        inp = draw_inputs(cfg, source, step, torch.device("cpu"))
        assert mon.gc_rows(object(), cfg, step) == int(inp.gc_mask.sum())
    ic = apply_overrides(load_preset("toy-ic"), TINY)
    assert mon.gc_rows(object(), ic, 3) == 0


class _Sink:
    def __init__(self):
        self.records = []

    def scalars(self, step, values):
        self.records.append((step, dict(values)))


class _Stepper:
    n_scales = 20


def test_records_are_written_one_window_late_unless_asked_to_wait():
    cfg = apply_overrides(load_preset("toy-ic"), TINY)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    sink = _Sink()
    curves = mon.TrainCurves(cfg, _Stepper(), opt, torch.device("cpu"), sink)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(10, 2, generator=g)
    for k in range(4):
        curves.add(k, values[k, 0], values[k, 1])
    curves.end_window(4, wait=False)
    assert sink.records == []  # the window's values are still on their way
    for k in range(4, 10):
        curves.add(k, values[k, 0], values[k, 1])
    curves.end_window(10, wait=False)
    assert [s for s, _ in sink.records] == [4]
    curves.flush()
    assert [s for s, _ in sink.records] == [4, 10]
    for (_step, rec), (lo, hi) in zip(sink.records, [(0, 4), (4, 10)]):
        assert rec["kind"] == "train" and rec["lr"] == 0.5 and rec["mu"] == 0.0 and rec["gc_fraction"] == 0.0
        assert rec["loss"] == pytest.approx(values[lo:hi, 0].double().mean().item(), rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(values[lo:hi, 1].double().mean().item(), rel=1e-6)


def test_a_stop_mid_window_is_taken_back_on_resume(tmp_path):
    """The partial record a stop writes holds the raw sums; resuming continues that window."""
    cfg = apply_overrides(load_preset("toy-ic"), TINY)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "kind": "train", "loss": 1.0}\n')
    m = mon.Monitor(cfg, tmp_path, _Stepper(), opt, torch.device("cpu"), print)
    for k, v in enumerate([0.5, 0.25, 1.0]):
        m.after_step(4 + k, torch.tensor(v), torch.tensor(2 * v))
    m.stopped(7)
    m.close()
    partial = _records(tmp_path)[-1]
    assert partial["partial"] is True and partial["window_steps"] == 3 and partial["loss_sum"] == 1.75
    again = mon.Monitor(cfg, tmp_path, _Stepper(), opt, torch.device("cpu"), print, resume_step=7)
    assert [r["step"] for r in _records(tmp_path)] == [4]  # taken back
    again.after_step(7, torch.tensor(0.25), torch.tensor(0.5))
    again.end_window(8, wait=True)
    again.close()
    last = _records(tmp_path)[-1]
    assert last["step"] == 8 and last["loss"] == pytest.approx(2.0 / 4) and last["grad_norm"] == pytest.approx(1.0)


def test_eval_line_shows_metrics_with_their_floors():
    rec = {
        "kind": "eval",
        "images": 10,
        "n_scales": 20,
        "loss": 0.0123,
        "w2": 0.201,
        "w2_noise_floor": 0.153,
        "sliced_w2": 0.101,
        "seconds": 3.0,
    }
    assert mon.eval_line(1000, rec) == "step 1000  loss 0.0123  w2 0.201 (floor 0.153)  sliced_w2 0.101"


def test_curves_of_a_key_both_kinds_hold_come_from_the_training_records():
    records = [
        {"step": 5, "kind": "train", "loss": 2.0},
        {"step": 10, "kind": "train", "loss": 1.0},
        {"step": 10, "kind": "eval", "loss": 1.5, "w2": 0.3},
    ]
    assert _points(records, "loss") == [(5, 2.0), (10, 1.0)]
    assert _points(records, "w2") == [(10, 0.3)]
    assert _points([{"step": 10, "loss": 1.5}], "loss") == [(10, 1.5)]  # runs written before training records


def test_metrics_png_draws_the_training_curves(tmp_path, monkeypatch):
    import gcflow.training.evaluate as ev

    drawn = {}

    def spy(path, records, keys, floor_keys=None, title=""):
        drawn["keys"] = [k for k in keys if _points(records, k)]

    monkeypatch.setattr(ev, "save_curves", spy)
    res = train(apply_overrides(load_preset("toy-gc"), TINY), tmp_path / "run", progress=False, log=lambda *_: None)
    assert drawn["keys"] == ["loss", "grad_norm", "lr", "n_scales", "gc_fraction", "images_per_s", "w2", "sliced_w2"]
    assert res.summary["step"] == 12


def test_tensorboard_on_without_the_package_is_a_config_error(monkeypatch):
    import gcflow.sinks as sinks

    monkeypatch.setattr(sinks, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install"):
        validate(apply_overrides(load_preset("toy-gc"), ["train.tensorboard=on"]))
    validate(apply_overrides(load_preset("toy-gc"), ["train.tensorboard=auto"]))  # auto: as today


def test_a_run_writes_tensorboard_curves_samples_and_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = apply_overrides(load_preset("toy-gc"), [*TINY, "train.tensorboard=on"])
    train(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr", "train/images_per_s", "eval/w2", "eval/loss"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 6, 8, 12]
    assert [e.step for e in acc.Scalars("eval/w2")] == [6, 12]
    assert [e.step for e in acc.Images("samples")] == [6, 12]
    assert any(t.startswith("config") for t in tags["tensors"])
    evals = [r for r in _records(tmp_path / "run") if r["kind"] == "eval"]
    assert math.isclose(acc.Scalars("eval/w2")[-1].value, evals[-1]["w2"], rel_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_records_never_wait_for_the_device():
    """add + end_window queue their work without a host-device synchronisation; the values still
    equal a synchronous computation once flushed (the pattern of test_fast_step's hot-loop test)."""
    cuda = torch.device("cuda")
    cfg = apply_overrides(load_preset("toy-gc"), TINY)
    opt = torch.optim.SGD([torch.zeros(1, device=cuda, requires_grad=True)], lr=0.5)
    sink = _Sink()
    curves = mon.TrainCurves(cfg, _Stepper(), opt, cuda, sink)
    values = torch.rand(12, 2, generator=torch.Generator().manual_seed(0)).to(cuda)
    curves.add(0, values[0, 0], values[0, 1])  # warm-up: the first pinned buffer and event
    curves.end_window(1, wait=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(1, 12):
            curves.add(k, values[k, 0], values[k, 1])
            if (k + 1) % 4 == 0:
                curves.end_window(k + 1, wait=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    curves.flush()
    assert [s for s, _ in sink.records] == [1, 4, 8, 12]
    host = values.cpu().double()
    for (_step, rec), (lo, hi) in zip(sink.records[1:], [(1, 4), (4, 8), (8, 12)]):
        assert rec["loss"] == pytest.approx(host[lo:hi, 0].mean().item(), rel=1e-6)
        assert rec["grad_norm"] == pytest.approx(host[lo:hi, 1].mean().item(), rel=1e-6)


def test_report_of_a_running_run_takes_final_metrics_from_its_evaluations(tmp_path):
    from gcflow.report import RunRecords, curve_keys, final_metrics

    recs = [
        {"step": 10, "kind": "train", "loss": 0.5, "grad_norm": 3.0, "images_per_s": 900.0},
        {"step": 10, "kind": "eval", "loss": 0.6, "w2": 0.3},
        {"step": 15, "kind": "train", "loss": 0.4, "grad_norm": 2.0, "partial": True, "loss_sum": 2.0},
    ]
    run = RunRecords("r", tmp_path, {}, recs, None)
    assert final_metrics(run) == {"step": 10, "loss": 0.6, "w2": 0.3}
    assert curve_keys([run]) == ["loss", "grad_norm", "images_per_s", "w2"]
    only_train = RunRecords("r", tmp_path, {}, recs[:1], None)
    assert final_metrics(only_train)["loss"] == 0.5
