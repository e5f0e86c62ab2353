"""Steering configuration from the command line (issue 14, items 4-7): --help with the preset's values,
presets --show with overrides, train --config, conflicting spellings, run-folder names."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from gcflow.cli import main
from gcflow.commands import train as train_cmd
from gcflow.training.config import ConfigError, check_overrides_agree, describe_options
from gcflow.training.run_dir import default_run_dir

TINY = [
    "train.steps=4",
    "train.batch_size=16",
    "train.eval_samples=50",
    "train.eval_every=0",
    "train.checkpoint_every=4",
    "network.width=8",
    "network.depth=1",
    "train.device=cpu",
    "train.tensorboard=off",
]


def _one_line_error(capsys, code: int) -> str:
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gcflow: error: "), out.err
    return lines[0]


def _option_value(help_text: str, key: str) -> str:
    """The value column of `key` in the options table of --help."""
    (line,) = [line for line in help_text.splitlines() if line.split()[:1] == [key]]
    return line.split()[2]


@pytest.mark.parametrize(
    "argv", [["train", "--help"], ["train", "--preset", "toy-gc", "--help"], ["train", "-h", "--preset", "toy-gc"]]
)
def test_help_shows_the_preset_s_values_not_the_library_defaults(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    # toy-gc (the default job): adam, 1e-3, 3000 steps, mu 0.5; the library defaults are lion, 1e-4, 4000, 0.
    assert [_option_value(out, k) for k in ("optim.name", "optim.lr", "train.steps", "method.gc_mu")] == [
        "adam",
        "0.001",
        "3000",
        "0.5",
    ]
    assert "values of preset toy-gc" in out
    assert re.search(r"--steps STEPS\s+shorthand for train.steps=N[^(]*\(now 3000\)", out, re.S)
    assert [_option_value(describe_options(), k) for k in ("optim.name", "train.steps")] == ["lion", "4000"]


def test_help_shows_overrides_and_config_files(capsys, tmp_path):
    assert main(["train", "--preset", "toy-ic", "--steps", "7", "optim.lr=0.02", "--help"]) == 0
    out = capsys.readouterr().out
    assert _option_value(out, "train.steps") == "7" and _option_value(out, "optim.lr") == "0.02"
    (tmp_path / "config.json").write_text(json.dumps({"train": {"steps": 11}}))
    assert main(["train", "--config", str(tmp_path / "config.json"), "--help"]) == 0
    assert _option_value(capsys.readouterr().out, "train.steps") == "11"


def test_presets_show_previews_overrides(capsys):
    assert main(["presets", "--show", "toy-ic", "method.gc_mu=0.3", "train.seed=2"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    assert shown["method"]["gc_mu"] == 0.3 and shown["train"]["seed"] == 2 and shown["optim"]["name"] == "adam"
    assert "not of the form" in _one_line_error(capsys, main(["presets", "--show", "toy-ic", "gc_mu"]))
    assert "outside [0, 1]" in _one_line_error(capsys, main(["presets", "--show", "toy-ic", "method.gc_mu=3"]))
    assert "need a preset" in _one_line_error(capsys, main(["presets", "train.seed=2"]))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--mu", "0.3", "method.gc_mu=0.7"], "method.gc_mu is given twice with different values"),
        (["--steps", "10", "train.steps=20"], "train.steps is given twice with different values"),
        (["train.seed=1", "train.seed=2"], "train.seed is given twice with different values"),
        (["--device", "cpu", "train.device=cuda"], "train.device is given twice"),
    ],
)
def test_conflicting_spellings_are_one_line_errors(capsys, tmp_path, argv, fragment):
    code = main(["train", *argv, "--out", str(tmp_path / "run")])
    line = _one_line_error(capsys, code)
    assert fragment in line and "keep one" in line
    assert not (tmp_path / "run").exists()


def test_the_same_value_spelled_twice_is_no_conflict():
    check_overrides_agree([("--mu 0.5", "method.gc_mu=0.5"), ("method.gc_mu=.50", "method.gc_mu=.50")])
    check_overrides_agree([("x", "train.steps=5"), ("y", "method.gc_mu=0.1")])
    with pytest.raises(ConfigError, match=r"\(--steps 5 and train.steps=6\)"):
        check_overrides_agree([("--steps 5", "train.steps=5"), ("train.steps=6", "train.steps=6")])


def test_config_reruns_an_earlier_run_with_overrides(capsys, tmp_path):
    first = tmp_path / "toy-ic-seed3-20250101-120000-ab12"
    assert main(["train", "--no-progress", "--preset", "toy-ic", *TINY, "train.seed=3", "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert (
        main(["train", "--no-progress", "--config", str(first / "config.json"), "train.seed=4", "--out", str(again)])
        == 0
    )
    a, b = (json.loads((p / "config.json").read_text()) for p in (first, again))
    assert b["train"].pop("seed") == 4 and a["train"].pop("seed") == 3 and a == b
    # A run folder may be named instead of its config.json; the same config trains the same numbers.
    same = tmp_path / "same"
    assert main(["train", "--no-progress", "--config", str(first), "--out", str(same)]) == 0
    w2 = [json.loads((p / "summary.json").read_text())["w2"] for p in (first, same)]
    assert w2[0] == w2[1]


def test_config_with_preset_or_a_missing_file_is_one_line(capsys, tmp_path):
    line = _one_line_error(capsys, main(["train", "--config", str(tmp_path / "c.json"), "--preset", "toy-gc"]))
    assert "--config and --preset cannot be combined" in line
    assert "no such file" in _one_line_error(capsys, main(["train", "--config", str(tmp_path / "c.json")]))
    (tmp_path / "c.json").write_text("{not json")
    line = _one_line_error(capsys, main(["train", "--config", str(tmp_path / "c.json")]))
    assert "not a readable gcflow config" in line


def _args(**kw) -> argparse.Namespace:
    base = {"overrides": [], "preset": None, "config": None, "steps": None, "mu": None, "seed": None, "device": None}
    return argparse.Namespace(**{**base, **kw})


def test_run_folder_names_show_the_preset_and_the_changed_overrides(tmp_path):
    args = _args(preset="toy-gc", mu=0.3, seed=1, overrides=["train.steps=3000"])  # 3000 is toy-gc's own value
    cfg, overrides = train_cmd.resolve_config(args)
    assert cfg.method.gc_mu == 0.3 and args.preset == "toy-gc"
    name = default_run_dir(tmp_path, args.preset, overrides).name
    assert re.fullmatch(r"toy-gc-mu0\.3-seed1-\d{8}-\d{6}-[0-9a-f]{4}", name), name
    # --config: named after the earlier run, without its time stamp.
    run = tmp_path / "toy-gc-mu0.3-20250101-120000-ab12"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": {"gc_mu": 0.3}}))
    args = _args(config=run / "config.json", seed=2)
    _, overrides = train_cmd.resolve_config(args)
    assert args.preset == "toy-gc-mu0.3"
    name = default_run_dir(tmp_path, args.preset, overrides).name
    assert re.fullmatch(r"toy-gc-mu0\.3-seed2-\d{8}-\d{6}-[0-9a-f]{4}", name), name
    assert train_cmd.resolve_config(_args())[0].method.gc_mu == 0.5  # no --preset: the default job, toy-gc
