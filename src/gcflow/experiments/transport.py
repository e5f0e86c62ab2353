"""Experiment `transport`: transport cost of IC, minibatch OT and the GC curve c(σ)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcflow.experiments import figures
from gcflow.randomness import experiment_generator
from gcflow.experiments.common import as_point_fn, final_model, set_threads, toy, train_toy
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.theory.exact_map import ODETolerance, exact_consistency_map
from gcflow.theory.transport import generator_cost_curve, independent_cost, minibatch_ot_cost


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


def _costs(mix, n: int, batches: tuple[int, ...], g: torch.Generator) -> dict:
    x0 = mix.sample(n, g)
    z = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    out = {"IC": independent_cost(x0, z).__dict__}
    for b in batches:
        out[f"OT b={b}"] = minibatch_ot_cost(x0, z, b).__dict__ if n >= b else None
    return out


def run(options: TransportOptions, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    mix = toy(options.data)
    sigmas = [float(s) for s in np.geomspace(0.002, 80.0, options.levels)]
    results: dict = {"sigmas": sigmas}

    # 2-D: IC and OT costs, and c(σ) with the exact map and with a trained model.
    results["toy"] = _costs(mix, options.n, options.ot_batches, experiment_generator(options.seed, 1))
    g = experiment_generator(options.seed, 2)
    n_curve = max(options.n // 4, 256)
    x0 = mix.sample(n_curve, g)
    z = torch.randn(n_curve, mix.dim, generator=g, dtype=torch.float64)
    tol = ODETolerance(rtol=options.rtol, atol=options.rtol / 10)
    exact_curve = generator_cost_curve(lambda x, s: exact_consistency_map(mix, x, s, 0.002, tol), x0, z, sigmas)
    if options.model:
        model_dir = Path(options.model)
    else:
        model_dir = out / "runs" / "gc-model"
        train_toy(model_dir, "toy-gc", [f"data.name={options.data}", f"train.steps={options.model_steps}", f"train.seed={options.seed}",
                                        "train.eval_every=0", "train.checkpoint_every=0", "train.device=cpu"], keep_all=False)
    model_curve = generator_cost_curve(as_point_fn(final_model(model_dir)), x0, z, sigmas)
    results["toy"]["GC exact"] = [c.__dict__ for c in exact_curve]
    results["toy"]["GC model"] = [c.__dict__ for c in model_curve]

    # 64-D digits: IC, OT and the exact GC curve of the empirical distribution.
    if options.digits:
        dig = toy("digits")
        results["digits"] = _costs(dig, options.digits_n, options.ot_batches, experiment_generator(options.seed, 3))
        dsig = [float(s) for s in np.geomspace(0.002, 80.0, options.digits_levels)]
        g = experiment_generator(options.seed, 4)
        xd = dig.sample(options.digits_curve_n, g)
        zd = torch.randn(options.digits_curve_n, dig.dim, generator=g, dtype=torch.float64)
        dtol = ODETolerance(rtol=max(options.rtol, 1e-4), atol=max(options.rtol, 1e-4) / 10)
        results["digits"]["sigmas"] = dsig
        results["digits"]["GC exact"] = [c.__dict__ for c in generator_cost_curve(lambda x, s: exact_consistency_map(dig, x, s, 0.002, dtol), xd, zd, dsig)]

    # Figure.
    panels = [("toy", options.data, sigmas)] + ([("digits", "digits (64-D)", results["digits"]["sigmas"])] if options.digits else [])
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

    # Claims.
    claims = []
    for key, title in [(p[0], p[1]) for p in panels]:
        r = results[key]
        ic = r["IC"]["value"]
        ots = {b: r[f"OT b={b}"]["value"] for b in options.ot_batches if r.get(f"OT b={b}")}
        gc = [c["value"] for c in r["GC exact"]]
        gmin_sigma = r.get("sigmas", sigmas)[int(np.argmin(gc))]
        best_ot = min(ots.values())
        claims.append(Claim(
            f"{title}: minibatch OT costs less than IC, and less with larger batches.",
            f"IC {fmt(ic)}; " + ", ".join(f"OT b={b}: {fmt(v)}" for b, v in ots.items()) + ".",
            "agrees" if all(v < ic for v in ots.values()) and list(ots.values()) == sorted(ots.values(), reverse=True) else "partly",
        ))
        below = [s for s, v in zip(r.get("sigmas", sigmas), gc) if v < best_ot]
        ic_err = r["IC"]["stderr"]
        under_ic = all(v <= ic + 4 * ic_err for v in gc)
        # c(σ_min) is the IC cost by construction (f(x, σ_min) = x), so GC can only undercut OT at larger σ.
        claims.append(Claim(
            f"{title}: GC transports less than OT, which transports less than IC (c(σ) below the OT cost).",
            f"c(σ) with f⋆ ranges {fmt(min(gc))} … {fmt(max(gc))} (minimum at σ = {gmin_sigma:.3g}); below the best OT cost {fmt(best_ot)} "
            f"for {len(below)} of {len(gc)} levels" + (f" (σ ≥ {min(below):.3g})" if below else "") + f"; c(σ_min) = {fmt(gc[0])} vs IC {fmt(ic)} "
            "(equal by construction, since f(x, σ_min) = x).",
            "agrees" if under_ic and gc[-1] < best_ot else ("partly" if under_ic or gc[-1] < best_ot else "disagrees"),
        ))
        # Decreasing near σ_min (first levels) and for large σ (last levels).
        n_end = max(2, len(gc) // 4)
        dec_lo = gc[1] < gc[0]
        dec_hi = all(b <= a * 1.01 for a, b in zip(gc[-n_end:], gc[-n_end + 1 :]))
        claims.append(Claim(
            f"{title}: c(σ) decreases near σ_min and for large σ.",
            f"c = {fmt(gc[0])}, {fmt(gc[1])}, {fmt(gc[2])} at the three smallest σ; {', '.join(fmt(v) for v in gc[-n_end:])} at the {n_end} largest.",
            "agrees" if dec_lo and dec_hi else ("partly" if dec_lo or dec_hi else "disagrees"),
        ))
    mc = [c["value"] for c in results["toy"]["GC model"]]
    ex = [c["value"] for c in results["toy"]["GC exact"]]
    dev = max(abs(a / b - 1) for a, b in zip(mc, ex))
    claims.append(Claim(
        "A trained GC model's curve follows the exact one (how close the model is to f⋆ along the path).",
        f"{options.data}: max relative deviation of c(σ), trained model vs f⋆: {fmt(dev)}; at σ = 80: {fmt(mc[-1])} vs {fmt(ex[-1])}.",
        "measured",
    ))
    return ExperimentReport(
        title="Transport cost of the couplings",
        summary=(f"Mean squared distance between each trajectory end and its noise: IC, minibatch OT (b = {', '.join(map(str, options.ot_batches))}) "
                 f"and the GC curve c(σ) = E‖f(x⋆ + σz, σ) − z‖² on {options.levels} levels in [σ_min, 80], with the exact f⋆ and with a trained model"
                 + (", on the 2-D toy and on the 64-D digits (exact f⋆ of the empirical distribution)." if options.digits else ".")),
        claims=claims,
        results=results,
        figures={"transport.png": "transport cost: IC and minibatch OT (horizontal lines) and the GC curve c(σ)"},
        notes=[f"The trained model: {model_dir} (EMA weights).",
               "For an empirical (Dirac) distribution and σ below the spacing of the data, f⋆(x⋆ + σz, σ) = x⋆ + σ_min z exactly, so c(σ) is flat "
               "near σ_min (it cannot decrease there); for data with a density it decreases from the IC cost."],
    )
