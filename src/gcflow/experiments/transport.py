"""Experiment `transport`: transport cost of IC, minibatch OT and the GC curve c(σ)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcflow.experiments import figures
from gcflow.experiments.common import as_point_fn, final_model, set_threads, toy, train_toy
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.randomness import experiment_generator
from gcflow.theory.exact_map import ODETolerance, exact_consistency_map
from gcflow.theory.transport import generator_cost_curve, independent_cost, minibatch_ot_cost
from gcflow.toy.mixture import GaussianMixture

# The claims' thresholds.
IC_NOISE_SIGMAS = 4.0  # c(σ) counts as "not above IC" within this many standard errors of the IC cost
END_FRACTION = 4  # "large σ" are the last max(2, levels // END_FRACTION) levels of the curve
DECREASE_SLACK = 1.01  # c(σ) may rise by up to 1% between neighbouring large levels and still "decrease"
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # the presets' noise range: the GC curve's levels span it
DIGITS_MIN_RTOL = 1e-4  # the 64-D digits' exact map is solved no tighter than this (cost)


@dataclass
class TransportOptions(CommonOptions):
    data: str = opt("two-modes", "2-D toy distribution")
    n: int = opt(8192, "pairs for the 2-D costs")
    ot_batches: tuple[int, ...] = opt((128, 512, 2048), "minibatch OT batch sizes")
    levels: int = opt(15, "levels σ of the GC curve, log-spaced on [σ_min, 80]")
    model: str = opt("", "run folder of a trained model for the GC curve; empty: train one with the toy-gc preset")
    model_steps: int = opt(2000, "training steps of that model when it is trained here")
    digits: bool = opt(True, "also measure on the 64-D digits (exact f⋆ of the 1797-point empirical distribution)")
    digits_n: int = opt(4096, "pairs for the digits IC/OT costs")
    digits_curve_n: int = opt(256, "pairs per level for the digits GC curve")
    digits_levels: int = opt(8, "levels of the digits GC curve")
    rtol: float = opt(1e-5, "ODE tolerance in 2-D (digits use max(rtol, 1e-4))")


def _costs(mix: GaussianMixture, n: int, batches: tuple[int, ...], g: torch.Generator) -> dict[str, Any]:
    x0 = mix.sample(n, g)
    z = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    out = {"IC": independent_cost(x0, z).__dict__}
    for b in batches:
        out[f"OT b={b}"] = minibatch_ot_cost(x0, z, b).__dict__ if n >= b else None
    return out


def _levels(count: int) -> list[float]:
    return [float(s) for s in np.geomspace(SIGMA_MIN, SIGMA_MAX, count)]


def _digits_curve(
    dig: GaussianMixture, n: int, g: torch.Generator, sigmas: list[float], tol: ODETolerance
) -> list[dict[str, float]]:
    """c(σ) with the exact f⋆ on n fresh pairs."""
    x0 = dig.sample(n, g)
    z = torch.randn(n, dig.dim, generator=g, dtype=torch.float64)
    return [
        c.__dict__
        for c in generator_cost_curve(lambda x, s: exact_consistency_map(dig, x, s, SIGMA_MIN, tol), x0, z, sigmas)
    ]


def _model_dir(options: TransportOptions, out: Path) -> Path:
    """The trained GC model's run folder: given, or trained here with the toy-gc preset."""
    if options.model:
        return Path(options.model)
    model_dir = out / "runs" / "gc-model"
    train_toy(
        model_dir,
        "toy-gc",
        [
            f"data.name={options.data}",
            f"train.steps={options.model_steps}",
            f"train.seed={options.seed}",
            "train.eval_every=0",
            "train.checkpoint_every=0",
            "train.device=cpu",
        ],
        keep_all=False,
    )
    return model_dir


