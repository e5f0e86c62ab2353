"""Experiments `images-mu`, `images-ablations`, `images-fashion`, `images-ect`: the paper's image claims on real images.

* images-mu: IC, GC at each μ and minibatch OT, several seeds, classifier FD and pixel sliced W2 at
  every evaluation (Fig. 5, Table 1): final FD, steps to reach IC's final FD, FD at equal CPU time.
* images-ablations: EMA vs online predictor, GC-only (μ = 1) with a predictor frozen from an IC run
  stopped at given fractions of the budget (Fig. 4), dropout 0 vs the IC setting's dropout under GC.
* images-fashion: images-mu with Fashion-MNIST at 14×14 (IC, GC μ = 0.5, OT).
* images-ect: the μ comparison in the ECT setting (Table 2): a diffusion teacher is trained once (or
  given), then ECT-IC and ECT-GC (μ = 0.3) are tuned from its weights.

Every run is the bundled trainer on a preset (`<preset>-ic`, `-gc`, `-ot`) plus overrides; each
finished run is cached as JSON (`image_runs`), so a study interrupted mid-way resumes from its
finished runs, and the mu and ablation studies share their IC and GC runs when they share a cache.
On a GPU with other data: `gcflow experiment images-mu preset=mnist data=mnist root=DIR device=cuda
steps=20000 eval_every=1000 workers=1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gcflow.experiments import figures, image_analysis
from gcflow.experiments.image_runs import RunSpec, StudyPaths, execute
from gcflow.experiments.options import CommonOptions, opt
from gcflow.experiments.report import Claim, ExperimentReport

DEFAULT_FROZEN = (0.2, 1.0)  # Fig. 4: predictors from an IC run stopped at 20 % and at 100 % of the budget


@dataclass
class ImagesOptions(CommonOptions):
    preset: str = opt("digits", "preset family: trains <preset>-ic, <preset>-gc and <preset>-ot (see gcflow presets)")
    data: str = opt("", "data.name override (empty: the preset's)")
    root: str = opt("", "data.root: folder with the dataset's files (digits need none)")
    resolution: int = opt(0, "data.resolution override (0: the preset's)")
    steps: int = opt(5000, "training steps of every run (the study budget; on digits IC flattens from ~4 000 of 5 000)")
    eval_every: int = opt(250, "evaluate (classifier FD, pixel sliced W2) every this many steps")
    eval_samples: int = opt(1000, "samples per evaluation (scored at the held-out split's size when smaller)")
    seeds: tuple[int, ...] = opt((0, 1, 2), "training seeds of every method")
    mus: tuple[float, ...] = opt((0.0, 0.3, 0.5, 0.7, 1.0), "GC μ values (0 is IC, trained from <preset>-ic)")
    ot: bool = opt(True, "also train minibatch OT (<preset>-ot)")
    device: str = opt("cpu", "train.device of every run (cpu, cuda, ...)")
    workers: int = opt(2, "runs trained at once, each in its own process (1: one after the other, in this process)")
    cache: str = opt("", "folder of the per-run JSON records (default: OUT/cache); reused runs are skipped")
    work: str = opt("", "folder of the run folders (default: OUT/runs)")
    extra: tuple[str, ...] = opt((), "further trainer overrides for every run, e.g. optim.lr=5e-4 (comma-separated)")


@dataclass
class AblationOptions(ImagesOptions):
    mus: tuple[float, ...] = opt((0.0,), "not used by the ablations except 0 (the IC reference runs)")
    ot: bool = opt(False, "also train minibatch OT")
    ablation_mu: float = opt(0.5, "μ of the EMA / online / dropout comparison")
    frozen_fractions: tuple[float, ...] = opt(DEFAULT_FROZEN, "budget fractions at which the frozen IC predictors stop")
    dropout: float = opt(-1.0, "dropout of the 'with dropout' GC runs (-1: the IC preset's)")


@dataclass
class FashionOptions(ImagesOptions):
    preset: str = opt("fashion14", "preset family: fashion14-ic, fashion14-gc, fashion14-ot (Fashion-MNIST at 14×14)")
    root: str = opt("", "data.root: folder with Fashion-MNIST's idx files (required)")
    steps: int = opt(4000, "training steps of every run (IC flattens from ~3 000 of 4 000)")
    mus: tuple[float, ...] = opt((0.0, 0.5), "GC μ values (0 is IC)")


@dataclass
class EctOptions(ImagesOptions):
    preset: str = opt("digits-ect", "preset family: <preset>-ic and <preset>-gc, tuned from the diffusion teacher")
    teacher_preset: str = opt("digits-edm", "preset of the diffusion teacher trained first (one, shared by every run)")
    teacher_steps: int = opt(1500, "training steps of that teacher")
    teacher: str = opt("", "an existing teacher instead (gcflow run folder, checkpoint or 'gcflow import-edm' file)")
    steps: int = opt(6000, "tuning steps of every run (on digits ECT-IC flattens from ~5 200; at 2 000 still falling)")
    seeds: tuple[int, ...] = opt((0, 1, 2, 3, 4, 5), "training seeds of every method (a seed is ~9 min of two cores)")
    eval_every: int = opt(200, "evaluate every this many steps")
    mus: tuple[float, ...] = opt((0.0, 0.3), "GC μ values (0 is ECT-IC; the paper reports μ = 0.3 in this setting)")
    ot: bool = opt(False, "also train minibatch OT (no -ot preset in the ECT families)")


TEACHER_LABEL = "EDM teacher"


def _common(o: ImagesOptions) -> tuple[str, ...]:
    """Overrides shared by every run of a study: data, budget, evaluation, threads, a checkpoint per evaluation."""
    if o.steps % o.eval_every:
        raise ValueError(f"steps={o.steps} must be a multiple of eval_every={o.eval_every}")
    budget = (
        f"train.steps={o.steps}",
        f"train.eval_every={o.eval_every}",
        f"train.checkpoint_every={o.eval_every}",
        f"train.keep_checkpoints={o.steps // o.eval_every + 2}",
    )
    return (*budget, *_setting(o))


def _setting(o: ImagesOptions) -> tuple[str, ...]:
    """The overrides of `_common` other than the budget: evaluation size, device, threads, data, extras."""
    out = [f"train.eval_samples={o.eval_samples}", f"train.device={o.device}", f"train.threads={max(o.threads, 1)}"]
    out += [f"data.name={o.data}"] * bool(o.data) + [f"data.root={o.root}"] * bool(o.root)
    out += [f"data.resolution={o.resolution}"] * bool(o.resolution)
    return (*out, *o.extra)


def _mu_label(mu: float) -> str:
    return "IC" if mu == 0 else f"GC μ={mu:g}"


def _mu_spec(
    o: ImagesOptions,
    mu: float,
    seed: int,
    keep: tuple[int, ...] = (),
    more: tuple[str, ...] = (),
    label: str = "",
    tag: str = "",
) -> RunSpec:
    """The IC (μ = 0) or GC run at μ for one seed (more: extra overrides of an ablation, tag: its name)."""
    if mu == 0:
        return RunSpec(f"ic{tag}-seed{seed}", label or "IC", f"{o.preset}-ic", (*_common(o), *more), seed, keep)
    return RunSpec(
        f"gc{mu:g}{tag}-seed{seed}",
        label or _mu_label(mu),
        f"{o.preset}-gc",
        (*_common(o), f"method.gc_mu={mu:g}", *more),
        seed,
        keep,
    )


def _frozen_steps(o: ImagesOptions, fractions: tuple[float, ...]) -> list[int]:
    """Checkpoint steps of the frozen predictors: each fraction of the budget rounded to an evaluation step."""
    return [max(o.eval_every, round(f * o.steps / o.eval_every) * o.eval_every) for f in fractions]


def plan_mu(o: ImagesOptions) -> list[RunSpec]:
    """IC, GC at every μ and (optionally) OT, for every seed."""
    # IC keeps the checkpoints the ablations' frozen predictors load, so the two studies share its runs.
    keep = tuple(_frozen_steps(o, DEFAULT_FROZEN))
    specs = [_mu_spec(o, mu, seed, keep if mu == 0 else ()) for mu in o.mus for seed in o.seeds]
    if o.ot:
        specs += [RunSpec(f"ot-seed{s}", "OT", f"{o.preset}-ot", _common(o), s) for s in o.seeds]
    return specs


def plan_ablations(o: AblationOptions) -> list[RunSpec]:
    """IC (keeping the frozen predictors' checkpoints), GC with the EMA and the online predictor, GC with
    dropout, and GC-only (μ = 1) from each frozen IC checkpoint, for every seed."""
    from gcflow.training.presets import PRESETS

    frozen = _frozen_steps(o, o.frozen_fractions)
    mu = o.ablation_mu
    dropout = o.dropout
    if dropout < 0:
        ic = PRESETS[f"{o.preset}-ic"].overrides
        dropout = float(next(x.split("=")[1].split(",")[0] for x in ic if x.startswith("network.dropout=")))
    specs = []
    for s in o.seeds:
        specs += [
            _mu_spec(o, 0.0, s, keep=tuple(frozen)),
            _mu_spec(o, mu, s),
            _mu_spec(o, mu, s, more=("method.gc_predictor=online",), label=f"GC μ={mu:g} online", tag="-online"),
            _mu_spec(
                o,
                mu,
                s,
                more=(f"network.dropout={dropout:g}",),
                label=f"GC μ={mu:g} dropout {dropout:g}",
                tag=f"-dropout{dropout:g}",
            ),
        ]
        for step, frac in zip(frozen, o.frozen_fractions):
            more = ("method.gc_predictor=frozen", f"method.gc_checkpoint=@ic-seed{s}:{step}")
            specs.append(_mu_spec(o, 1.0, s, more=more, label=f"frozen IC {frac:.0%}", tag=f"-frozen{step}"))
    return specs


def plan_ect(o: EctOptions) -> list[RunSpec]:
    """The ECT setting: one diffusion teacher (unless `teacher` names one), then ECT-IC and ECT-GC at each
    μ initialised from its weights, for every seed (runs named `ic-ect-seedS`, `gc0.3-ect-seedS`)."""
    specs, source = [], o.teacher
    if not source:
        t = o.teacher_steps
        # One evaluation and one checkpoint, at its end (the one the tuned runs load).
        budget = (
            f"train.steps={t}",
            f"train.eval_every={t}",
            f"train.checkpoint_every={t}",
            "train.keep_checkpoints=2",
        )
        teacher_overrides = (*budget, *_setting(o))
        specs.append(RunSpec("teacher", TEACHER_LABEL, o.teacher_preset, teacher_overrides, 0, keep_steps=(t,)))
        source = f"@teacher:{t}"
    more = (f"method.init_from={source}",)
    specs += [_mu_spec(o, mu, s, more=more, tag="-ect") for mu in o.mus for s in o.seeds]
    return specs


def _paths(o: ImagesOptions, out: Path) -> StudyPaths:
    cache = Path(o.cache) if o.cache else out / "cache"
    work = Path(o.work) if o.work else out / "runs"
    return StudyPaths(cache, work, log=lambda msg: print(f"gcflow: {msg}", flush=True))


def measure(specs: list[RunSpec], o: ImagesOptions, out: Path) -> dict[str, list[dict[str, Any]]]:
    """Train (or read from the cache) every spec; records grouped by label, seeds in order."""
    records = execute(specs, _paths(o, out), workers=o.workers)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        by_label.setdefault(spec.label, []).append(records[spec.name])
    return by_label


def draw_curves(by_label: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Classifier FD against step and against CPU seconds, pixel SW against step (mean ± std over seeds)."""
    fig, axes = figures.new_figure(3, 4.4, 3.4)
    floors = next(iter(by_label.values()))[0]["floors"]
    for label, recs in by_label.items():
        steps = recs[0]["steps"]
        per_step = float(np.mean([r["cpu_seconds"] / max(r["steps"][-1], 1) for r in recs]))
        panels = (
            (axes[0], "classifier_fd", steps),
            (axes[1], "classifier_fd", [s * per_step for s in steps]),
            (axes[2], "pixel_sliced_w2", steps),
        )
        for ax, key, xs in panels:
            ys = np.array([[np.nan if v is None else v for v in r[key]] for r in recs], dtype=float)
            mean, std = np.nanmean(ys, 0), np.nanstd(ys, 0)
            figures.line(ax, xs, mean.tolist(), label)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.12, color=ax.lines[-1].get_color())
    for ax, key in (
        (axes[0], "classifier_fd_noise_floor"),
        (axes[1], "classifier_fd_noise_floor"),
        (axes[2], "pixel_sliced_w2_noise_floor"),
    ):
        if floors.get(key) is not None:
            ax.axhline(floors[key], color="0.5", ls="--", lw=1, label="held-out")
        ax.legend(fontsize=6)
    axes[0].set(yscale="log", xlabel="step", ylabel="classifier FD (1-step samples)", title=title)
    axes[1].set(yscale="log", xlabel="CPU seconds (one thread)", ylabel="classifier FD", title="at equal compute")
    axes[2].set(yscale="log", xlabel="step", ylabel="pixel sliced W2", title="pixel space")
    figures.save(fig, path)


