"""Issue 15's image studies: verdicts from per-seed curves, run caching and resuming, and a tiny real study."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from gcflow.experiments import image_analysis as ia
from gcflow.experiments import image_runs, images_mu
from gcflow.experiments.image_runs import RunSpec, StudyPaths, execute, pending_specs
from gcflow.training.run_dir import RunDirError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

STEPS = [100, 200, 300, 400]


def record(fd: list[float], cpu: float = 40.0, name: str = "r", sw: float = 0.1) -> dict:
    """A run record as image_runs writes it, with a given FD curve at STEPS."""
    return {
        "spec": {"name": name},
        "steps": list(STEPS),
        "classifier_fd": fd,
        "pixel_sliced_w2": [sw] * len(fd),
        "cpu_seconds": cpu,
        "floors": {"classifier_fd_noise_floor": 5.0},
    }


def seeds(base: list[float], shift: float = 0.0, cpu: float = 40.0) -> list[dict]:
    """Three seeds of one method: the curve `base` + shift, with a small seed-to-seed wobble."""
    return [record([v + shift + 0.1 * k for v in base], cpu) for k in (-1, 0, 1)]


def test_curve_numbers() -> None:
    assert ia.final_value([9, 8, 4, 6]) == 5.0  # mean of the last two evaluations
    assert ia.steps_to_reach(STEPS, [9, 7, 5, 4], 5.0) == 300
    assert math.isinf(ia.steps_to_reach(STEPS, [9, 7, 6, 6], 5.0))
    assert ia.censor([300.0, math.inf], 500.0) == [300.0, 500.0]
    assert ia.value_at([0, 10, 20], [4.0, 2.0, 1.0], 15) == pytest.approx(1.5)
    assert ia.value_at([0, 10], [4.0, 2.0], 99) == 2.0  # clipped to the curve's end
    assert ia.smooth([3.0, 6.0, 9.0, None]) == [4.5, 6.0, 7.5, 9.0]
    steps = [100 * k for k in range(1, 8)]
    # Smoothed: 60, 44, 20.7, 11, 10, 10.2, 9.75 -> within 10 % of 9.75 from step 500 on. Unsmoothed, the
    # single low evaluation (9) would push it to the last step (10.5 > 1.1 * 9).
    assert ia.flattening_step(steps, [80.0, 40.0, 12.0, 10.0, 11.0, 9.0, 10.5]) == 500
    assert ia.flattening_step(steps, [80.0, 40.0, 30.0, 20.0, 15.0, 12.0, 10.0]) == 700  # still falling
    # The reports' note reads the seed-mean curve (a missing evaluation of one seed is skipped, not zero).
    flat = [
        {"steps": steps, "classifier_fd": c} for c in ([80.0, 40, 12, 10, 11, 9, 10.5], [80.0, 40, 12, 10, 11, 9, None])
    ]
    assert "from step 500 of 700 on." in ia.flattening_note(flat, "IC")
    falling = [{"steps": steps, "classifier_fd": [80.0, 40, 30, 20, 15, 12, 10]}]
    assert ia.flattening_note(falling, "IC").endswith(
        "from step 700 of 700 on: still falling at the end of the budget."
    )
    assert ia.combine(["agrees", "agrees"]) == "agrees"
    assert ia.combine(["agrees", "inconclusive"]) == "partly"
    assert ia.combine(["inconclusive", "disagrees"]) == "disagrees"


def test_mu_verdicts_follow_the_seed_noise() -> None:
    ic = [20.0, 12.0, 10.0, 10.0]
    s = ia.summarise_all(
        {
            "IC": seeds(ic),
            "GC μ=0.5": seeds([14.0, 9.0, 8.0, 8.0], cpu=50.0),  # faster and better, but 25 % more CPU per step
            "GC μ=0.3": seeds(ic, shift=0.05),  # the same as IC within the seed noise
            "OT": seeds(ic, shift=3.0),  # worse
            "GC μ=1": [record([10.0, 9.0, 12.0, 14.0])] * 2 + [record([10.2, 9.2, 12.0, 14.2])],  # fast, then degrades
        }
    )
    gc = s["GC μ=0.5"]
    assert gc["target"] == pytest.approx(10.0) and gc["steps_to_target"] == 200
    # IC's own seeds straddle their mean: the one ending at 10.1 never reaches 10.0 (censored at 500).
    assert s["IC"]["per_seed"]["steps_to_target"] == [300, 300, 500] and s["IC"]["reached"] == 2
    assert s["OT"]["reached"] == 0 and s["OT"]["steps_to_target"] == 500  # censored at budget + one evaluation
    # Equal compute: GC's 40 s of CPU buy it 320 steps; interpolated between 8 (step 300) and 8 (step 400).
    assert gc["at_cpu_budget"] == pytest.approx(8.0)
    verdicts = {c.claim: c.verdict for c in ia.mu_claims(s)}
    assert verdicts["GC with 0.3 ≤ μ ≤ 0.7 ends with better samples than IC (lower final FD)."] == "partly"
    assert verdicts["Minibatch OT improves on IC (paper Table 1)."] == "disagrees"
    assert verdicts[f"μ = 1 is fastest early (lowest FD at step {s['IC']['early_step']})."] == "agrees"
    assert verdicts["…and then degrades (its FD rises from its best value more than IC's does)."] == "agrees"
    table = ia.table(s)
    assert len(table) == 2 + len(s) and "(0/3 reached)" in table[[k for k in s].index("OT") + 2]
    assert all("over 3 seeds" in c.measured for c in ia.mu_claims(s))
    # A partial study (OT with one seed so far) states the one-seed rule its verdicts then follow.
    partial = ia.summarise_all({"IC": seeds(ic), "GC μ=0.5": seeds([14.0, 9.0, 8.0, 8.0]), "OT": seeds(ic)[:1]})
    assert all("one seed" in c.measured for c in ia.mu_claims(partial))


def test_ablation_verdicts() -> None:
    ic = [20.0, 12.0, 10.0, 10.0]
    s = ia.summarise_all(
        {
            "IC": seeds(ic),
            "GC μ=0.5": seeds(ic, shift=-2.0),
            "GC μ=0.5 online": seeds(ic, shift=-2.02),
            "GC μ=0.5 dropout 0.1": seeds(ic, shift=1.0),
            "frozen IC 20%": seeds([9.0, 9.0, 9.0, 9.0]),
            "frozen IC 100%": seeds([8.0, 7.0, 7.0, 7.0]),
        }
    )
    verdicts = [c.verdict for c in ia.ablation_claims(s, 0.5)]
    assert verdicts == ["inconclusive", "agrees", "agrees", "agrees"]


def test_run_spec_digest_and_dependencies() -> None:
    a = RunSpec("gc1-frozen-seed0", "frozen", "digits-gc", ("method.gc_checkpoint=@ic-seed0:200",), 0)
    assert a.needs() == [("ic-seed0", 200)]
    assert a.digest() != RunSpec(a.name, a.label, "digits-gc", ("train.steps=5",), 0).digest()
    assert a.digest() != RunSpec(a.name, a.label, "digits-ic", a.overrides, 0).digest()  # the preset's content counts
    assert a.digest() != RunSpec(a.name, a.label, a.preset, a.overrides, 1).digest()
    # Where the data lie is not what the run is: the same Fashion-MNIST run from two folders shares a digest
    # (the official files are MD5-checked when loaded); the dataset's name still counts.
    f = RunSpec("ic-seed0", "IC", "fashion14-ic", ("data.root=/a/fashion",), 0)
    assert f.digest() == RunSpec(f.name, f.label, f.preset, ("data.root=../b",), 0).digest()
    assert f.digest() == RunSpec(f.name, f.label, f.preset, (), 0).digest()
    assert f.digest() != RunSpec(f.name, f.label, f.preset, ("data.name=mnist",), 0).digest()
    # ... but for a dataset without a name (an image folder, an .npz file) the folder is the data.
    own = RunSpec("ic-seed0", "IC", "fashion14-ic", ("data.name=folder", "data.root=/a"), 0)
    assert own.digest() != RunSpec(own.name, own.label, own.preset, ("data.name=folder", "data.root=/b"), 0).digest()
    paths = StudyPaths(Path("/c"), Path("/w"))
    expected = "method.gc_checkpoint=/w/ic-seed0/checkpoints/ckpt-00000200.safetensors"
    assert image_runs.resolve_overrides(a, paths) == [expected]


def _fake_train(calls: list[str], stop_at: str | None = None):
    """A stand-in for image_runs.train_one: writes a record (and the checkpoints it keeps) without training."""

    def train_one(spec: RunSpec, paths: StudyPaths) -> dict:
        if spec.name == stop_at:
            raise KeyboardInterrupt
        calls.append(spec.name)
        for step in spec.keep_steps:
            ckpt = paths.checkpoint(spec.name, step)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(b"x")
        rec = {**record([10.0, 9.0, 8.0, 8.0], name=spec.name), "spec": {"name": spec.name}}
        paths.cache.mkdir(parents=True, exist_ok=True)
        paths.json_path(spec).write_text(json.dumps(rec))
        return rec

    return train_one


def test_interrupted_study_resumes_from_its_cached_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    o = images_mu.AblationOptions(steps=400, eval_every=100, seeds=(0,), workers=1)
    specs = images_mu.plan_ablations(o)
    assert [s.name for s in specs] == [
        "ic-seed0",
        "gc0.5-seed0",
        "gc0.5-online-seed0",
        "gc0.5-dropout0.1-seed0",
        "gc1-frozen100-seed0",
        "gc1-frozen400-seed0",
    ]
    assert "network.dropout=0.1" in specs[3].overrides and specs[0].keep_steps == (100, 400)
    paths = StudyPaths(tmp_path / "cache", tmp_path / "work")
    monkeypatch.setattr(image_runs, "warm_up", lambda spec, paths: None)
    calls: list[str] = []
    monkeypatch.setattr(image_runs, "train_one", _fake_train(calls, stop_at="gc0.5-online-seed0"))
    with pytest.raises(KeyboardInterrupt):
        execute(specs, paths, workers=1)
    assert calls == ["ic-seed0", "gc0.5-seed0"]
    calls.clear()
    monkeypatch.setattr(image_runs, "train_one", _fake_train(calls))
    records = execute(specs, paths, workers=1)
    assert calls == ["gc0.5-online-seed0", "gc0.5-dropout0.1-seed0", "gc1-frozen100-seed0", "gc1-frozen400-seed0"]
    assert set(records) == {s.name for s in specs}
    # The frozen runs recorded which IC run they loaded; the IC folder is marked with its spec's digest.
    frozen_json = paths.json_path(specs[5])
    frozen = json.loads(frozen_json.read_text())
    assert frozen["needs"] == {"ic-seed0": specs[0].digest()} and paths.holds(specs[0])
    frozen_json.unlink()
    assert [s.name for s in pending_specs(specs, paths)] == ["gc1-frozen400-seed0"]
    # A folder that another spec of the same name trained last (e.g. a different IC, since replaced) is not
    # loaded from: the IC run trains again before the frozen run that needs it.
    mark = tmp_path / "work" / "ic-seed0" / image_runs.MARK
    mark.write_text("0123456789ab\n")
    assert [s.name for s in pending_specs(specs, paths)] == ["ic-seed0", "gc1-frozen400-seed0"]
    mark.write_text(specs[0].digest() + "\n")
    # A cached run trained from another version of the run it loads is stale and trains again.
    frozen_json.write_text(json.dumps({**frozen, "needs": {"ic-seed0": "0123456789ab"}}))
    assert [s.name for s in pending_specs(specs, paths)] == ["gc1-frozen400-seed0"]
    frozen_json.write_text(json.dumps(frozen))
    assert pending_specs(specs, paths) == []
    # A fresh clone has the JSON but not the run folders: only the IC run whose checkpoints the frozen
    # runs load is retrained, and only if a frozen run is still to train.
    (tmp_path / "work" / "ic-seed0" / "checkpoints" / "ckpt-00000100.safetensors").unlink()
    assert pending_specs(specs, paths) == []
    paths.json_path(specs[4]).unlink()
    assert [s.name for s in pending_specs(specs, paths)] == ["ic-seed0", "gc1-frozen100-seed0"]
    # Another budget is another run: nothing cached applies.
    other = images_mu.plan_ablations(images_mu.AblationOptions(steps=800, eval_every=100, seeds=(0,)))
    assert len(pending_specs(other, paths)) == len(other)


def test_budget_must_be_a_multiple_of_the_evaluation_period() -> None:
    with pytest.raises(ValueError, match="multiple of eval_every"):
        images_mu.plan_mu(images_mu.ImagesOptions(steps=450, eval_every=100))


@pytest.mark.slow
def test_tiny_real_study_end_to_end(tmp_path: Path) -> None:
    """Real training (digits, 4 steps per run): records, report, and no retraining on a second call."""
    o = images_mu.ImagesOptions(
        steps=4, eval_every=2, seeds=(0, 1), mus=(0.0, 0.5), ot=False, workers=1, eval_samples=32
    )
    rep = images_mu.run(o, tmp_path)
    runs = rep.results["runs"]
    assert set(runs) == {"ic-seed0", "ic-seed1", "gc0.5-seed0", "gc0.5-seed1"}
    assert all(r["steps"] == [2, 4] and len(r["classifier_fd"]) == 2 and r["cpu_seconds"] > 0 for r in runs.values())
    assert runs["ic-seed0"]["classifier_fd"] != runs["ic-seed1"]["classifier_fd"]  # seeds differ
    assert (tmp_path / "curves.png").stat().st_size > 1000 and rep.claims
    assert sorted(p.name for p in (tmp_path / "runs" / "ic-seed0" / "checkpoints").iterdir()) == [
        "ckpt-00000002.safetensors",
        "ckpt-00000004.safetensors",
    ]  # kept for frozen predictors (20 % and 100 %)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    again = images_mu.run(o, tmp_path)
    assert again.results["runs"] == runs and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    # A run cut off mid-way (its folder holds a run, no record) trains again from the start...
    next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("ic-seed1-")).unlink()
    assert images_mu.run(o, tmp_path).results["runs"]["ic-seed1"]["classifier_fd"] == runs["ic-seed1"]["classifier_fd"]
    # ... but a folder in a run's place that is not a gcflow run is never deleted: one-line error.
    next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith("gc0.5-seed1-")).unlink()
    shutil.rmtree(tmp_path / "runs" / "gc0.5-seed1")
    (tmp_path / "runs" / "gc0.5-seed1").mkdir()
    (tmp_path / "runs" / "gc0.5-seed1" / "thesis.tex").write_text("keep me")
    with pytest.raises(RunDirError, match="gc0.5-seed1"):
        images_mu.run(o, tmp_path)
    assert (tmp_path / "runs" / "gc0.5-seed1" / "thesis.tex").read_text() == "keep me"


def test_a_failed_run_stops_the_queue_after_the_runs_in_progress_are_cached(tmp_path: Path) -> None:
    """Two worker processes: one run fails at once, the other is still training. The failure is raised
    only after that run finished and was cached and marked; the run queued behind them never starts."""
    from gcflow.training.config import ConfigError

    tiny = (
        "train.steps=4",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.eval_samples=32",
        "train.threads=1",
    )
    good = RunSpec("ic-seed0", "IC", "digits-ic", tiny, 0)
    bad = RunSpec("gc-bad-seed0", "GC", "digits-gc", (*tiny, "method.gc_mu=2"), 0)
    later = RunSpec("ic-seed1", "IC", "digits-ic", tiny, 1)
    paths = StudyPaths(tmp_path / "cache", tmp_path / "work")
    with pytest.raises(ConfigError, match="gc_mu"):
        execute([good, bad, later], paths, workers=2)
    assert image_runs.load_cached(good, paths) is not None and paths.holds(good)
    assert image_runs.load_cached(bad, paths) is None and not paths.run_dir(later).exists()


def test_fashion14_presets_and_classifier_preset() -> None:
    from gcflow.metrics.classifier import PRESETS, preset_name
    from gcflow.training.presets import load_preset

    gc, ic, ot = (load_preset(f"fashion14-{k}") for k in ("gc", "ic", "ot"))
    assert gc.data.name == "fashion-mnist" and gc.data.resolution == 14 and gc.method.gc_mu == 0.5
    assert gc.network.dropout == (0.0,) and ic.network.dropout == (0.1,) and ot.method.coupling == "ot"
    # The evaluator asks for the dataset's classifier; 14×14 images get the 14×14 network.
    assert preset_name("fashion-mnist", 14) == "fashion-mnist@14"
    assert PRESETS[preset_name("fashion-mnist", 14)].config.image_size == 14
    assert preset_name("fashion-mnist", 28) == "fashion-mnist"  # existing settings and cache keys unchanged
    assert preset_name("mnist", 14) == "mnist" and preset_name("digits", 8) == "digits"


def test_ect_plan_trains_one_teacher_first_or_uses_a_given_one() -> None:
    o = images_mu.EctOptions(steps=400, eval_every=100, seeds=(0, 1), teacher_steps=300)
    specs = images_mu.plan_ect(o)
    assert [s.name for s in specs] == ["teacher", "ic-ect-seed0", "ic-ect-seed1", "gc0.3-ect-seed0", "gc0.3-ect-seed1"]
    teacher, tuned = specs[0], specs[1:]
    assert teacher.preset == "digits-edm" and teacher.keep_steps == (300,) and "train.steps=300" in teacher.overrides
    assert not any(x.startswith("train.steps=400") for x in teacher.overrides)  # the tuning budget is not its
    assert all(s.needs() == [("teacher", 300)] for s in tuned)
    assert {s.preset for s in tuned} == {"digits-ect-ic", "digits-ect-gc"}
    assert [s.label for s in tuned] == ["IC", "IC", "GC μ=0.3", "GC μ=0.3"]  # the names mu_claims compares
    given = images_mu.plan_ect(images_mu.EctOptions(steps=400, eval_every=100, seeds=(0,), teacher="t.safetensors"))
    assert [s.name for s in given] == ["ic-ect-seed0", "gc0.3-ect-seed0"]
    assert all("method.init_from=t.safetensors" in s.overrides and not s.needs() for s in given)


@pytest.mark.slow
def test_tiny_ect_study_tunes_from_the_trained_teacher(tmp_path: Path) -> None:
    """Real training: a 4-step teacher, then ECT-IC and ECT-GC runs that start from its weights."""
    import torch

    from gcflow.training.builders import build_model
    from gcflow.training.config import from_dict
    from gcflow.training.run_state import load_run
    from gcflow.training.teacher_source import init_from_teacher

    o = images_mu.EctOptions(steps=4, eval_every=2, teacher_steps=4, seeds=(0,), workers=1, eval_samples=32)
    rep = images_mu.run_ect(o, tmp_path)
    assert set(rep.results["runs"]) == {"ic-ect-seed0", "gc0.3-ect-seed0"}  # the teacher is not a method
    assert images_mu.ECT_NOTE in rep.notes and rep.claims
    teacher_ckpt = tmp_path / "runs" / "teacher" / "checkpoints" / "ckpt-00000004.safetensors"
    config = json.loads((tmp_path / "runs" / "ic-ect-seed0" / "config.json").read_text())
    assert config["method"]["pairs"] == "ect" and config["method"]["init_from"] == str(teacher_ckpt.resolve())
    # The path the study passed starts a model of the tuned run's config from the teacher's raw network.
    cfg = from_dict(config)
    student = init_from_teacher(build_model(cfg, (1, 8, 8), 0), cfg.method.init_from)
    teacher = load_run(teacher_ckpt).model
    assert all(torch.equal(v, teacher.net.state_dict()[k]) for k, v in student.net.state_dict().items())


def test_paired_reading_cancels_a_seed_effect_shared_by_the_methods() -> None:
    """Seeds that are good or bad for every method: unpaired, GC's constant 1.0 advantage drowns in the
    seed spread; paired by seed it is clear. The verdict keeps the unpaired rule; the text adds the pairs."""

    def method(shift: float) -> list[dict]:
        out = []
        for seed, level in enumerate((10.0, 30.0, 50.0)):
            r = record([v + level + shift + 0.05 * seed for v in (9.0, 8.0, 7.0, 7.0)], name=f"s{seed}")
            r["spec"]["seed"] = seed
            out.append(r)
        return out

    s = ia.summarise_all({"IC": method(0.0), "GC μ=0.5": method(-1.0)})
    assert s["IC"]["seed_ids"] == [0, 1, 2]
    mean, margin, n = ia.paired_difference(s["GC μ=0.5"], s["IC"], "final")
    assert mean == pytest.approx(-1.0) and margin == pytest.approx(0.0, abs=1e-9) and n == 3
    claim = ia.mu_claims(s)[0]
    assert claim.verdict == "inconclusive"  # unpaired: a 1.0 difference against a seed spread of 20
    assert "paired by seed (difference ± 2 SE): GC μ=0.5 − IC -1 ± 0 (lower, 3 seeds)" in claim.measured
    # Records without seed ids (older caches) or a single common seed: no paired reading.
    assert ia.paired_difference({"seed_ids": [0]}, {"seed_ids": [0]}, "final") is None
