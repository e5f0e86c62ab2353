"""Metric sinks: metrics.jsonl records, fan-out, and TensorBoard events (when the tb extra is installed)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from gcflow import sinks
from gcflow.sinks import JsonlSink, MetricSink, SinkError, Sinks, open_sinks


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_records_are_flushed_appended_and_strict_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.scalars(10, {"loss": 0.5, "lr": 1e-3, "n_scales": 20})
    assert read_jsonl(path) == [{"step": 10, "loss": 0.5, "lr": 1e-3, "n_scales": 20}]  # readable while open
    sink.scalars(20, {"loss": math.nan, "grad_norm": math.inf, "w2": None})
    sink.image(20, "samples", np.zeros((4, 4, 3), np.uint8))  # ignored: samples.png holds it
    sink.close()
    JsonlSink(path).scalars(30, {"loss": 0.25})  # a resumed run appends
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_jsonl(path)[1:] == [
        {"step": 20, "loss": None, "grad_norm": None, "w2": None},
        {"step": 30, "loss": 0.25},
    ]


class Recorder:
    def __init__(self):
        self.calls = []

    def scalars(self, step, values):
        self.calls.append(("scalars", step, dict(values)))

    def image(self, step, name, grid):
        self.calls.append(("image", step, name, grid.shape))

    def text(self, name, text):
        self.calls.append(("text", name, text))

    def close(self):
        self.calls.append(("close",))


def test_sinks_fan_out_every_call_in_order():
    a, b = Recorder(), Recorder()
    assert isinstance(a, MetricSink)
    s = Sinks([a, b])
    s.text("config", "{}")
    s.scalars(5, {"loss": 1.0})
    s.image(5, "samples", np.zeros((2, 3, 1), np.uint8))
    s.close()
    want = [("text", "config", "{}"), ("scalars", 5, {"loss": 1.0}), ("image", 5, "samples", (2, 3, 1)), ("close",)]
    assert a.calls == b.calls == want


def test_open_sinks_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "tensorboard_available", lambda: False)
    for mode in ("auto", "off"):
        s = open_sinks(tmp_path / mode, tensorboard=mode)
        assert [type(x) for x in s.sinks] == [JsonlSink] and not (tmp_path / mode / "tb").exists()
        s.close()
    with pytest.raises(SinkError, match=r"pip install 'gcflow\[tb\]'"):
        open_sinks(tmp_path / "on", tensorboard="on")
    with pytest.raises(SinkError, match="one of auto, on, off"):
        open_sinks(tmp_path, tensorboard="yes")


def _events(log_dir):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out = []
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        out += [e for e in EventFileLoader(str(f)).Load() if e.HasField("summary")]
    return out


def test_tensorboard_sink_writes_scalars_images_and_text(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.util import tensor_util

    s = open_sinks(tmp_path, tensorboard="auto")
    assert (tmp_path / "tb").is_dir()
    s.text("config", json.dumps({"method": {"gc_mu": 0.5}}, indent=2))
    s.scalars(10, {"loss": 0.5, "w2": None})
    s.scalars(20, {"loss": 0.25})
    grid = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    s.image(20, "samples", grid)
    with pytest.raises(ValueError, match="uint8"):
        s.image(20, "samples", grid.astype(np.float32))
    s.close()
    values = {}
    for e in _events(tmp_path / "tb"):
        for v in e.summary.value:
            if v.HasField("simple_value"):
                value = v.simple_value
            elif v.HasField("image"):
                value = v.image.encoded_image_string
            else:  # a tensor summary: text, a number, or [width, height, png] (newer writers)
                value = list(tensor_util.make_ndarray(v.tensor).ravel())
            values.setdefault(v.tag, []).append((e.step, value))
    assert [(st, float(np.ravel(x)[0])) for st, x in values["loss"]] == [(10, 0.5), (20, 0.25)] and "w2" not in values
    ((st, img),) = values["samples"]
    png = img if isinstance(img, bytes) else img[-1]
    assert st == 20 and Image.open(io.BytesIO(png)).size == (3, 2)  # width, height of the (2, 3, 3) grid
    (tag,) = [t for t in values if t.startswith("config")]
    assert b'"gc_mu": 0.5' in values[tag][0][1][0]
