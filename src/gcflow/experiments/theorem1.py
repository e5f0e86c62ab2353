"""Experiment `theorem1`: N^α (L_CT − L_CD) against its predicted limit C T^{α−1} R(θ), and the scaled gradients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gcflow.experiments import figures
from gcflow.randomness import experiment_generator
from gcflow.experiments.common import final_model, set_threads, toy
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.networks.mlp import ToyMLP
from gcflow.precond import ConsistencyModel
from gcflow.theory.theorem1 import CommonSamples, Grid, TheoremDistance, check_gradients, check_theorem1, theorem_distance


@dataclass
class Theorem1Options(CommonOptions):
    data: str = opt("two-modes", "toy distribution (its exact velocity drives L_CD)")
    samples: int = opt(16384, "common random triples (x⋆, z, u) for the losses and the limit")
    t_hi: float = opt(2.0, "upper end of the σ interval [σ_min, t_hi] (T = t_hi − σ_min)")
    n_min: int = opt(10, "smallest grid size N")
    n_max: int = opt(1280, "largest grid size N (doubling from n_min)")
    distances: tuple[str, ...] = opt(("l2", "pseudo_huber", "pseudo_huber:0.03", "l1"), "distances; pseudo_huber:C sets Huber's c (default c = 0.00054·sqrt(d))")
    grad_samples: int = opt(8192, "samples for the scaled-gradient comparison")
    grad_chunks: int = opt(16, "independent chunks used to estimate the gradients' Monte-Carlo noise")
    grad_ns: tuple[int, ...] = opt((10, 40, 160, 640), "grid sizes N for the scaled-gradient comparison")
    width: int = opt(64, "width of the random-init network (ignored with checkpoint)")
    depth: int = opt(2, "residual blocks of the random-init network")
    checkpoint: str = opt("", "use this trained run's EMA model (folder or checkpoint file) instead of a random network")


def _distance(spec: str, dim: int) -> TheoremDistance:
    name, _, c = spec.partition(":")
    d = theorem_distance(name, dim, float(c) if c else None)
    if c:
        d = TheoremDistance(f"{name} (c={float(c):g})", d.fn, d.C, d.alpha)
    elif name == "pseudo_huber":
        d = TheoremDistance(f"pseudo_huber (c={1 / (2 * d.C):.2g})", d.fn, d.C, d.alpha)
    return d


def _decreasing(xs: list[float]) -> bool:
    return all(b < a for a, b in zip(xs, xs[1:]))


def run(options: Theorem1Options, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    mix = toy(options.data)
    dim = mix.dim
    den = mix.denoise

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x - den(x, t)) / t[:, None]

    # The fixed network, in float64 so that O(N^-α) differences of O(1) losses are measurable.
    if options.checkpoint:
        model = final_model(Path(options.checkpoint)).double().eval()
        origin = f"the EMA model of {options.checkpoint}"
    else:
        torch.manual_seed(options.seed)
        model = ConsistencyModel(ToyMLP(dim, options.width, options.depth), 0.5, 0.002).double().eval()
        origin = f"a randomly initialised ToyMLP (width {options.width}, depth {options.depth}, seed {options.seed})"
    sigma_min = float(getattr(model, "sigma_min", 0.002))
    grid = Grid(sigma_min, options.t_hi)
    ns = []
    n = options.n_min
    while n <= options.n_max:
        ns.append(n)
        n *= 2
    samples = CommonSamples.draw(mix.sample, options.samples, dim, experiment_generator(options.seed, 1))
    grad_samples = CommonSamples.draw(mix.sample, options.grad_samples, dim, experiment_generator(options.seed, 2))

    results, claims = {}, []
    for spec in options.distances:
        dist = _distance(spec, dim)
        res = check_theorem1(model, velocity, samples, grid, dist, ns)
        res.gradients = check_gradients(model, velocity, grad_samples, grid, list(options.grad_ns), dist, chunks=options.grad_chunks)
        results[spec] = res.to_dict()

    # Figures: the scaled gap against N with its predicted limit, and the relative error.
    fig, axes = figures.new_figure(2)
    for spec in options.distances:
        r = results[spec]
        label = f"{r['distance']} (α={r['alpha']:g})"
        figures.line(axes[0], ns, [g / r["limit"] for g in r["scaled_gap"]], label)
        figures.line(axes[1], ns, r["rel_error"], label)
    axes[0].axhline(1.0, color="0.4", ls="--", lw=1, label="predicted limit")
    axes[0].set(xscale="log", xlabel="N", ylabel="N^α (L_CT − L_CD) / (C T^{α−1} R)", title="scaled loss gap / predicted limit")
    axes[1].set(xscale="log", yscale="log", xlabel="N", ylabel="relative error", title="|N^α ΔL − limit| / limit")
    axes[1].plot(ns, [results[options.distances[0]]["rel_error"][0] * ns[0] / n for n in ns], color="0.6", ls=":", label="∝ 1/N")
    for ax in axes:
        ax.legend(fontsize=7)
    figures.save(fig, out / "theorem1_convergence.png")

    fig, axes = figures.new_figure(1)
    for spec in options.distances:
        g = results[spec]["gradients"]
        figures.line(axes[0], g["ns"], g["noise_ratio"], f"{results[spec]['distance']} (α={results[spec]['alpha']:g})")
    axes[0].axhline(4.0, color="0.4", ls="--", lw=1, label="agreement threshold")
    axes[0].axhline(1.0, color="0.7", ls=":", lw=1, label="pure noise")
    axes[0].set(xscale="log", yscale="log", xlabel="N", ylabel="‖ΔG‖² / noise²", title="scaled gradients: CT − CD gap vs Monte-Carlo noise")
    axes[0].legend(fontsize=7)
    figures.save(fig, out / "theorem1_gradients.png")

    # Claims.
    for spec in options.distances:
        r = results[spec]
        last = r["rel_error"][-1]
        conv = last < 0.05 and r["rel_error"][-1] < r["rel_error"][0]
        claims.append(Claim(
            f"{r['distance']}: N^α (L_CT − L_CD) → C T^{{α−1}} R(θ) with C = {fmt(r['C'])}, α = {r['alpha']:g} (Theorem 1).",
            f"N^α ΔL = {fmt(r['scaled_gap'][0])} at N = {ns[0]}, {fmt(r['scaled_gap'][-1])} at N = {ns[-1]}; predicted limit {fmt(r['limit'])} "
            f"(MC ±{fmt(r['limit_stderr'])}); relative error {fmt(r['rel_error'][0])} → {fmt(last)}.",
            "agrees" if conv else ("inconclusive" if _decreasing(r["rel_error"][-3:]) else "disagrees"),
        ))
    r0 = results[options.distances[0]]
    claims.append(Claim(
        "R(θ) > 0: the CT loss exceeds the CD loss by a term that survives the continuous-time limit.",
        "; ".join(f"{results[s]['distance']}: R = {fmt(results[s]['R'])}" for s in options.distances)
        + f"; α = 2 form ∫λE‖J(z − v)‖² = {fmt(r0['R_alpha2'])}.",
        "agrees" if all(results[s]["R"] > 0 for s in options.distances) else "disagrees",
    ))
    for spec in options.distances:
        r = results[spec]
        g = r["gradients"]
        expect_agree = r["alpha"] == 2
        finite_agree = g["noise_ratio"][-1] < g["threshold"]
        ok = (g["agree"] == expect_agree)
        claims.append(Claim(
            f"{r['distance']}: scaled gradients N^{{α−1}}∇L_CT and N^{{α−1}}∇L_CD {'agree' if expect_agree else 'differ'} in the limit (α = {r['alpha']:g}).",
            f"gap/noise ratio {fmt(g['noise_ratio'][0])} at N = {g['ns'][0]} → {fmt(g['noise_ratio'][-1])} at N = {g['ns'][-1]}, "
            f"{fmt(g['limit_noise_ratio'])} for the limit (≈ 1: within noise; threshold {g['threshold']:g}); "
            f"debiased relative gap {fmt(g['rel_gap_debiased'][-1])} at N = {g['ns'][-1]}, {fmt(g['limit_rel_gap_debiased'])} in the limit."
            + ("" if finite_agree == g["agree"] else " At the largest N tested the finite-N gradients still behave "
               + ("like α = 1 (Δ‖∂f‖ is not yet ≪ c)." if expect_agree else "like the limit.")),
            "agrees" if ok else "disagrees",
        ))
    notes = [
        f"The fixed network is {origin}, run in float64; L_CD uses the exact velocity of {options.data}; λ ≡ 1; σ_t = t on [{sigma_min}, {options.t_hi}].",
        "Common random numbers: every N uses the same (x⋆, z, u) with level index ⌊uN⌋, and the limit uses t = σ_min + uT on the same samples, "
        "so the relative error measures discretisation only; the MC ± is the sampling error of R(θ) itself.",
        "Pseudo-Huber is α = 2 only once Δ‖∂f‖ ≪ c; with the iCT constant c = 0.00054·sqrt(d) (7.6e-4 in 2-D) that needs N ≫ T‖∂f‖/c, far beyond 1280, "
        "so at practical N it behaves like the α = 1 norm (its gap grows like N and its gradients disagree).",
    ]
    return ExperimentReport(
        title="Theorem 1: the CT/CD discrepancy survives the continuous-time limit",
        summary=(f"For {origin} on `{options.data}`, we measure N^α (L_CT − L_CD) on equally spaced grids N = {ns[0]} … {ns[-1]} "
                 f"with {options.samples} common random triples, and the predicted limit C T^{{α−1}} R(θ) from forward-mode "
                 "Jacobian-vector products; then the scaled gradients of both losses."),
        claims=claims,
        results={"ns": ns, "T": grid.length, "distances": results},
        figures={"theorem1_convergence.png": "N^α(L_CT − L_CD) relative to its predicted limit, and the relative error, against N",
                 "theorem1_gradients.png": "scaled-gradient gap between CT and CD relative to Monte-Carlo noise, against N"},
        notes=notes,
    )
