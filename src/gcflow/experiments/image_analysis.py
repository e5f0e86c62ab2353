"""Numbers and verdicts of the image studies, from the per-run records of `image_runs`.

Every quantity is computed per seed and then compared across methods with `lower_verdict`, so a
difference counts only when it exceeds twice its standard error over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gcflow.experiments.convergence import lower_verdict
from gcflow.experiments.report import Claim, fmt

FINAL_WINDOW = 2  # the final value of a curve is the mean of its last FINAL_WINDOW evaluations (damps eval noise)
EARLY_FRACTION = 0.2  # "early in training": the evaluation nearest to this fraction of the budget


def final_value(values: Sequence[float], window: int = FINAL_WINDOW) -> float:
    """Mean of the last `window` values of a curve (values: one per evaluation)."""
    tail = [v for v in values[-window:] if v is not None]
    return float(np.mean(tail)) if tail else math.nan


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float) -> float:
    """The first evaluation step at which the curve is at or below `target`; inf if it never is."""
    for step, v in zip(steps, values):
        if v is not None and v <= target:
            return float(step)
    return math.inf


def smooth(values: Sequence[float]) -> list[float]:
    """Centred running mean over three evaluations (two at the ends): one evaluation's FD swings by
    ±15 % on 297 samples, more than the trend a flattening criterion looks for."""
    vals = [math.nan if v is None else float(v) for v in values]
    return [float(np.nanmean(vals[max(i - 1, 0) : i + 2])) for i in range(len(vals))]


def flattening_step(steps: Sequence[int], values: Sequence[float], tol: float = 0.1) -> int:
    """The first evaluation step from which the smoothed curve stays within (1 + tol) × its best value."""
    sm = smooth(values)
    best = min(sm)
    for i, step in enumerate(steps):
        if all(v <= (1 + tol) * best for v in sm[i:]):
            return int(step)
    return int(steps[-1])


def flattening_note(records: list[dict[str, Any]], label: str, tol: float = 0.1) -> str:
    """Where the seed-mean classifier FD curve of `label`'s runs flattens within the study's own budget.

    Args:
        records: the label's per-seed run records (same evaluation steps; `classifier_fd` may hold None).
        label: its name in the sentence, e.g. "IC".
    """
    steps = records[0]["steps"]
    curves = np.array([[np.nan if v is None else v for v in r["classifier_fd"]] for r in records], dtype=float)
    mean = np.nanmean(curves, axis=0).tolist()
    at = flattening_step(steps, mean, tol)
    text = (
        f"{label}'s seed-mean classifier FD, smoothed over three evaluations, stays within {tol:.0%} of its best "
        f"({fmt(min(smooth(mean)))}) from step {at} of {steps[-1]} on"
    )
    return text + (": still falling at the end of the budget." if at == steps[-1] else ".")


def budget_claims(records: list[dict[str, Any]], tol: float = 0.1) -> list[Claim]:
    """Where one long IC run's FD curve flattens (a measurement, not a claim of the paper)."""
    out = []
    for r in records:
        fd = r["classifier_fd"]
        curve = ", ".join(f"{s}: {fmt(v)}" for s, v in zip(r["steps"], fd))
        out.append(
            Claim(
                f"Where the IC curve flattens (seed {r['spec'].get('seed', '?')}, {r['steps'][-1]} steps).",
                f"classifier FD by step: {curve}; smoothed over three evaluations, within {tol:.0%} of its best "
                f"({fmt(min(smooth(fd)))}) "
                f"from step {flattening_step(r['steps'], fd, tol)} on; {fmt(r['cpu_seconds'])} s CPU.",
                "measured",
            )
        )
    return out


