"""Experiment `discrepancy`: the proxy R̃_σ = E‖z − v_σ(x̃_σ)‖² per coupling, against σ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gcflow.experiments import figures
from gcflow.randomness import experiment_generator
from gcflow.experiments.common import as_point_fn, final_model, is_trainer_toy, set_threads, toy, train_toy
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport, fmt
from gcflow.theory.exact_map import ODETolerance, exact_consistency_map
from gcflow.theory.discrepancy import (
    DenoiserSettings,
    exact_ic_discrepancy,
    fit_denoiser_discrepancy,
    gaussian_gc_discrepancy,
    gaussian_ic_discrepancy,
    generator_pairs,
    independent_pairs,
    kernel_discrepancy,
    minibatch_ot_pairs,
)


@dataclass
class DiscrepancyOptions(CommonOptions):
    data: str = opt("two-modes", "toy distribution; gaussian:D for N(0, 0.5²I) in D dimensions (IC and GC analytic; kernel estimate only for D <= 3)")
    sigmas: tuple[float, ...] = opt((0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 80.0), "noise levels σ")
    ot_batches: tuple[int, ...] = opt((128, 512, 2048), "minibatch OT batch sizes")
    n_exact: int = opt(20000, "Monte-Carlo samples per σ for the exact IC value")
    n_kernel: int = opt(1500, "pairs per σ for the kernel estimate (O(n²) each)")
    n_train: int = opt(8000, "pairs per σ to train the denoiser estimator")
    n_test: int = opt(4000, "held-out pairs per σ to evaluate it")
    mlp_steps: int = opt(1500, "training steps of each denoiser estimator")
    predictor: str = opt("", "run folder of a trained model for 'GC (model)'; empty: train one with the toy-gc preset (trainer toys only)")
    predictor_steps: int = opt(2000, "training steps of that model when it is trained here (0: no trained predictor)")
    rtol: float = opt(1e-5, "ODE tolerance for GC with the exact f⋆")


def _is_gaussian(mix) -> bool:
    return mix.num_components == 1 and bool((mix.stds == mix.stds[0, 0]).all())


def run(options: DiscrepancyOptions, out: Path) -> ExperimentReport:
    set_threads(options.threads)
    mix = toy(options.data)
    dim = mix.dim
    sigmas = [float(s) for s in options.sigmas]
    use_kernel = dim <= 3
    gaussian = _is_gaussian(mix)

    # The GC predictors: the exact consistency map, and (for trainer toys or a given run) a trained model's EMA.
    model_dir: Path | None = None
    if options.predictor:
        model_dir = Path(options.predictor)
    elif is_trainer_toy(options.data) and options.predictor_steps > 0:
        model_dir = out / "runs" / "gc-predictor"
        train_toy(model_dir, "toy-gc", [f"data.name={options.data}", f"train.steps={options.predictor_steps}", f"train.seed={options.seed}",
                                        "train.eval_every=0", "train.checkpoint_every=0", "train.device=cpu"], keep_all=False)
    tol = ODETolerance(rtol=options.rtol, atol=options.rtol / 10)

    def exact_fn(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return exact_consistency_map(mix, x, s, 0.002, tol)

    couplings = {"IC": (independent_pairs(mix.sample, dim), True)}
    for b in options.ot_batches:
        couplings[f"OT b={b}"] = (minibatch_ot_pairs(mix.sample, dim, b), True)
    if model_dir is not None:
        couplings["GC (model)"] = (generator_pairs(mix.sample, dim, as_point_fn(final_model(model_dir))), False)
    couplings["GC (exact f⋆)"] = (generator_pairs(mix.sample, dim, exact_fn), False)

    # Exact values: IC with the oracle velocity; for one Gaussian also GC with f⋆ (closed form).
    exact = exact_ic_discrepancy(mix, sigmas, options.n_exact, experiment_generator(options.seed, 1))
    results: dict = {"data": options.data, "dim": dim, "sigmas": sigmas, "exact_ic": exact.__dict__, "couplings": {}}
    if gaussian:
        s0 = float(mix.stds[0, 0])
        results["closed_form"] = {"IC": [gaussian_ic_discrepancy(s, s0, dim) for s in sigmas],
                                  "GC (exact f⋆)": [gaussian_gc_discrepancy(s, s0, dim) for s in sigmas]}
    settings = DenoiserSettings(steps=options.mlp_steps, seed=options.seed)
    for k, (label, (coupling, level_free)) in enumerate(couplings.items()):
        g = experiment_generator(options.seed, 10 + k)
        n_kernel = options.n_kernel if use_kernel else 0
        total = options.n_train + options.n_test + n_kernel
        if level_free:  # the coupling does not depend on σ: one set of pairs serves every level
            end, z = coupling(sigmas[0], total, g)
            sets = [(end, z)] * len(sigmas)
        else:
            sets = [coupling(s, total, g) for s in sigmas]
        split = lambda lo, hi: (  # noqa: E731
            torch.cat([torch.full((hi - lo,), i, dtype=torch.int64) for i in range(len(sigmas))]),
            torch.cat([e[lo:hi] for e, _ in sets]),
            torch.cat([zz[lo:hi] for _, zz in sets]),
        )
        mlp = fit_denoiser_discrepancy(split(n_kernel, n_kernel + options.n_train), split(n_kernel + options.n_train, total), sigmas, settings)
        entry = {"mlp": mlp.values, "mlp_stderr": mlp.stderr}
        if use_kernel:
            kern = [kernel_discrepancy(e[:n_kernel], zz[:n_kernel], s) for (e, zz), s in zip(sets, sigmas)]
            entry.update({"kernel": [e.value for e in kern], "kernel_stderr": [e.stderr for e in kern], "kernel_bandwidth": [e.bandwidth for e in kern]})
            entry["best"] = [min(a, b) for a, b in zip(entry["kernel"], mlp.values)]
        else:
            entry["best"] = list(mlp.values)
        results["couplings"][label] = entry

    # Figure: R̃_σ per coupling, and the ratio to IC.
    fig, axes = figures.new_figure(2, 4.8, 3.6)
    axes[0].plot(sigmas, exact.values, color="k", lw=2, label="IC exact")
    if gaussian:
        axes[0].plot(sigmas, results["closed_form"]["GC (exact f⋆)"], color="0.4", lw=2, ls=":", label="GC (f⋆) closed form")
    for label, r in results["couplings"].items():
        main = r.get("kernel", r["mlp"])
        line = axes[0].plot(sigmas, main, marker="o", ms=3, label=label)[0]
        if use_kernel:
            axes[0].plot(sigmas, r["mlp"], ls="--", color=line.get_color(), lw=1)
        axes[1].plot(sigmas, [b / e for b, e in zip(r["best"], exact.values)], marker="o", ms=3, color=line.get_color(), label=label)
    how = "solid: kernel, dashed: MLP" if use_kernel else "MLP denoiser estimate"
    axes[0].set(xscale="log", yscale="log", xlabel="σ", ylabel="R̃_σ = E‖z − v_σ(x̃_σ)‖²", title=f"{options.data} (d = {dim}); {how}")
    axes[1].set(xscale="log", yscale="log", xlabel="σ", ylabel="R̃_σ / R̃_σ(IC exact)", title="relative to IC")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    figures.save(fig, out / "discrepancy.png")

    # Claims.
    claims = []
    checks = [("IC", exact.values)]
    if gaussian:
        checks.append(("GC (exact f⋆)", results["closed_form"]["GC (exact f⋆)"]))
    for label, ref in checks:
        r = results["couplings"][label]
        # A regression estimate cannot resolve R̃ far below its own excess risk; compare where R̃ ≥ 1% of R̃_IC.
        keep = [i for i in range(len(sigmas)) if ref[i] >= 0.01 * exact.values[i]]
        devs = {name: max(abs(r[name][i] / ref[i] - 1) for i in keep) for name in ("kernel", "mlp", "best") if name in r}
        below = [i for i in range(len(sigmas)) if i not in keep]
        claims.append(Claim(
            f"The regression estimators recover the exact {label} discrepancy (validation of the estimators).",
            f"largest relative deviation from the exact value at the {len(keep)} levels where R̃ ≥ 1% of R̃_IC: "
            + ", ".join(f"{k} {fmt(v)}" for k, v in devs.items())
            + (" ('best' = the smaller of the two upper-bound estimates)" if "kernel" in r else "")
            + ("" if not below else "; below that (σ = " + ", ".join(f"{sigmas[i]:g}" for i in below) + ") the estimates are upper bounds: "
               + ", ".join(f"{fmt(r['best'][i])} vs exact {fmt(ref[i])}" for i in below)) + ".",
            "agrees" if devs["best"] < 0.1 else ("partly" if devs["best"] < 0.3 else "disagrees"),
        ))
    gc = results["couplings"]["GC (exact f⋆)"]["best"]
    if gaussian:
        gc = results["closed_form"]["GC (exact f⋆)"]
    ot_labels = [f"OT b={b}" for b in options.ot_batches]
    ot_best = [min(results["couplings"][lab]["best"][i] for lab in ot_labels) for i in range(len(sigmas))]
    ot_worst = [max(results["couplings"][lab]["best"][i] for lab in ot_labels) for i in range(len(sigmas))]
    ic_ref = list(exact.values)
    n = len(sigmas)
    gc_ic = [i for i in range(n) if gc[i] <= 1.01 * ic_ref[i]]  # (GC → IC as σ → σ_min: equal within noise there)
    ot_ic = [i for i in range(n) if ot_worst[i] < ic_ref[i]]
    gc_ot = [i for i in range(n) if gc[i] < ot_best[i]]
    upper = list(range(n // 2, n))
    lv = lambda idx: ", ".join(f"{sigmas[i]:g}" for i in idx) or "none"  # noqa: E731
    claims.append(Claim(
        "R̃_GC < R̃_OT < R̃_IC (method spec §8, paper Fig. 3).",
        f"GC < IC at {len(gc_ic)}/{n} levels; OT < IC (every b) at {len(ot_ic)}/{n}; GC (exact f⋆) < best OT at {len(gc_ot)}/{n} (σ = {lv(gc_ot)}). "
        + "; ".join(f"σ = {sigmas[i]:g}: GC {fmt(gc[i])}, OT {fmt(ot_best[i])}…{fmt(ot_worst[i])}, IC {fmt(ic_ref[i])}" for i in (0, n // 2, n - 1)),
        "agrees" if len(gc_ot) == n and len(ot_ic) == n
        else ("partly" if len(gc_ic) == n and len(ot_ic) == n and set(upper) <= set(gc_ot) else "disagrees"),
    ))
    ratio = [a / b for a, b in zip(gc, ic_ref)]
    # Where an estimate is below 1% of R̃_IC it is only an upper bound (the estimator's resolution); judge the trend elsewhere.
    big = [i for i, s in enumerate(sigmas) if s >= 1.0 and (gaussian or ratio[i] >= 0.01)]
    shrinking = all(ratio[j] <= ratio[i] * 1.2 for i, j in zip(big, big[1:]))
    floor_note = "" if gaussian else " (ratios below 0.01 are upper bounds: the estimators' resolution)"
    msg = f"R̃_GC/R̃_IC with the exact f⋆: {', '.join(f'{r:.2g}' for r in ratio)} at σ = {', '.join(f'{s:g}' for s in sigmas)}{floor_note}"
    if "GC (model)" in results["couplings"]:
        ratio_m = [a / b for a, b in zip(results["couplings"]["GC (model)"]["best"], ic_ref)]
        msg += f"; with the trained model: {', '.join(f'{r:.2g}' for r in ratio_m)}"
        results["gc_model_over_ic"] = ratio_m
    claims.append(Claim(
        "The gap grows with σ; R̃_GC ≪ R̃_IC as σ → ∞ (Theorem 2).",
        msg + ".",
        "agrees" if ratio[-1] < 0.2 and shrinking else ("partly" if ratio[-1] < 0.5 else "disagrees"),
    ))
    results["gc_over_ic"] = ratio
    mid = n // 2
    ot_ratio = {lab: results["couplings"][lab]["best"][-1] / ic_ref[-1] for lab in ot_labels}
    claims.append(Claim(
        "Minibatch OT lowers the discrepancy more with larger batches.",
        f"R̃_OT/R̃_IC at σ = {sigmas[-1]:g}: " + ", ".join(f"{lab}: {r:.2g}" for lab, r in ot_ratio.items())
        + f"; at σ = {sigmas[mid]:g}: " + ", ".join(f"{lab}: {results['couplings'][lab]['best'][mid] / ic_ref[mid]:.2g}" for lab in ot_labels) + ".",
        "agrees" if all(a >= b for a, b in zip(list(ot_ratio.values()), list(ot_ratio.values())[1:])) else "partly",
    ))
    notes = ["The regression estimates are held-out risks of a fitted regressor, so they are upper bounds on R̃_σ up to Monte-Carlo noise"
             + ("; 'best' takes the smaller of the kernel and MLP estimates per level." if use_kernel else "."),
             "GC pairs use μ = 1 (every pair a GC pair) so that the coupling is purely the generator-augmented one.",
             "In low dimension a large minibatch OT coupling is close to the deterministic OT map, so z is nearly a function of x̃_σ and "
             "R̃_OT → 0 as b grows; in high dimension (images) minibatch OT stays close to IC. Run with data=gaussian:16 to see the dimension effect."]
    if model_dir is not None:
        notes.append(f"The trained predictor: {model_dir} (EMA weights).")
    return ExperimentReport(
        title=f"Proxy discrepancy R̃_σ per coupling ({options.data}, d = {dim})",
        summary=(f"On `{options.data}` we estimate R̃_σ = E‖z − E[z | x̃_σ]‖² for IC, minibatch OT (b = {', '.join(map(str, options.ot_batches))})"
                 + (", GC with a trained model" if model_dir is not None else "") + " and GC with the exact f⋆: exactly for IC (oracle velocity)"
                 + (" and GC (closed form for a Gaussian)" if gaussian else "") + ", and for every coupling by the paper's method (an MLP denoiser trained on the "
                 "coupling's pairs, scored on held-out pairs)" + (" and by leave-one-out local-linear kernel regression." if use_kernel else ".")),
        claims=claims,
        results=results,
        figures={"discrepancy.png": "R̃_σ against σ per coupling" + (" (solid: kernel estimate, dashed: MLP denoiser" if use_kernel else " (MLP denoiser estimate")
                 + ", black: exact IC); right: ratio to IC"},
        notes=notes,
    )