def _report(
    title: str,
    o: ImagesOptions,
    by_label: dict[str, list[dict[str, Any]]],
    claims: list[Claim],
    summaries: dict[str, Any],
    out: Path,
) -> ExperimentReport:
    draw_curves(by_label, out / "curves.png", title)
    floors = next(iter(by_label.values()))[0]["floors"]
    runs = {r["spec"]["name"]: r for recs in by_label.values() for r in recs}
    reference = "IC long" if "IC long" in by_label else "IC"
    flattening = [image_analysis.flattening_note(by_label[reference], reference)] if reference in by_label else []
    return ExperimentReport(
        title=title,
        summary=(
            f"Every run is `gcflow train --preset {o.preset}-<ic|gc|ot>` for {o.steps} steps with seeds "
            f"{', '.join(map(str, o.seeds))}, evaluated every {o.eval_every} steps (classifier FD and pixel "
            f"sliced W2 of one-step samples). Held-out split: classifier FD "
            f"{floors.get('classifier_fd_noise_floor')}, "
            f"pixel SW {floors.get('pixel_sliced_w2_noise_floor')}; classifier test accuracy "
            f"{floors.get('classifier_test_accuracy')}."
        ),
        claims=claims,
        results={"table": image_analysis.table(summaries), "summaries": summaries, "runs": runs},
        figures={
            "curves.png": "classifier FD against step and against CPU time, pixel sliced W2 against step "
            "(mean ± std over seeds; dashed: held-out split)"
        },
        notes=[
            "Final values are the mean of the last two evaluations; every verdict compares per-seed values.",
            "CPU time is the run process's CPU seconds (one thread), spread evenly over its steps.",
            "Each run's JSON record is cached (options cache=...); rerunning skips finished runs.",
            *flattening,
        ],
    )


