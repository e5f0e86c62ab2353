"""Experiment `modes`: what the paper left open — mode coverage for μ ∈ {0, …, 1} and the GC/IC marginal shift."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gcflow.experiments import figures
from gcflow.experiments.common import (
    as_point_fn,
    checkpoint_models,
    prune_checkpoints,
    run_metrics,
    set_threads,
    toy,
    train_toy,
)
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.metrics.wasserstein import sliced_w2, w2_exact
from gcflow.randomness import experiment_generator
from gcflow.sampling import sample_onestep
from gcflow.theory.exact_map import ODETolerance, exact_consistency_map
from gcflow.toy.mixture import GaussianMixture

SIGMA_MAX = 80.0  # the presets' method.sigma_max
SIGMA_MIN = 0.002  # the end level of the exact map f⋆ (the presets' method.sigma_min)
EXACT_MAP_TOLERANCE = ODETolerance(rtol=1e-5, atol=1e-6)
EXACT_LABEL = "exact f⋆"  # the shift entry of the exact consistency map

# The claims' thresholds.
FINAL_W2_WINDOW = 2  # a run's final W2 is the mean over its last this many evaluations
DEGRADATION_FACTOR = 1.1  # μ = 1 "degrades" when its W2 ends this factor above the best final W2 or its own best


@dataclass
class ModesOptions(CommonOptions):
    data: str = opt("grid25", "many-mode toy distribution")
    mus: tuple[float, ...] = opt((0.0, 0.3, 0.5, 0.7, 1.0), "GC probabilities μ to train")
    steps: int = opt(3000, "training steps per μ")
    eval_every: int = opt(500, "score mode coverage every this many steps")
    batch_size: int = opt(256, "training batch size")
    samples: int = opt(2500, "one-step samples per coverage evaluation")
    radius: float = opt(0.1, "a sample belongs to a mode when within this distance of its centre")
    min_fraction: float = opt(
        0.2, "a mode is covered when it holds at least this fraction of its fair share of samples"
    )
    shift_sigmas: tuple[float, ...] = opt((0.05, 0.1, 0.2, 0.5, 1.0, 2.0), "levels σ for the GC/IC marginal shift")
    shift_n: int = opt(1000, "points per marginal for the shift (exact W2 is O(n³))")
    extra: tuple[str, ...] = opt(
        ("method.p_mean=-2.0", "method.s1=320"),
        "trainer overrides for every run (the default sharpens the 25 tight modes within a short run)",
    )


@dataclass
class Coverage:
    """Mode statistics of a sample set.

    Attributes:
        covered: number of modes holding ≥ min_fraction · n/K samples within `radius`.
        in_modes: fraction of samples within `radius` of some mode centre ("high-quality" samples).
        kl_to_uniform: KL(mode histogram of in-mode samples ‖ uniform) in nats (0 = perfectly balanced).
        counts: samples per mode.
    """

    covered: int
    in_modes: float
    kl_to_uniform: float
    counts: list[int]


def mode_coverage(samples: Tensor, mixture: GaussianMixture, radius: float, min_fraction: float) -> Coverage:
    """Assign samples (n, d) to the nearest mode centre of `mixture` and count; see `Coverage`."""
    x = samples.to(torch.float64)
    d = torch.cdist(x, mixture.means)
    dist, idx = d.min(1)
    ok = dist < radius
    k = mixture.num_components
    counts = torch.bincount(idx[ok], minlength=k)
    fair = x.shape[0] / k
    covered = int((counts >= min_fraction * fair).sum())
    p = counts.double() / max(int(counts.sum()), 1)
    kl = float((p[p > 0] * torch.log(p[p > 0] * k)).sum())
    return Coverage(covered, float(ok.double().mean()), kl, [int(c) for c in counts])


def marginal_shift(predict, mixture: GaussianMixture, sigmas: list[float], n: int, seed: int) -> dict[str, list[float]]:
    """W2 and sliced W2 between the IC marginal {x⋆ + σz} and the GC marginal {x̂ + σz}, x̂ = predict(x⋆ + σz, σ).

    The two sets use independent draws, so the noise floor (`floor_w2`: two independent IC sets) is what
    the distance would be with no shift at all.
    """
    w2, sw2, floor = [], [], []
    for k, s in enumerate(sigmas):
        g = experiment_generator(seed, 100 + k)
        x_ic = mixture.sample(n, g) + s * torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
        x_ic2 = mixture.sample(n, g) + s * torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
        x0 = mixture.sample(n, g)
        z = torch.randn(n, mixture.dim, generator=g, dtype=torch.float64)
        x_hat = predict(x0 + s * z, torch.full((n,), s, dtype=torch.float64))
        x_gc = x_hat + s * z
        w2.append(w2_exact(x_ic, x_gc))
        sw2.append(sliced_w2(x_ic, x_gc))
        floor.append(w2_exact(x_ic, x_ic2))
    return {"w2": w2, "sliced_w2": sw2, "floor_w2": floor}


@dataclass
class ModesResults:
    """What the study measured.

    Attributes:
        data: the toy's name; num_modes: its number of modes K.
        mus: the GC probabilities trained.
        runs: per run label ("mu=0.3"): "steps", "covered", "in_modes", "kl_to_uniform" (one value per
            checkpoint), "final_counts" (samples per mode at the end) and "w2" (the trainer's W2 to data).
        shift_sigmas: the levels σ of the marginal shift.
        shift: per run label and for `EXACT_LABEL`, `marginal_shift`'s "w2", "sliced_w2" and "floor_w2" per σ.
        mode_std: the largest mode standard deviation (for the notes).
    """

    data: str
    num_modes: int
    mus: list[float]
    runs: dict[str, dict[str, Any]]
    shift_sigmas: list[float]
    shift: dict[str, dict[str, list[float]]]
    mode_std: float

    def to_dict(self) -> dict[str, Any]:
        """The results.json entry (key order as published)."""
        return {"mus": self.mus, "runs": self.runs, "shift": self.shift}


def _train_and_score(
    options: ModesOptions, mu: float, mix: GaussianMixture, z_eval: Tensor, out: Path
) -> tuple[dict[str, Any], nn.Module]:
    """Train one μ with the bundled trainer and score every checkpoint; (the run's entry, its final EMA model)."""
    run_dir = out / "runs" / f"mu={mu:g}"
    overrides = [
        f"data.name={options.data}",
        f"method.gc_mu={mu}",
        f"train.steps={options.steps}",
        f"train.eval_every={options.eval_every}",
        f"train.checkpoint_every={options.eval_every}",
        f"train.batch_size={options.batch_size}",
        f"train.seed={options.seed}",
        "train.device=cpu",
        *[e for e in options.extra if e],
    ]
    train_toy(run_dir, "toy-gc" if mu > 0 else "toy-ic", overrides)
    records = {r["step"]: r for r in run_metrics(run_dir)}
    steps, cov = [], []
    for step, model in checkpoint_models(run_dir):
        steps.append(step)
        cov.append(mode_coverage(sample_onestep(model, z_eval, SIGMA_MAX), mix, options.radius, options.min_fraction))
    prune_checkpoints(run_dir)
    entry = {
        "steps": steps,
        "covered": [c.covered for c in cov],
        "in_modes": [c.in_modes for c in cov],
        "kl_to_uniform": [c.kl_to_uniform for c in cov],
        "final_counts": cov[-1].counts,
        "w2": [records[s]["w2"] for s in steps if s in records],
    }
    return entry, model


def measure(options: ModesOptions, out: Path) -> ModesResults:
    """Mode coverage along training for every μ, then the GC/IC marginal shift of each final model and of f⋆."""
    mix = toy(options.data)
    z_eval = torch.randn(options.samples, mix.dim, generator=experiment_generator(options.seed, 1))
    runs, final_models = {}, {}
    for mu in options.mus:
        label = f"mu={mu:g}"
        runs[label], final_models[label] = _train_and_score(options, mu, mix, z_eval, out)
    sig = [float(s) for s in options.shift_sigmas]
    shift = {
        label: marginal_shift(as_point_fn(m), mix, sig, options.shift_n, options.seed)
        for label, m in final_models.items()
    }

    def exact_fn(x: Tensor, s: Tensor) -> Tensor:
        return exact_consistency_map(mix, x, s, SIGMA_MIN, EXACT_MAP_TOLERANCE)

    shift[EXACT_LABEL] = marginal_shift(exact_fn, mix, sig, options.shift_n, options.seed)
    return ModesResults(options.data, mix.num_components, list(options.mus), runs, sig, shift, float(mix.stds.max()))


def draw_figures(res: ModesResults, options: ModesOptions, out: Path) -> None:
    """modes.png (coverage, on-mode fraction, W2 against step) and marginal_shift.png (W2 against σ)."""
    k, sig = res.num_modes, res.shift_sigmas
    fig, axes = figures.new_figure(3, 4.0, 3.3)
    for label, r in res.runs.items():
        figures.line(axes[0], r["steps"], r["covered"], label)
        figures.line(axes[1], r["steps"], r["in_modes"], label)
        figures.line(axes[2], r["steps"], r["w2"], label)
    axes[0].axhline(k, color="0.5", ls="--", lw=1)
    axes[0].set(xlabel="step", ylabel=f"modes covered (of {k})", title=f"mode coverage, {res.data}")
    axes[1].set(xlabel="step", ylabel=f"fraction within {options.radius:g} of a mode", title="samples on a mode")
    axes[2].set(yscale="log", xlabel="step", ylabel="W2", title="W2 to data (trainer)")
    for ax in axes:
        ax.legend(fontsize=7)
    figures.save(fig, out / "modes.png")
    fig, axes = figures.new_figure(1, 4.8, 3.6)
    for label, r in res.shift.items():
        figures.line(axes[0], sig, r["w2"], label, ls="-" if label != EXACT_LABEL else "--")
    figures.line(axes[0], sig, res.shift[EXACT_LABEL]["floor_w2"], "noise floor (IC vs IC)", color="0.5", ls=":")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="σ",
        ylabel="W2(x⋆ + σz, x̂ + σz)",
        title="shift of the GC marginal from the IC marginal",
    )
    axes[0].legend(fontsize=7)
    figures.save(fig, out / "marginal_shift.png")


def _coverage_claim(res: ModesResults) -> Claim:
    """Open question: modes covered, on-mode fraction and mode balance at the end of training, per μ."""
    runs = res.runs
    return Claim(
        "Open question: does GC drop modes on a many-mode distribution?",
        f"modes covered at the end (of {res.num_modes}): "
        + ", ".join(f"{lab}: {r['covered'][-1]}" for lab, r in runs.items())
        + "; fraction of samples on a mode: "
        + ", ".join(f"{lab}: {r['in_modes'][-1]:.2f}" for lab, r in runs.items())
        + "; KL(mode histogram ‖ uniform): "
        + ", ".join(f"{lab}: {r['kl_to_uniform'][-1]:.3f}" for lab, r in runs.items())
        + ".",
        "measured",
    )


def _mu_one_claim(res: ModesResults) -> Claim:
    """μ = 1 beats μ = 0 at the first evaluation after the start, then ends or falls well above the best W2."""
    runs, base, one = res.runs, res.runs["mu=0"], res.runs["mu=1"]["w2"]
    final_w2 = {lab: float(np.mean(r["w2"][-FINAL_W2_WINDOW:])) for lab, r in runs.items()}
    fast = len(one) > 1 and one[1] < base["w2"][1]
    degrades = final_w2["mu=1"] > DEGRADATION_FACTOR * min(final_w2.values()) or one[-1] > DEGRADATION_FACTOR * min(one)
    over = f"{DEGRADATION_FACTOR - 1:.0%}"
    return Claim(
        "μ = 1 (all pairs GC) learns fast, then degrades (method spec §6).",
        "W2 over training: "
        + "; ".join(f"{lab}: " + ", ".join(fmt(w) for w in r["w2"]) for lab, r in runs.items())
        + f" (at steps {', '.join(map(str, base['steps']))}). Final W2: "
        + ", ".join(f"{lab} {fmt(v)}" for lab, v in final_w2.items())
        + f". Fast start: {'yes' if fast else 'no'}; degradation (> {over} above the best final or its own best): "
        + f"{'yes' if degrades else 'no'}.",
        "agrees" if fast and degrades else ("partly" if fast or degrades else "disagrees"),
    )


def _shift_claim(res: ModesResults) -> Claim:
    """Open question: W2 between the GC and IC marginals per σ, against the IC-vs-IC noise floor."""
    shift = res.shift
    return Claim(
        "Open question: how far do GC pairs' marginals x̂ + σz drift from the IC marginal x⋆ + σz?",
        "W2 at σ = "
        + ", ".join(f"{s:g}" for s in res.shift_sigmas)
        + ": "
        + "; ".join(f"{lab}: " + ", ".join(fmt(v) for v in r["w2"]) for lab, r in shift.items())
        + "; noise floor "
        + ", ".join(fmt(v) for v in shift[EXACT_LABEL]["floor_w2"])
        + ".",
        "measured",
    )


def claims(res: ModesResults) -> list[Claim]:
    """Coverage (open question); the paper's μ = 1 remark when both μ = 0 and μ = 1 ran; the marginal shift."""
    out = [_coverage_claim(res)]
    if "mu=0" in res.runs and "mu=1" in res.runs:
        out.append(_mu_one_claim(res))
    return out + [_shift_claim(res)]


def _notes(res: ModesResults, options: ModesOptions) -> list[str]:
    coverage = (
        f"A mode is covered when at least {options.min_fraction:g} of its fair share "
        f"({options.samples}/{res.num_modes} samples) lies within {options.radius:g} of its centre "
        f"(mode std {res.mode_std:.3g})."
    )
    inherent = (
        "Even with the exact f⋆, x̂ = f⋆(x⋆ + σz, σ) has the data marginal but is not independent of z, so "
        "x̂ + σz is not distributed as x⋆ + σz: the exact-map curve is the shift inherent to GC, the trained "
        "curves add the model's own error."
    )
    return [coverage, inherent]


def run(options: ModesOptions, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    res = measure(options, out)
    draw_figures(res, options, out)
    k = res.num_modes
    return ExperimentReport(
        title="Mode coverage against μ, and the GC/IC marginal shift",
        summary=(
            f"On `{options.data}` ({k} modes) we train with μ ∈ {{{', '.join(f'{m:g}' for m in options.mus)}}} "
            f"for {options.steps} steps each and count, every {options.eval_every} steps, the modes that one-step "
            "samples of the EMA model cover. Then we measure the exact W2 between the IC marginal x⋆ + σz and the "
            "GC marginal x̂ + σz (x̂ = f(x⋆ + σz, σ) with the same z) for each trained predictor and for the "
            "exact f⋆."
        ),
        claims=claims(res),
        results=res.to_dict(),
        figures={
            "modes.png": "modes covered, fraction of samples on a mode, and W2 against training step for each μ",
            "marginal_shift.png": "W2 between the GC and IC marginals at several σ (exact f⋆ dashed, noise floor "
            "dotted)",
        },
        notes=_notes(res, options),
    )
