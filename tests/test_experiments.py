"""`gcflow experiment`: every study end to end on a tiny budget, and the command's error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gcflow.cli import main
from gcflow.experiments import EXPERIMENTS, options_type
from gcflow.experiments.modes import ModesResults
from gcflow.experiments.options import parse_options
from gcflow.experiments.report import VERDICTS
from gcflow.training.config import ConfigError

# torch.func's forward-mode decompositions call the deprecated torch.jit.script internally (torch 2.13).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

TINY: dict[str, list[str]] = {
    "exact-map": ["n_check=40", "fixed_steps=200", "n_speed=200", "n_digits=40", "toys=two-modes"],
    "theorem1": [
        "samples=512",
        "n_max=40",
        "grad_samples=256",
        "grad_chunks=4",
        "grad_ns=10,20",
        "width=8",
        "depth=1",
        "distances=l2,pseudo_huber:0.1,l1",
    ],
    "discrepancy": [
        "sigmas=0.1,2",
        "ot_batches=32",
        "n_exact=500",
        "n_kernel=150",
        "n_train=200",
        "n_test=100",
        "mlp_steps=10",
        "predictor_steps=10",
    ],
    "transport": [
        "n=256",
        "ot_batches=32,64",
        "levels=4",
        "model_steps=10",
        "digits_n=128",
        "digits_curve_n=4",
        "digits_levels=3",
    ],
    "convergence": [
        "seeds=0,1",
        "methods=IC,GC",
        "steps=20",
        "eval_every=10",
        "batch_size=32",
        "n_error=16",
        "eval_samples=64",
        "sigmas=0.5,5",
    ],
    "modes": ["mus=0,1", "steps=20", "eval_every=10", "batch_size=32", "samples=100", "shift_sigmas=0.5", "shift_n=64"],
    "images-mu": ["steps=4", "eval_every=2", "seeds=0", "mus=0,0.5", "ot=false", "workers=1", "eval_samples=32"],
    "images-ablations": ["steps=4", "eval_every=2", "seeds=0", "workers=1", "eval_samples=32"],
    "images-fashion": ["preset=digits", "steps=4", "eval_every=2", "seeds=0", "workers=1", "eval_samples=32"],
    "images-ect": ["steps=4", "eval_every=2", "teacher_steps=4", "seeds=0", "workers=1", "eval_samples=32"],
}
FAST = {"exact-map", "theorem1"}


def _run(name: str, out: Path) -> dict:
    assert main(["experiment", name, *TINY[name], "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["experiment"] == name and doc["options"]
    assert doc["claims"] and all(c["verdict"] in VERDICTS for c in doc["claims"])
    for fname in doc["figures"]:
        assert (out / fname).stat().st_size > 1000, fname
    report = (out / "report.md").read_text()
    assert "| claim | measured | verdict |" in report and f"gcflow experiment {name}" in report
    return doc


def test_every_experiment_has_a_tiny_setting() -> None:
    assert set(TINY) == set(EXPERIMENTS)
    for name, (description, fn) in EXPERIMENTS.items():
        assert description and "\n" not in description
        parse_options(options_type(fn), TINY[name], name)  # the tiny overrides are valid options


@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_experiments_end_to_end(name: str, tmp_path: Path) -> None:
    doc = _run(name, tmp_path / name)
    if name == "theorem1":
        dists = doc["results"]["distances"]
        assert dists["l2"]["gradients"]["ns"] == [10, 20] and dists["l1"]["alpha"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - FAST))
def test_training_experiments_end_to_end(name: str, tmp_path: Path) -> None:
    doc = _run(name, tmp_path / name)
    if name == "convergence":
        methods = doc["results"]["methods"]
        assert set(methods) == {"IC", "GC"} and len(methods["GC"]["per_seed"]) == 2
        assert all(len(m["error_to_exact"]) == len(m["steps"]) == 2 for m in methods.values())
    if name == "modes":
        assert set(doc["results"]["runs"]) == {"mu=0", "mu=1"}
        assert "exact f⋆" in doc["results"]["shift"]


def test_list_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    assert main(["experiment", "theorem1", "--options"]) == 0
    assert "grad_chunks" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["experiment", "no-such-study"], "unknown experiment"),
        (["experiment", "theorem1", "samples=many"], "samples='many' is not a valid int"),
        (["experiment", "theorem1", "bogus=1"], "unknown option 'bogus'"),
        (["experiment", "theorem1", "samples"], "not of the form key=value"),
        (["experiment"], "name an experiment"),
    ],
)
def test_bad_invocations_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t1"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["experiment", "theorem1", *TINY["theorem1"], "--out", str(out)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a gcflow run or experiment: a folder of the user's files is kept.
    assert main([*args, "--overwrite"]) == 2
    assert "not a gcflow run" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(args) == 0 and (out / "results.json").exists()
    assert main(args) == 2  # an experiment is not replaced by accident...
    assert main([*args, "--overwrite"]) == 0  # ...but on request


def test_options_are_typed() -> None:
    cls = options_type(EXPERIMENTS["theorem1"][1])
    opts = parse_options(cls, ["grad_ns=5,7", "t_hi=1.5", "distances=l1"], "theorem1")
    assert opts.grad_ns == (5, 7) and opts.t_hi == 1.5 and opts.distances == ("l1",)
    with pytest.raises(ConfigError):
        parse_options(cls, ["t_hi=abc"], "theorem1")


def test_convergence_verdicts_weigh_seed_noise() -> None:
    from gcflow.experiments.convergence import lower_verdict

    assert lower_verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == "agrees"
    assert lower_verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) == "disagrees"
    assert lower_verdict([1.0, 1.5, 0.5], [1.2, 1.7, 0.7]) == "inconclusive"  # a shift well inside the seed spread
    assert lower_verdict([1.0], [1.05]) == "inconclusive" and lower_verdict([1.0], [1.2]) == "agrees"


def _modes_results(w2_mu1: list[float]) -> ModesResults:
    from gcflow.experiments.modes import EXACT_LABEL

    def entry(w2: list[float]) -> dict:
        n = len(w2)
        return {
            "steps": [100 * (i + 1) for i in range(n)],
            "covered": [25] * n,
            "in_modes": [0.9] * n,
            "kl_to_uniform": [0.01] * n,
            "final_counts": [4] * 25,
            "w2": w2,
        }

    shift = {EXACT_LABEL: {"w2": [0.1], "sliced_w2": [0.1], "floor_w2": [0.05]}}
    runs = {"mu=0": entry([1.0, 0.5, 0.2, 0.2]), "mu=1": entry(w2_mu1)}
    return ModesResults("grid25", 25, [0.0, 1.0], runs, [0.5], shift, 0.01)


def test_modes_claims_judge_the_mu_one_remark() -> None:
    from gcflow.experiments.modes import DEGRADATION_FACTOR, claims

    def verdict(w2_mu1: list[float]) -> str:
        return claims(_modes_results(w2_mu1))[1].verdict

    assert verdict([1.0, 0.3, 0.25, 0.3]) == "agrees"  # faster at the first evaluation, ends above 1.1 × best
    assert verdict([1.0, 0.6, 0.25, 0.3]) == "partly"  # degrades without the fast start
    # Ending within DEGRADATION_FACTOR of the best final W2 and of its own best is no degradation.
    assert verdict([1.0, 0.3, 0.2, 0.2 * DEGRADATION_FACTOR * 0.99]) == "partly"
    assert verdict([1.0, 0.6, 0.2, 0.2]) == "disagrees"
    res = _modes_results([1.0, 0.3, 0.25, 0.3])
    del res.runs["mu=0"]
    assert [c.verdict for c in claims(res)] == ["measured", "measured"]  # no μ = 0 baseline: no μ = 1 claim
    assert list(res.to_dict()) == ["mus", "runs", "shift"]