def run(options: ImagesOptions, out: Path) -> ExperimentReport:
    """images-mu: IC vs GC(μ) vs OT."""
    by_label = measure(plan_mu(options), options, out)
    summaries = image_analysis.summarise_all(by_label)
    return _report(
        f"GC μ sweep on {options.preset}", options, by_label, image_analysis.mu_claims(summaries), summaries, out
    )


def run_ablations(options: AblationOptions, out: Path) -> ExperimentReport:
    """images-ablations: predictor and dropout ablations."""
    by_label = measure(plan_ablations(options), options, out)
    summaries = image_analysis.summarise_all(by_label)
    claims = image_analysis.ablation_claims(summaries, options.ablation_mu)
    return _report(f"GC ablations on {options.preset}", options, by_label, claims, summaries, out)


def run_fashion(options: FashionOptions, out: Path) -> ExperimentReport:
    """images-fashion: images-mu with the Fashion-MNIST defaults.

    Without root=DIR the trainer's data error names the missing files.
    """
    return run(options, out)


def run_ect(options: EctOptions, out: Path) -> ExperimentReport:
    """images-ect: the μ comparison in the ECT setting (tuning a diffusion teacher, Table 2)."""
    by_label = measure(plan_ect(options), options, out)
    by_label.pop(TEACHER_LABEL, None)  # trained once for the others; not a method of the comparison
    summaries = image_analysis.summarise_all(by_label)
    title = f"GC in the ECT setting on {options.preset} (tuned from {options.teacher or options.teacher_preset})"
    report = _report(title, options, by_label, image_analysis.mu_claims(summaries), summaries, out)
    report.notes.append(ECT_NOTE)
    return report


ECT_NOTE = (
    "ECT setting: every run starts from the diffusion teacher's weights (method.init_from) and is tuned with "
    "ECT's continuous-time levels and stage-wise shrinking Δt; 'IC' is ECT-IC and 'GC μ=M' is ECT with GC pairs."
)
