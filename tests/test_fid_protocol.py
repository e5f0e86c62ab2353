"""`gcflow evaluate --fid-protocol`: gcflow's rounding against the released code's clip-and-truncate."""

import json

import pytest
import torch

from gcflow.cli import main
from gcflow.data import to_uint8, to_unit_range
from gcflow.metrics.protocol import MetricError, quantise_samples


def test_gcflow_protocol_inverts_the_data_scaling():
    k = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(quantise_samples(to_unit_range(k)), k)
    x = torch.linspace(-1.3, 1.3, 1001).view(1, 1, 7, 143)
    assert torch.equal(quantise_samples(x, "gcflow"), to_uint8(x))


def test_released_protocol_clips_then_truncates():
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 3.0]).view(1, 1, 2, 4)
    got = quantise_samples(x, "released").flatten().tolist()
    # floor(255·(x + 1)/2) after clipping: 0.0 -> 127 (rounding gives 128), 0.5 -> 191 (191.25).
    assert got == [0, 0, 0, 127, 191, 254, 255, 255]
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    diff = quantise_samples(x, "gcflow").int() - quantise_samples(x, "released").int()
    assert set(diff.unique().tolist()) <= {0, 1} and 0.4 < diff.double().mean() < 0.6  # half a level on average
    with pytest.raises(MetricError, match="released"):
        quantise_samples(x, "minmax")


def test_evaluate_records_the_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("GCFLOW_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "digits-gc",
                "--out",
                str(run),
                "--no-progress",
                "network.channels=8",
                "train.steps=2",
                "train.batch_size=16",
                "train.eval_samples=32",
                "train.checkpoint_every=2",
            ]
        )
        == 0
    )
    ref = tmp_path / "digits-ref.npz"
    assert main(["fid-ref", "digits", "--out", str(ref)]) == 0
    results = {}
    for protocol in ("gcflow", "released"):
        out = tmp_path / f"{protocol}.json"
        assert (
            main(
                [
                    "evaluate",
                    str(run),
                    "--ref",
                    str(ref),
                    "--num-samples",
                    "64",
                    "--draws",
                    "1",
                    "--kid-subsets",
                    "0",
                    "--fid-protocol",
                    protocol,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        results[protocol] = json.loads(out.read_text())
        assert results[protocol]["fid_protocol"] == protocol
    assert results["gcflow"]["fid_mean"] != results["released"]["fid_mean"]  # same samples, other quantisation
