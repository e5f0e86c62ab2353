"""Issue 12, round two: pre-flight checks before --overwrite, float32 ranges, the final checkpoint before the
final evaluation, one-line errors, no folders left by failed starts, SIGTERM before training, --auto-resume,
--resume RUN --steps N, and the thread count recorded in checkpoints.

Each test proves one line of the README section "What gcflow guarantees".
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import gcflow.training.trainer as trainer_mod
from gcflow.cli import main
from gcflow.sigmas import ict_num_scales
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import ConfigError, apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.run_state import read_run_config
from gcflow.training.trainer import train

TINY = [
    "train.steps=20",
    "train.batch_size=16",
    "train.eval_every=10",
    "train.eval_samples=50",
    "train.checkpoint_every=10",
    "network.width=8",
    "network.depth=1",
    "train.log_every=10",
    "train.device=cpu",
]
QUIET = {"progress": False, "log": lambda *_: None}


def _cfg(*extra: str, preset: str = "toy-gc"):
    return apply_overrides(load_preset(preset), TINY + list(extra))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("gcflow: error: "), (code, err)
    return err[0]


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s", "step_time_ms")}
        for line in lines
        if line.strip()
    ]


def _final(run: Path) -> ckpt.Checkpoint:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(run / "checkpoints")[-1])


def _same(a: ckpt.Checkpoint, b: ckpt.Checkpoint) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 20-step toy-gc run."""
    return train(_cfg(), tmp_path_factory.mktemp("ref") / "run", **QUIET).run_dir


# --- Item 2: everything checkable is checked before --overwrite touches the old run ----------------


def _no_checkpoint_run(tmp: Path) -> Path:
    folder = tmp / "no-ckpt"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"train": {"steps": 5}}))
    return folder


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("frozen-missing", "does not exist"),
        ("frozen-is-the-run", "which --overwrite would delete"),
        ("frozen-no-checkpoint", "has no valid checkpoint"),
        ("frozen-other-shape", "trained on data of shape (2,)"),
        ("teacher-missing", "method.teacher="),
        ("teacher-is-the-run", "which --overwrite would delete"),
        ("songunet-on-toy", "needs square images"),
        ("too-many-levels", "not divisible by 2^"),
    ],
)
def test_bad_options_found_only_by_building_fail_before_overwrite_touches_the_run(
    reference, tmp_path, capsys, case, fragment
):
    run = tmp_path / "old"
    train(_cfg(), run, **QUIET)
    frozen = ["method.gc_mu=0.5", "method.gc_predictor=frozen"]
    digits = [
        "--preset",
        "digits-ic",
        "train.batch_size=16",
        "train.eval_samples=50",
        "train.device=cpu",
        "train.steps=2",
    ]
    args = {
        "frozen-missing": [*TINY, *frozen, f"method.gc_checkpoint={tmp_path / 'nope'}"],
        "frozen-is-the-run": [*TINY, *frozen, f"method.gc_checkpoint={run}"],
        "frozen-no-checkpoint": [*TINY, *frozen, f"method.gc_checkpoint={_no_checkpoint_run(tmp_path)}"],
        "frozen-other-shape": [*digits, *frozen, f"method.gc_checkpoint={reference}"],
        "teacher-missing": [*digits, "method.pairs=cd", f"method.teacher={tmp_path / 'nope'}"],
        "teacher-is-the-run": [*digits, "method.pairs=cd", f"method.teacher={run}"],
        "songunet-on-toy": [*TINY, "network.kind=songunet"],
        "too-many-levels": [*digits, "network.channel_mult=1,2,2,2,2"],
    }[case]
    before = _snapshot(run)
    line = _one_line(capsys, ["train", "--no-progress", "--out", str(run), "--overwrite", *args])
    assert fragment in line, line
    assert _snapshot(run) == before


# --- Item 7: float32 ranges; the final checkpoint survives an evaluation error --------------------


@pytest.mark.parametrize("bad", ["method.sigma_max=1e39", "method.sigma_max=1e20", "method.sigma_min=1e-40"])
def test_noise_levels_that_overflow_float32_are_refused_before_anything_is_written(tmp_path, capsys, bad):
    line = _one_line(capsys, ["train", "--no-progress", "--out", str(tmp_path / "r"), *TINY, bad])
    assert "float32" in line and not (tmp_path / "r").exists()


class _FailingSecondCall:
    """An evaluator that fails on its second call (the final evaluation of a 20-step run, evaluating every 10)."""

    def __init__(self, evaluator) -> None:
        self.evaluator, self.calls = evaluator, 0

    def __call__(self, model, cfg):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("evaluation failed")
        return self.evaluator(model, cfg)

    def __getattr__(self, name):
        return getattr(self.evaluator, name)


