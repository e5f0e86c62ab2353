"""Experiment `convergence`: W2 and error to f⋆ against training step for IC, OT, GC and oracle CD."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gcflow.experiments import figures
from gcflow.experiments.common import checkpoint_models, prune_checkpoints, run_metrics, set_threads, toy, train_toy
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.randomness import experiment_generator
from gcflow.theory.exact_error import ExactMapTargets, error_to_exact, exact_map_targets

# label -> (preset, extra overrides)
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "IC": ("toy-ic", ()),
    "OT": ("toy-ot", ()),
    "GC": ("toy-gc", ()),
    "CD": ("toy-cd", ()),  # oracle consistency distillation with the exact velocity
}


@dataclass
class ConvergenceOptions(CommonOptions):
    data: str = opt("ring8", "toy distribution")
    steps: int = opt(2000, "training steps per method")
    eval_every: int = opt(250, "evaluate (W2 and error to f⋆) every this many steps")
    batch_size: int = opt(256, "training batch size")
    gc_mu: float = opt(0.5, "μ of the GC run")
    methods: tuple[str, ...] = opt(
        tuple(METHODS), "methods to train: IC, OT, GC, CD (oracle distillation with the exact velocity)"
    )
    sigmas: tuple[float, ...] = opt((0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0), "levels of the error-to-f⋆ metric")
    n_error: int = opt(500, "points per level for the error to f⋆")
    eval_samples: int = opt(1000, "samples per W2 evaluation (trainer)")
    seeds: tuple[int, ...] = opt(
        (0, 1, 2),
        "training seeds (empty: just `seed`); curves are averaged over them and verdicts weigh differences against the "
        "seed-to-seed spread",
    )
    extra: tuple[str, ...] = opt((), "further trainer overrides for every run, e.g. optim.lr=5e-4 (comma-separated)")


def lower_verdict(a: list[float], b: list[float]) -> str:
    """Verdict on the claim "a is lower than b" from per-seed values (equal-length lists).

    With several seeds: 'agrees' / 'disagrees' when the difference of means exceeds twice its
    standard error (Welch, ddof = 1), else 'inconclusive'. With one seed there is no spread to
    weigh against, so a relative difference under 10% is 'inconclusive'.
    """
    mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
    if len(a) > 1 and len(b) > 1:
        margin = 2.0 * math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    else:
        margin = 0.1 * max(abs(mean_a), abs(mean_b))
    if mean_b - mean_a > margin:
        return "agrees"
    if mean_a - mean_b > margin:
        return "disagrees"
    return "inconclusive"


def _train_method(
    label: str,
    options: ConvergenceOptions,
    seeds: list[int],
    targets: ExactMapTargets,
    out: Path,
    results: dict[str, Any],
) -> None:
    """Train `label` once per seed and record its curves (and the W2 noise floor) in `results`."""
    preset, extra = METHODS[label]
    per_seed = []
    for seed in seeds:
        run_dir = out / "runs" / f"{label.split()[0].lower()}-seed{seed}"
        overrides = [
            f"data.name={options.data}",
            f"train.steps={options.steps}",
            f"train.eval_every={options.eval_every}",
            f"train.checkpoint_every={options.eval_every}",
            f"train.batch_size={options.batch_size}",
            f"train.seed={seed}",
            f"train.eval_samples={options.eval_samples}",
            "train.device=cpu",
            *extra,
            *options.extra,
        ]
        if label == "GC":
            overrides.append(f"method.gc_mu={options.gc_mu}")
        summary = train_toy(run_dir, preset, overrides)
        records = run_metrics(run_dir)
        errors = {step: error_to_exact(model, targets) for step, model in checkpoint_models(run_dir)}
        prune_checkpoints(run_dir)
        steps = [r["step"] for r in records]
        per_seed.append(
            {
                "seed": seed,
                "steps": steps,
                "w2": [r["w2"] for r in records],
                "sliced_w2": [r["sliced_w2"] for r in records],
                "error_to_exact": [errors[st] for st in steps],
                "seconds": summary.get("wall_seconds"),
            }
        )
        results["w2_noise_floor"] = records[-1]["w2_noise_floor"]
    w2 = np.array([p["w2"] for p in per_seed])
    err = np.array([p["error_to_exact"] for p in per_seed])  # (seeds, evaluations, levels)
    results["methods"][label] = {
        "steps": per_seed[0]["steps"],
        "w2": w2.mean(0).tolist(),
        "w2_std": w2.std(0).tolist(),
        "error_to_exact": err.mean(0).tolist(),
        "mean_error_to_exact": err.mean(axis=(0, 2)).tolist(),
        "mean_error_to_exact_std": err.mean(2).std(0).tolist(),
        "per_seed": per_seed,
    }


def measure(options: ConvergenceOptions, out: Path) -> dict[str, Any]:
    """Train every method on every seed; W2 and the error to f⋆ at each evaluation, per seed and averaged."""
    mix = toy(options.data)
    unknown = [m for m in options.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    targets = exact_map_targets(mix, list(options.sigmas), options.n_error, experiment_generator(options.seed, 1))

    seeds = list(options.seeds) or [options.seed]
    results: dict = {"sigmas": list(options.sigmas), "seeds": seeds, "methods": {}}
    for label in options.methods:
        _train_method(label, options, seeds, targets, out, results)
    return results


def draw_figures(options: ConvergenceOptions, results: dict[str, Any], out: Path) -> None:
    """convergence.png: W2 and the mean error to f⋆ against step; the final error per level."""
    seeds = results["seeds"]
    fig, axes = figures.new_figure(3, 4.2, 3.4)
    for label, r in results["methods"].items():
        figures.line(axes[0], r["steps"], r["w2"], label)
        if len(seeds) > 1:
            lo = [a - b for a, b in zip(r["w2"], r["w2_std"])]
            hi = [a + b for a, b in zip(r["w2"], r["w2_std"])]
            axes[0].fill_between(r["steps"], lo, hi, alpha=0.15, color=axes[0].lines[-1].get_color())
        figures.line(axes[1], r["steps"], r["mean_error_to_exact"], label)
        figures.line(axes[2], list(options.sigmas), r["error_to_exact"][-1], label)
    axes[0].axhline(results["w2_noise_floor"], color="0.5", ls="--", lw=1, label="noise floor")
    axes[0].set(yscale="log", xlabel="step", ylabel="W2 (1-step samples)", title=f"W2 to data, {options.data}")
    axes[1].set(yscale="log", xlabel="step", ylabel="mean over σ of E‖f_θ − f⋆‖²", title="error to the exact map")
    axes[2].set(
        xscale="log", yscale="log", xlabel="σ", ylabel="E‖f_θ(x_σ, σ) − f⋆(x_σ, σ)‖²", title="final error per level"
    )
    for ax in axes:
        ax.legend(fontsize=7)
    figures.save(fig, out / "convergence.png")


def claims(results: dict[str, Any]) -> list[Claim]:
    """GC vs IC (final and early W2), OT vs IC, and oracle CD vs IC in error to f⋆; verdicts weigh the seeds' spread."""
    seeds = results["seeds"]
    m = results["methods"]
    claims = []
    # Per seed: the final W2 (mean of the last two evaluations, to damp evaluation noise) and the W2 at the
    # second evaluation ("early"); verdicts compare these samples, not just their means.
    final_runs = {k: [float(np.mean(p["w2"][-2:])) for p in v["per_seed"]] for k, v in m.items()}
    early_at = min(1, len(next(iter(m.values()))["steps"]) - 1)
    early_runs = {k: [p["w2"][early_at] for p in v["per_seed"]] for k, v in m.items()}
    final = {k: float(np.mean(v)) for k, v in final_runs.items()}
    pm = lambda k: f"{fmt(final[k])}" + (f" ± {fmt(float(np.std(final_runs[k], ddof=1)))}" if len(seeds) > 1 else "")  # noqa: E731
    rule = (
        f"verdict: the difference of means against twice its standard error over {len(seeds)} seeds"
        if len(seeds) > 1
        else "verdict from one seed: differences under 10% are called inconclusive"
    )
    if "GC" in m and "IC" in m:
        claims.append(
            Claim(
                "GC (μ = 0.5) gives better one-step samples than IC (paper Table 1: lower FID).",
                f"final W2 (last two evaluations, mean over {len(seeds)} seed(s)"
                + (" ± std" if len(seeds) > 1 else "")
                + "): "
                + ", ".join(f"{k} {pm(k)}" for k in final)
                + f"; noise floor {fmt(results['w2_noise_floor'])}; {rule}.",
                lower_verdict(final_runs["GC"], final_runs["IC"]),
            )
        )
        claims.append(
            Claim(
                "GC learns faster early in training.",
                f"W2 at step {m['GC']['steps'][early_at]}: "
                + ", ".join(f"{k} {fmt(float(np.mean(v)))}" for k, v in early_runs.items())
                + f"; {rule}.",
                lower_verdict(early_runs["GC"], early_runs["IC"]),
            )
        )
    if "OT" in m and "IC" in m:
        claims.append(
            Claim(
                "Minibatch OT improves on IC (paper Table 1).",
                f"final W2: OT {pm('OT')} vs IC {pm('IC')}; {rule}.",
                lower_verdict(final_runs["OT"], final_runs["IC"]),
            )
        )
    err_final = {k: v["mean_error_to_exact"][-1] for k, v in m.items()}
    err_runs = {k: [float(np.mean(p["error_to_exact"][-1])) for p in v["per_seed"]] for k, v in m.items()}
    if "CD" in m and "IC" in m:
        # The paper's premise: CT estimates what CD sees exactly, so oracle CD should be closer to f⋆.
        claims.append(
            Claim(
                "Oracle CD, which sees the exact velocity, ends closer to f⋆ than consistency training (IC).",
                "final mean error to f⋆: " + ", ".join(f"{k} {fmt(v)}" for k, v in err_final.items()) + f"; {rule}.",
                lower_verdict(err_runs["CD"], err_runs["IC"]),
            )
        )
    else:
        claims.append(
            Claim(
                "Error of each method to the exact consistency map f⋆ (measured).",
                "final mean error to f⋆: " + ", ".join(f"{k} {fmt(v)}" for k, v in err_final.items()) + ".",
                "measured",
            )
        )
    return claims