def censor(values: Sequence[float], bound: float) -> list[float]:
    """Replace inf ("never reached within the budget") by `bound`, a lower bound on the true value, so
    that seed statistics stay finite; a method that never reaches the target then counts as reaching
    it just after the budget, which only understates how much slower it is."""
    return [bound if math.isinf(v) else float(v) for v in values]


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Linear interpolation of the curve (xs increasing) at x; clipped to the curve's ends."""
    pts = [(a, b) for a, b in zip(xs, ys) if b is not None]
    if not pts:
        return math.nan
    return float(np.interp(x, [p[0] for p in pts], [p[1] for p in pts]))


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for a claim tested at several settings: unanimous, else 'partly' if any agree."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return "partly" if "agrees" in verdicts else "inconclusive" if "disagrees" not in verdicts else "disagrees"


def summarise(
    records: list[dict[str, Any]], target: float, cpu_budget: float, metric: str = "classifier_fd"
) -> dict[str, Any]:
    """Per-seed numbers of one method (records: one per seed, same budget and evaluation steps).

    target: the FD to reach (IC's final mean); cpu_budget: CPU seconds at which methods are compared
    at equal compute. Each run's CPU time is spread evenly over its steps (constant cost per step).
    """
    steps = records[0]["steps"]
    budget = float(steps[-1])
    early = int(np.argmin([abs(s - EARLY_FRACTION * budget) for s in steps]))
    out: dict[str, list[float]] = {
        "final": [],
        "final_pixel_sw": [],
        "steps_to_target": [],
        "at_cpu_budget": [],
        "early": [],
        "rise": [],
        "cpu_per_kstep": [],
    }
    for r in records:
        fd = r[metric]
        out["final"].append(final_value(fd))
        out["final_pixel_sw"].append(final_value(r["pixel_sliced_w2"]))
        out["steps_to_target"].append(steps_to_reach(r["steps"], fd, target))
        per_step = r["cpu_seconds"] / max(r["steps"][-1], 1)
        out["cpu_per_kstep"].append(1000 * per_step)
        out["at_cpu_budget"].append(value_at([s * per_step for s in r["steps"]], fd, cpu_budget))
        out["early"].append(fd[early])
        out["rise"].append(out["final"][-1] - min(v for v in fd[early:] if v is not None))
    out["steps_to_target"] = censor(out["steps_to_target"], budget + (steps[1] - steps[0] if len(steps) > 1 else 0))
    summary: dict[str, Any] = {"per_seed": out, "budget": budget, "early_step": steps[early]}
    for key, vals in out.items():
        summary[key] = float(np.mean(vals))
        summary[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    summary["reached"] = sum(s <= budget for s in out["steps_to_target"])
    summary["seeds"] = len(records)
    summary["seed_ids"] = [r.get("spec", {}).get("seed") for r in records]
    return summary


def summarise_all(by_label: dict[str, list[dict[str, Any]]], reference: str = "IC") -> dict[str, dict[str, Any]]:
    """`summarise` for every method, with the reference method's final FD as target and its mean CPU
    time as the equal-compute budget."""
    ref = by_label[reference]
    target = float(np.mean([final_value(r["classifier_fd"]) for r in ref]))
    cpu_budget = float(np.mean([r["cpu_seconds"] for r in ref]))
    out = {label: summarise(recs, target, cpu_budget) for label, recs in by_label.items()}
    for s in out.values():
        s["target"], s["cpu_budget"] = target, cpu_budget
    return out


def pm(s: dict[str, Any], key: str) -> str:
    """'mean ± std' of a summarised quantity (step counts as whole numbers)."""
    show = (lambda x: f"{x:.0f}") if key == "steps_to_target" else fmt
    return f"{show(s[key])} ± {show(s[key + '_std'])}" if s["seeds"] > 1 else show(s[key])


def rule(seeds: int) -> str:
    """The verdict rule, for the measured column (`seeds`: the fewest seeds of any method compared;
    with one seed on either side `lower_verdict` falls back to the 10 % rule)."""
    if seeds > 1:
        return f"verdict: difference of means against twice its standard error over {seeds} seeds"
    return "one seed: differences under 10% are called inconclusive"


def paired_difference(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, float, int] | None:
    """Mean and twice the standard error of the per-seed differences a − b over the seeds both methods
    ran, or None with fewer than two. Runs of one seed share their initial weights and batches (the
    seed decides both), so seed-to-seed swings common to all methods cancel in the difference."""
    ids_a, ids_b = a.get("seed_ids", []), b.get("seed_ids", [])
    common = [x for x in ids_a if x is not None and x in ids_b]
    if len(common) < 2:
        return None
    d = [a["per_seed"][key][ids_a.index(x)] - b["per_seed"][key][ids_b.index(x)] for x in common]
    return float(np.mean(d)), 2.0 * float(np.std(d, ddof=1)) / math.sqrt(len(d)), len(d)


def _paired_text(s: dict[str, dict[str, Any]], labels: list[str], ref: str, key: str) -> str:
    """A supplementary reading: per-seed differences to `ref` (not the verdict's rule, which is unpaired)."""
    parts = []
    for k in labels:
        got = paired_difference(s[k], s[ref], key)
        if got is not None:
            mean, margin, n = got
            side = "lower" if mean < -margin else "higher" if mean > margin else "no difference"
            parts.append(f"{k} − {ref} {fmt(mean)} ± {fmt(margin)} ({side}, {n} seeds)")
    return f"; paired by seed (difference ± 2 SE): {', '.join(parts)}" if parts else ""


def _vs(s: dict[str, dict[str, Any]], labels: list[str], ref: str, key: str) -> tuple[str, str]:
    text = ", ".join(f"{k} {pm(s[k], key)}" for k in [*labels, ref]) + _paired_text(s, labels, ref, key)
    verdict = combine([lower_verdict(s[k]["per_seed"][key], s[ref]["per_seed"][key]) for k in labels])
    return text, verdict


def mu_claims(s: dict[str, dict[str, Any]]) -> list[Claim]:
    """The paper's μ claims (Fig. 5, Table 1) against the measured summaries (labels "IC", "OT", "GC μ=M")."""
    mid = [k for k in s if k.startswith("GC μ=") and 0.3 <= float(k.split("=")[1]) <= 0.7]
    n, claims = s["IC"]["seeds"], []
    r = rule(min(v["seeds"] for v in s.values()))
    if mid:
        text, verdict = _vs(s, mid, "IC", "final")
        claims.append(
            Claim(
                "GC with 0.3 ≤ μ ≤ 0.7 ends with better samples than IC (lower final FD).",
                f"final classifier FD (mean ± std): {text}; {r}.",
                verdict,
            )
        )
        text, verdict = _vs(s, mid, "IC", "final_pixel_sw")
        claims.append(
            Claim("The same in pixel space (lower final pixel sliced W2).", f"final pixel SW: {text}; {r}.", verdict)
        )
        text, verdict = _vs(s, mid, "IC", "steps_to_target")
        claims.append(
            Claim(
                "GC with 0.3 ≤ μ ≤ 0.7 converges faster than IC (fewer steps to IC's final FD).",
                f"steps to reach IC's final FD {fmt(s['IC']['target'])}: {text} (runs that never reach it count as "
                f"budget + one evaluation; reached by "
                + ", ".join(f"{k} {s[k]['reached']}/{n}" for k in [*mid, "IC"])
                + f"); {r}.",
                verdict,
            )
        )
        text, verdict = _vs(s, mid, "IC", "at_cpu_budget")
        claims.append(
            Claim(
                "At equal compute (GC pays an extra predictor pass), GC still beats IC.",
                f"FD at IC's CPU time {fmt(s['IC']['cpu_budget'])} s: {text}; CPU s per 1000 steps: "
                + ", ".join(f"{k} {fmt(s[k]['cpu_per_kstep'])}" for k in [*mid, "IC"])
                + f"; {r}.",
                verdict,
            )
        )
        if "OT" in s:
            text, verdict = _vs(s, mid, "OT", "final")
            claims.append(
                Claim("GC with 0.3 ≤ μ ≤ 0.7 ends better than minibatch OT.", f"final FD: {text}; {r}.", verdict)
            )
    if "OT" in s:
        text, verdict = _vs(s, ["OT"], "IC", "final")
        claims.append(Claim("Minibatch OT improves on IC (paper Table 1).", f"final FD: {text}; {r}.", verdict))
    if "GC μ=1" in s:
        early = s["IC"]["early_step"]
        others = [k for k in s if k != "GC μ=1"]
        text, verdict = _vs(s, ["GC μ=1"], "IC", "early")
        claims.append(
            Claim(
                f"μ = 1 is fastest early (lowest FD at step {early}).",
                f"FD at step {early}: "
                + ", ".join(f"{k} {pm(s[k], 'early')}" for k in others + ["GC μ=1"])
                + f"; verdict μ = 1 vs IC; {r}.",
                verdict,
            )
        )
        claims.append(
            Claim(
                "…and then degrades (its FD rises from its best value more than IC's does).",
                f"final FD minus the best FD after step {early}: GC μ=1 {pm(s['GC μ=1'], 'rise')}, "
                f"IC {pm(s['IC'], 'rise')}; {r}.",
                lower_verdict(s["IC"]["per_seed"]["rise"], s["GC μ=1"]["per_seed"]["rise"]),
            )
        )
    return claims


def ablation_claims(s: dict[str, dict[str, Any]], mu: float) -> list[Claim]:
    """EMA vs online predictor, frozen predictors (Fig. 4) and dropout under GC."""
    gc, claims = f"GC μ={mu:g}", []
    r = rule(min(v["seeds"] for v in s.values()))
    if gc in s and f"{gc} online" in s:
        text, verdict = _vs(s, [gc], f"{gc} online", "final")
        claims.append(
            Claim(
                "An EMA predictor beats the online one (paper: FID 5.95 vs 6.73).",
                f"final FD, EMA vs online predictor: {text}; {r}.",
                verdict,
            )
        )
    frozen = [k for k in s if k.startswith("frozen")]
    if frozen:
        text, verdict = _vs(s, frozen, "IC", "steps_to_target")
        claims.append(
            Claim(
                "GC-only training (μ = 1) with a frozen IC predictor converges faster than IC (Fig. 4).",
                f"steps to IC's final FD {fmt(s['IC']['target'])}: {text}; {r}.",
                verdict,
            )
        )
    if len(frozen) >= 2:
        lo, hi = sorted(frozen, key=lambda k: float(k.split()[-1].rstrip("%")))[:: len(frozen) - 1]
        text, verdict = _vs(s, [hi], lo, "final")
        claims.append(
            Claim(
                "The frozen predictor's quality matters: the better-trained one gives the better model.",
                f"final FD: {text}; {r}.",
                verdict,
            )
        )
    drop = [k for k in s if k.startswith(f"{gc} dropout")]
    if gc in s and drop:
        text, verdict = _vs(s, [gc], drop[0], "final")
        claims.append(
            Claim(
                "Dropout hurts GC (paper: 7.77 with dropout); GC trains best with dropout 0.",
                f"final FD, dropout 0 vs the IC setting's dropout: {text}; {r}.",
                verdict,
            )
        )
    return claims


def table(s: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per method with the study's headline numbers (mean ± std over seeds)."""
    lines = [
        (
            "| method | final classifier FD | final pixel SW | steps to IC's final FD | FD at IC's CPU time "
            "| CPU s / 1000 steps |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for k, v in s.items():
        missed = v["reached"] < v["seeds"]
        reach = pm(v, "steps_to_target") + (f" ({v['reached']}/{v['seeds']} reached)" if missed else "")
        lines.append(
            f"| {k} | {pm(v, 'final')} | {pm(v, 'final_pixel_sw')} | {reach} | {pm(v, 'at_cpu_budget')} | "
            f"{fmt(v['cpu_per_kstep'])} |"
        )
    return lines