def test_an_evaluation_error_never_loses_the_final_checkpoint(reference, tmp_path, monkeypatch):
    real = trainer_mod.build_evaluator
    monkeypatch.setattr(trainer_mod, "build_evaluator", lambda *a, **k: _FailingSecondCall(real(*a, **k)))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(_cfg(), run, **QUIET)
    assert _final(run).meta["step"] == 20  # written before the final evaluation
    monkeypatch.undo()
    # Resuming does the missing evaluation with the same weights and loss window: the same record.
    res = train(_cfg(), run, resume=True, **QUIET)
    assert res.summary["step"] == 20 and _metrics(run) == _metrics(reference)
    assert _same(_final(run), _final(reference))


# --- Item 9: one line, not a traceback; no folders left behind -----------------------------------


@pytest.mark.parametrize("name", ["ring9", ""])
def test_unknown_or_empty_data_name_is_one_line_and_makes_no_folder(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    line = _one_line(capsys, ["train", "--no-progress", f"data.name={name}"])
    assert f"data.name={name!r} is not a dataset" in line and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device", ["meta", "xpu", "mps"] + ([] if torch.cuda.is_available() else ["cuda:0"]))
def test_unsupported_or_absent_devices_are_one_line_before_any_folder(tmp_path, capsys, monkeypatch, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.chdir(tmp_path)
    line = _one_line(capsys, ["train", "--no-progress", "--device", device])
    assert f"train.device={device!r}" in line and not (tmp_path / "runs").exists()


def test_a_finished_run_with_empty_metrics_resumes_and_summarises(reference, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(), run, **QUIET)
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "--no-progress", "--resume", str(run)]) == 0
    assert "finished 20 steps" in capsys.readouterr().out
    assert _metrics(run)[-1] == _metrics(reference)[-1]  # the final record, recomputed


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"train": null}', "group 'train' is null, not an object"),
        ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
        ('"just a string"', "not an object of config groups"),
    ],
)
def test_damaged_config_json_is_reported_precisely(tmp_path, capsys, text, fragment):
    run = tmp_path / "run"
    train(_cfg(), run, **QUIET)
    (run / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="the run folder is damaged|not an object"):
        read_run_config(run)
    assert fragment in _one_line(capsys, ["train", "--no-progress", "--resume", str(run)])


def test_failed_starts_leave_no_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The default runs/<name> folder and runs/ itself, both made by this command: removed again.
    assert "data root" in _one_line(capsys, ["train", "--no-progress", "--preset", "mnist-gc"])
    assert not (tmp_path / "runs").exists()
    # A runs/ that existed before stays; only the new run folder goes.
    (tmp_path / "runs").mkdir()
    _one_line(capsys, ["train", "--no-progress", "--preset", "mnist-gc"])
    assert list((tmp_path / "runs").iterdir()) == []
    # --out a/b/c: the folders the command made are removed, the ones that existed stay.
    (tmp_path / "a").mkdir()
    _one_line(capsys, ["train", "--no-progress", "--preset", "mnist-gc", "--out", "a/b/c"])
    assert (tmp_path / "a").is_dir() and not (tmp_path / "a" / "b").exists()


def test_default_run_folder_is_unique_and_named_after_the_changes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-progress", "--steps", "3", "--seed", "3", "train.eval_samples=50"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("toy-gc-") and "steps3-seed3-" in folder.name and (folder / "summary.json").exists()
    with pytest.raises(SystemExit):
        main(["train", "--out", ""])
    assert "empty --out path" in capsys.readouterr().err