def run(options: ConvergenceOptions, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    results = measure(options, out)
    draw_figures(options, results, out)
    seeds = results["seeds"]
    return ExperimentReport(
        title="Convergence of IC, OT, GC and oracle CD",
        summary=(
            f"Each method is trained with the bundled trainer on `{options.data}` for {options.steps} steps "
            f"(batch {options.batch_size}, seeds {', '.join(map(str, seeds))}); "
            f"every {options.eval_every} steps we record the trainer's W2 of one-step samples "
            f"and the error E‖f_θ(x_σ, σ) − f⋆(x_σ, σ)‖² of the EMA model "
            f"against the exact consistency map on {len(options.sigmas)} levels."
        ),
        claims=claims(results),
        results=results,
        figures={
            "convergence.png": (
                "W2 of one-step samples and error to the exact map against training step; final error per σ"
            )
        },
        notes=[
            (
                "One seed per method: differences of a few percent are within run-to-run noise; "
                "rerun with several seeds (seeds=0,1,2, the default) to see the spread."
                if len(seeds) == 1
                else f"Curves are means over seeds {seeds} (shaded: ± one standard deviation)."
            ),
            "With minibatch OT the consistency model learns the ODE of the OT coupling's own velocity field, "
            "not the PF-ODE, so its error to f⋆ need not vanish.",
            "Run folders with the final checkpoint of each method are kept under runs/.",
        ],
    )