def measure(options: TransportOptions, out: Path) -> tuple[dict[str, Any], Path]:
    """(results, the trained model's folder): IC and OT costs and the GC curves, on the toy and (optionally) the digits.

    results = {"sigmas", "toy": {"IC", "OT b=…", "GC exact", "GC model"},
               ["digits": {"IC", "OT b=…", "sigmas", "GC exact"}]}.
    """
    mix = toy(options.data)
    sigmas = _levels(options.levels)
    results: dict[str, Any] = {"sigmas": sigmas}
    results["toy"] = _costs(mix, options.n, options.ot_batches, experiment_generator(options.seed, 1))
    tol = ODETolerance(rtol=options.rtol, atol=options.rtol / 10)
    g = experiment_generator(options.seed, 2)
    n_curve = max(options.n // 4, 256)
    # The exact curve's pairs are drawn before the model is trained (its draws come from the same generator).
    x0 = mix.sample(n_curve, g)
    z = torch.randn(n_curve, mix.dim, generator=g, dtype=torch.float64)
    exact_curve = generator_cost_curve(lambda x, s: exact_consistency_map(mix, x, s, SIGMA_MIN, tol), x0, z, sigmas)
    model_dir = _model_dir(options, out)
    model_curve = generator_cost_curve(as_point_fn(final_model(model_dir)), x0, z, sigmas)
    results["toy"]["GC exact"] = [c.__dict__ for c in exact_curve]
    results["toy"]["GC model"] = [c.__dict__ for c in model_curve]
    if options.digits:  # 64-D digits: IC, OT and the exact GC curve of the empirical distribution.
        dig = toy("digits")
        results["digits"] = _costs(dig, options.digits_n, options.ot_batches, experiment_generator(options.seed, 3))
        dsig = _levels(options.digits_levels)
        rtol = max(options.rtol, DIGITS_MIN_RTOL)
        g = experiment_generator(options.seed, 4)
        results["digits"]["sigmas"] = dsig
        results["digits"]["GC exact"] = _digits_curve(
            dig, options.digits_curve_n, g, dsig, ODETolerance(rtol=rtol, atol=rtol / 10)
        )
    return results, model_dir


def _panels(options: TransportOptions, results: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(results key, title, levels) per data set."""
    panels = [("toy", options.data, results["sigmas"])]
    return panels + ([("digits", "digits (64-D)", results["digits"]["sigmas"])] if options.digits else [])


def draw_figures(options: TransportOptions, results: dict[str, Any], out: Path) -> None:
    """transport.png: IC and OT costs (horizontal lines) and the GC curves, one panel per data set."""
    panels = _panels(options, results)
    fig, axes = figures.new_figure(len(panels), 4.8, 3.6)
    for ax, (key, title, sig) in zip(axes, panels):
        r = results[key]
        ax.axhline(r["IC"]["value"], color="k", lw=1.5, label="IC")
        for i, b in enumerate(options.ot_batches):
            if r.get(f"OT b={b}"):
                ax.axhline(r[f"OT b={b}"]["value"], color=f"C{i + 2}", ls="--", lw=1, label=f"OT b={b}")
        figures.line(ax, sig, [c["value"] for c in r["GC exact"]], "GC c(σ), exact f⋆", color="C0")
        if "GC model" in r:
            figures.line(ax, sig, [c["value"] for c in r["GC model"]], "GC c(σ), trained model", color="C1")
        ax.set(xscale="log", xlabel="σ", ylabel="E‖end − z‖²", title=f"transport cost, {title}")
        ax.legend(fontsize=6)
    figures.save(fig, out / "transport.png")


def _data_claims(r: dict[str, Any], title: str, sig: list[float], batches: tuple[int, ...]) -> list[Claim]:
    """OT below IC, GC below OT, and the shape of c(σ), on one data set."""
    ic = r["IC"]["value"]
    ots = {b: r[f"OT b={b}"]["value"] for b in batches if r.get(f"OT b={b}")}
    gc = [c["value"] for c in r["GC exact"]]
    gmin_sigma = sig[int(np.argmin(gc))]
    best_ot = min(ots.values())
    ot_claim = Claim(
        f"{title}: minibatch OT costs less than IC, and less with larger batches.",
        f"IC {fmt(ic)}; " + ", ".join(f"OT b={b}: {fmt(v)}" for b, v in ots.items()) + ".",
        "agrees"
        if all(v < ic for v in ots.values()) and list(ots.values()) == sorted(ots.values(), reverse=True)
        else "partly",
    )
    below = [s for s, v in zip(sig, gc) if v < best_ot]
    under_ic = all(v <= ic + IC_NOISE_SIGMAS * r["IC"]["stderr"] for v in gc)
    # c(σ_min) is the IC cost by construction (f(x, σ_min) = x), so GC can only undercut OT at larger σ.
    gc_claim = Claim(
        f"{title}: GC transports less than OT, which transports less than IC (c(σ) below the OT cost).",
        f"c(σ) with f⋆ ranges {fmt(min(gc))} … {fmt(max(gc))} (minimum at σ = {gmin_sigma:.3g}); "
        f"below the best OT cost {fmt(best_ot)} "
        f"for {len(below)} of {len(gc)} levels"
        + (f" (σ ≥ {min(below):.3g})" if below else "")
        + f"; c(σ_min) = {fmt(gc[0])} vs IC {fmt(ic)} "
        "(equal by construction, since f(x, σ_min) = x).",
        "agrees" if under_ic and gc[-1] < best_ot else ("partly" if under_ic or gc[-1] < best_ot else "disagrees"),
    )
    # Decreasing near σ_min (first levels) and for large σ (last levels).
    n_end = max(2, len(gc) // END_FRACTION)
    dec_lo = gc[1] < gc[0]
    dec_hi = all(b <= a * DECREASE_SLACK for a, b in zip(gc[-n_end:], gc[-n_end + 1 :]))
    shape_claim = Claim(
        f"{title}: c(σ) decreases near σ_min and for large σ.",
        f"c = {fmt(gc[0])}, {fmt(gc[1])}, {fmt(gc[2])} at the three smallest σ; "
        f"{', '.join(fmt(v) for v in gc[-n_end:])} at the {n_end} largest.",
        "agrees" if dec_lo and dec_hi else ("partly" if dec_lo or dec_hi else "disagrees"),
    )
    return [ot_claim, gc_claim, shape_claim]


def claims(options: TransportOptions, results: dict[str, Any]) -> list[Claim]:
    """Per data set the three cost claims, then how closely the trained model's curve follows f⋆'s."""
    out = [
        c
        for key, title, sig in _panels(options, results)
        for c in _data_claims(results[key], title, sig, options.ot_batches)
    ]
    mc = [c["value"] for c in results["toy"]["GC model"]]
    ex = [c["value"] for c in results["toy"]["GC exact"]]
    dev = max(abs(a / b - 1) for a, b in zip(mc, ex))
    out.append(
        Claim(
            "A trained GC model's curve follows the exact one (how close the model is to f⋆ along the path).",
            f"{options.data}: max relative deviation of c(σ), trained model vs f⋆: {fmt(dev)}; "
            f"at σ = 80: {fmt(mc[-1])} vs {fmt(ex[-1])}.",
            "measured",
        )
    )
    return out


def run(options: TransportOptions, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    results, model_dir = measure(options, out)
    draw_figures(options, results, out)
    return ExperimentReport(
        title="Transport cost of the couplings",
        summary=(
            f"Mean squared distance between each trajectory end and its noise: IC, "
            f"minibatch OT (b = {', '.join(map(str, options.ot_batches))}) "
            f"and the GC curve c(σ) = E‖f(x⋆ + σz, σ) − z‖² on {options.levels} levels in [σ_min, 80], "
            f"with the exact f⋆ and with a trained model"
            + (
                ", on the 2-D toy and on the 64-D digits (exact f⋆ of the empirical distribution)."
                if options.digits
                else "."
            )
        ),
        claims=claims(options, results),
        results=results,
        figures={"transport.png": "transport cost: IC and minibatch OT (horizontal lines) and the GC curve c(σ)"},
        notes=[
            f"The trained model: {model_dir} (EMA weights).",
            "For an empirical (Dirac) distribution and σ below the spacing of the data, "
            "f⋆(x⋆ + σz, σ) = x⋆ + σ_min z exactly, so c(σ) is flat near σ_min (it cannot decrease there); "
            "for data with a density it decreases from the IC cost.",
        ],
    )
