"""`gcflow report RUN [RUN ...]`: config diff, curves overlaid with labelled axes, final metrics table."""

from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from gcflow import plotting
from gcflow.commands import report as report_cmd
from gcflow.report import ReportError, config_diff, curve_keys, read_run, write_report

CONFIG = {
    "method": {"gc_mu": 0.5, "coupling": "independent"},
    "optim": {"lr": 1e-3, "betas": [0.9, 0.999]},
    "train": {"seed": 0, "steps": 40},
}


def make_run(path, config, records, summary=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def records(loss0, w2):
    train = [
        {"step": s, "loss": loss0 / s, "grad_norm": 2.0, "lr": 1e-3, "n_scales": 10, "gc_fraction": 0.5}
        for s in (10, 20, 30, 40)
    ]
    evals = [{"step": s, "w2": w2, "w2_noise_floor": 0.15, "seconds": 1.0} for s in (20, 40)]
    return sorted(train + evals, key=lambda r: r["step"])


@pytest.fixture
def two_runs(tmp_path):
    other = json.loads(json.dumps(CONFIG))
    other["method"]["gc_mu"], other["train"]["seed"] = 0.0, 1
    other["method"]["new_field"] = "x"  # a setting only one run has
    a = make_run(
        tmp_path / "toy-gc", CONFIG, records(8.0, 0.2), summary={"step": 40, "w2": 0.2, "run_dir": "x", "config": {}}
    )
    b = make_run(tmp_path / "toy-ic", other, records(9.0, 0.3))  # still running: no summary.json
    return a, b


def test_config_diff_keeps_only_the_settings_that_differ():
    other = {"method": {"gc_mu": 0.0, "coupling": "independent"}, "optim": {"lr": 1e-3, "betas": [0.9, 0.99]}}
    assert config_diff([CONFIG, other]) == {
        "method.gc_mu": [0.5, 0.0],
        "optim.betas": [[0.9, 0.999], [0.9, 0.99]],
        "train.seed": [0, None],
        "train.steps": [40, None],
    }
    assert config_diff([CONFIG, CONFIG]) == {}


def test_report_compares_two_runs(two_runs, tmp_path):
    md = write_report(two_runs, tmp_path / "out")
    text = md.read_text()
    assert "| `method.gc_mu` | 0.5 | 0 |" in text and "| `train.seed` | 0 | 1 |" in text
    assert "| `method.new_field` | – | x |" in text and "optim.lr" not in text  # equal settings are left out
    assert "![" in text and "(report.png)" in text
    # Final metrics: the finished run's summary.json; the running one's newest values.
    assert "| `w2`: exact W2 (data units) | 0.2 | 0.3 |" in text
    assert "| `grad_norm`: gradient norm (L2, before clipping) | – | 2 |" in text and "run_dir" not in text
    with Image.open(tmp_path / "out" / "report.png") as im:
        assert im.size[0] > 1000 and im.size[1] > 300  # 6 panels: 4 columns, 2 rows


def test_curves_are_overlaid_with_labelled_axes(two_runs, monkeypatch, tmp_path):
    runs = [read_run(p) for p in two_runs]
    keys = curve_keys(runs)
    assert keys == ["loss", "grad_norm", "lr", "n_scales", "gc_fraction", "w2"]  # no step, seconds or floors
    figs = []
    monkeypatch.setattr(plotting.plt, "close", figs.append)
    drawn = plotting.save_overlaid_curves(
        tmp_path / "c.png", {r.label: r.records for r in runs}, keys + ["fid"], {"w2": "w2_noise_floor"}
    )
    assert drawn == keys  # fid: recorded by no run
    axes = {ax.get_title(): ax for ax in figs[0].axes if ax.get_title()}
    assert axes["loss"].get_xlabel() == "training step" and axes["lr"].get_ylabel() == "learning rate"
    assert axes["w2"].get_ylabel() == "exact W2 (data units)"
    assert [line.get_label() for line in axes["loss"].get_lines()] == ["toy-gc", "toy-ic"]
    ys = axes["loss"].get_lines()[1].get_ydata()
    assert list(ys) == pytest.approx([9.0 / s for s in (10, 20, 30, 40)])
    assert axes["loss"].get_yscale() == "linear" and len(axes["w2"].get_lines()) == 4  # 2 curves + 2 floors


def cli(*argv: str) -> int:
    p = argparse.ArgumentParser(prog="gcflow report")
    report_cmd.add_arguments(p)
    return report_cmd.run(p.parse_args(list(argv)))


def test_cli_one_run_writes_into_the_run_and_never_overwrites(two_runs, capsys):
    a, _ = two_runs
    assert cli(str(a)) == 0
    assert (a / "report.md").is_file() and "One run" in (a / "report.md").read_text()
    assert cli(str(a)) == 2
    err = capsys.readouterr().err
    assert err.startswith("gcflow: error:") and "--overwrite" in err and err.count("\n") == 1
    assert cli(str(a), "--overwrite") == 0


def test_bad_run_folders_are_one_line_errors(two_runs, tmp_path, capsys):
    assert cli(str(tmp_path / "nothing"), "--out", str(tmp_path / "o")) == 2
    assert "not a gcflow run folder" in capsys.readouterr().err
    a, _ = two_runs
    with open(a / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 50, "lo')  # a run writing its next line: ignored
    assert len(read_run(a).records) == 6
    (a / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ReportError, match="line 2 is not JSON"):
        read_run(a)