def test_sigterm_before_training_exits_130_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    def terminated(*_a, **_k):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` or a cluster's preemption during start-up
        raise AssertionError("SIGTERM did not stop the start-up")

    monkeypatch.setattr(trainer_mod, "build_source", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--no-progress", "--out", str(tmp_path / "r"), *TINY]) == 130
    assert capsys.readouterr().err.strip() == "gcflow: interrupted"
    assert not (tmp_path / "r").exists() and signal.getsignal(signal.SIGTERM) == before


# --- Item 10: --auto-resume --------------------------------------------------------------------


def _auto(run: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "--auto-resume", "--out", str(run), *TINY, *extra]


def test_auto_resume_starts_resumes_or_refuses(reference, tmp_path, capsys):
    run = tmp_path / "run"
    # No run yet: start it. (A half-finished run, simulated by the newest checkpoint removed.)
    assert main(_auto(run)) == 0
    (run / "checkpoints" / "ckpt-00000020.safetensors").unlink()
    assert main(_auto(run)) == 0
    assert "resuming" in capsys.readouterr().out and _same(_final(run), _final(reference))
    before = _snapshot(run)
    line = _one_line(capsys, _auto(run, "method.gc_mu=0.3"))
    assert "holds a run of another config (method.gc_mu=0.5 in the run, 0.3 now)" in line
    assert _snapshot(run) == before
    assert "--auto-resume needs --out" in _one_line(capsys, ["train", "--auto-resume"])


@pytest.mark.parametrize("left", ["lock", "temp-config", "config-no-checkpoint", "empty"])
def test_auto_resume_after_a_kill_during_start_up(reference, tmp_path, capsys, left):
    """What a kill during start-up can leave (the atomic writer never leaves a half config.json, only its
    hidden temporary file): --auto-resume starts or resumes, and the result is the uninterrupted run's."""
    run = tmp_path / "run"
    run.mkdir()
    if left == "lock":
        (run / ".lock").write_text("999999999")
    elif left == "temp-config":
        (run / ".lock").write_text("")
        (run / ".config.json.tmp-999999999").write_text('{"train": {"st')
    elif left == "config-no-checkpoint":
        train(_cfg(), run, **QUIET)
        for p in [*(run / "checkpoints").iterdir(), run / "summary.json"]:
            p.unlink()
        (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n{"ste')  # a torn line too
    assert main(_auto(run)) == 0, capsys.readouterr().err
    assert _same(_final(run), _final(reference)) and _metrics(run) == _metrics(reference)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


# --- Item 11: --resume RUN --steps N --------------------------------------------------------------


def test_resume_with_steps_extends_a_finished_run_and_says_how_the_curriculum_changes(reference, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(), run, **QUIET)
    assert main(["train", "--no-progress", "--resume", str(run), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    m = load_preset("toy-gc").method
    before, after = ict_num_scales(19, 20, m.s0, m.s1), ict_num_scales(20, 40, m.s0, m.s1)
    assert "train.steps 20 -> 40 from step 20" in out and f"N = {after} noise intervals, was {before}" in out
    assert read_run_config(run).train.steps == 40 and _final(run).meta["step"] == 40
    (event,) = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert (event["event"], event["step"], event["steps_from"], event["steps_to"]) == ("extend", 20, 20, 40)
    records = [r for r in _metrics(run) if r.get("kind") != "train"]  # the evaluations
    reference_records = [r for r in _metrics(reference) if r.get("kind") != "train"]
    assert [r["step"] for r in records] == [10, 20, 30, 40] and records[:2] == reference_records
    assert records[-1]["n_scales"] == ict_num_scales(39, 40, m.s0, m.s1)  # the 40-step schedule after step 20
    # Shortening below what is trained is refused in one line, changing nothing.
    snap = _snapshot(run)
    assert "has trained 40 steps already" in _one_line(capsys, ["train", "--resume", str(run), "--steps", "30"])
    assert _snapshot(run) == snap


def test_an_extension_killed_before_its_first_checkpoint_resumes_and_loads(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg()
    train(cfg, run, **QUIET)
    from gcflow.training.run_state import extend_run, load_run

    extend_run(run, cfg, 30, lambda *_: None)  # what --steps 30 does before training; then a kill

    assert load_run(run).config.train.steps == 20  # the checkpoint still loads (sample, export)
    res = train(cfg, run, resume=True, **QUIET)
    assert res.summary["step"] == 30 and _final(run).meta["config"]["train"]["steps"] == 30


# --- Item 13: the CPU thread count ---------------------------------------------------------------


def test_checkpoints_record_the_thread_count_and_resume_warns_on_another(tmp_path):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    cfg = _cfg("train.steps=10", "train.threads=0")
    train(cfg, run, **QUIET)
    assert _final(run).meta["threads"] == threads
    lines: list[str] = []
    torch.set_num_threads(threads + 1)
    try:
        train(cfg, run, resume=True, progress=False, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    warning = [line for line in lines if "CPU threads" in line]
    assert len(warning) == 1 and f"written with {threads} CPU threads, this process uses {threads + 1}" in warning[0]
    # The same count: no warning.
    lines.clear()
    train(cfg, run, resume=True, progress=False, log=lines.append)
    assert not [line for line in lines if "CPU threads" in line]


def test_a_non_integer_thread_count_makes_a_checkpoint_unverifiable():
    meta = {
        "step": 1,
        "checksum": "0" * 64,
        "meta_checksum": "0" * 64,
        "config": {},
        "data_shape": [2],
        "num_classes": 0,
        "loss_window": None,
        "data": {},
        "optimizer": {"param_groups": [], "scalars": {}},
    }
    ckpt.validate_meta(dict(meta, threads=4))
    for bad in ("4", 0, -1, 2.5, True):
        with pytest.raises(ValueError, match="threads"):
            ckpt.validate_meta(dict(meta, threads=bad))


@pytest.mark.parametrize("error", [FloatingPointError("overflow in the loss"), ValueError("W2 is nan")])
def test_a_diverged_experiment_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch, error):
    from gcflow import experiments

    description, real = experiments.EXPERIMENTS["theorem1"]

    def diverged(options, out):  # the same options, then a failure
        raise error

    diverged.__annotations__ = {"options": experiments.options_type(real), "out": Path}

    monkeypatch.setitem(experiments.EXPERIMENTS, "theorem1", (description, diverged))
    monkeypatch.chdir(tmp_path)
    line = _one_line(capsys, ["experiment", "theorem1"])
    assert "experiment theorem1 failed" in line and "no results.json" in line and str(error) in line
    assert not (tmp_path / "runs").exists()
