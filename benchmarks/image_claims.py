"""The paper's image claims on CPU-sized real images: the driver of issue 15's studies (resumable).

    python benchmarks/image_claims.py [--studies budget mu ablations fashion ect] [--workers 2]
                                      [--fashion-root DIR] [--steps N] [--report-only]

Studies (each is also `gcflow experiment NAME key=value ...`):
* budget: one long digits-ic run (--budget-steps, evaluated every 500 steps), to see where IC flattens;
* mu: `images-mu` on digits (IC, GC μ = 0.3, 0.5, 0.7, 1, OT; seeds 0, 1, 2);
* ablations: `images-ablations` on digits (EMA vs online predictor, frozen IC predictors, dropout);
* fashion: `images-fashion`, Fashion-MNIST at 14×14 (IC, GC μ = 0.5, OT; seeds 0, 1, 2);
* ect: `images-ect` on digits, the ECT setting: one digits-edm teacher, then ECT-IC and ECT-GC (μ = 0.3);
  seeds 0-5 (a seed costs ~9 min of two cores; the one setting where the methods' curves separate).

Every finished run is cached as JSON under benchmarks/results/image_claims/<data>/ (commit these);
run folders go to runs/image_claims/ (scratch). Run the same command again after an interruption:
finished runs are skipped, a run cut off mid-way restarts. All digits studies share one queue, seed
by seed, so two workers stay busy and partial results already hold whole seeds. With --report-only
(or when the queue finishes) each study's report.md, results.json and curves.png are written from
the runs cached so far (methods with fewer seeds are compared over the seeds they have).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from gcflow.experiments import image_analysis, images_mu  # noqa: E402
from gcflow.experiments.image_runs import RunSpec, StudyPaths, execute, load_cached  # noqa: E402
from gcflow.experiments.options import as_dict  # noqa: E402
from gcflow.experiments.report import ExperimentReport, claims_table, jsonable, write_report  # noqa: E402
from gcflow.paths import portable_path  # noqa: E402
from gcflow.training.run_dir import out_path  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "image_claims"
FIGURES = ROOT / "docs" / "figures" / "image_claims"
WORK = ROOT / "runs" / "image_claims"
PAGE = ROOT / "docs" / "image_claims.md"
# digits-ic/-gc measured 0.085 CPU s/step (255 s per 3000 steps, evaluations included): the 18-run μ study at
# 5000 steps is ~64 min on 2 cores. The 3000-step presets stop too early: IC FD 139 -> 52 -> 34 at 1000/2000/3000.
DIGITS_STEPS = 5000
# fashion14-gc measured 0.20 CPU s/step: the 9-run study at 4000 steps is ~60 min on 2 cores.
FASHION_STEPS = 4000
# ECT setting: a 1500-step digits-edm teacher, tuned 6000 steps (4 stages of 1500): ECT-IC's mean curve is
# within 10 % of its best from step 5200. At 2000 steps (--ect-steps 2000) both curves were still falling.
ECT_STEPS, TEACHER_STEPS = 6000, 1500
SEEDS, ECT_SEEDS = [0, 1, 2], [0, 1, 2, 3, 4, 5]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--studies",
        nargs="+",
        default=["budget", "mu", "ablations", "fashion", "ect"],
        choices=["budget", "mu", "ablations", "fashion", "ect"],
    )
    p.add_argument("--workers", type=int, default=2, help="runs at once, one process and one thread each")
    p.add_argument("--steps", type=int, default=DIGITS_STEPS, help="digits study budget")
    p.add_argument("--budget-steps", type=int, default=10000, help="length of the long digits-ic run")
    p.add_argument("--fashion-steps", type=int, default=FASHION_STEPS)
    p.add_argument("--ect-steps", type=int, default=ECT_STEPS, help="tuning budget of the ECT study")
    p.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS, help="diffusion teacher of the ECT study")
    p.add_argument("--fashion-root", default="", help="folder with Fashion-MNIST's idx files")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="seeds of the mu, ablations and fashion studies")
    p.add_argument("--ect-seeds", type=int, nargs="+", default=ECT_SEEDS, help="seeds of the ECT study")
    p.add_argument("--report-only", action="store_true", help="write the reports from the cached runs; train nothing")
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="put results, run folders, figures and the page under this folder instead (trials)",
    )
    p.add_argument("--eval-every", type=int, default=250, help="evaluation period of the studies (not budget)")
    p.add_argument("--eval-samples", type=int, default=1000)
    args = p.parse_args()
    if args.out is not None:
        global RESULTS, FIGURES, WORK, PAGE
        RESULTS, WORK = args.out / "results", args.out / "runs"
        FIGURES, PAGE = args.out / "figures" / "image_claims", args.out / "image_claims.md"
    return args


def options(args: argparse.Namespace) -> dict[str, images_mu.ImagesOptions]:
    """The options of each requested study (caches: one folder per dataset, shared by its studies)."""
    digits = {
        "cache": str(RESULTS / "digits"),
        "work": str(WORK / "digits"),
        "workers": args.workers,
        "seeds": tuple(args.seeds),
        "eval_samples": args.eval_samples,
    }
    out: dict[str, images_mu.ImagesOptions] = {
        "budget": images_mu.ImagesOptions(
            **digits, steps=args.budget_steps, eval_every=min(500, args.budget_steps), mus=(0.0,), ot=False
        ),
        "mu": images_mu.ImagesOptions(**digits, steps=args.steps, eval_every=args.eval_every),
        "ablations": images_mu.AblationOptions(**digits, steps=args.steps, eval_every=args.eval_every),
        "fashion": images_mu.FashionOptions(
            cache=str(RESULTS / "fashion14"),
            work=str(WORK / "fashion14"),
            workers=args.workers,
            seeds=tuple(args.seeds),
            steps=args.fashion_steps,
            root=args.fashion_root,
            eval_every=args.eval_every,
            eval_samples=args.eval_samples,
        ),
    }
    out["ect"] = images_mu.EctOptions(
        **{**digits, "seeds": tuple(args.ect_seeds)},
        steps=args.ect_steps,
        eval_every=min(200, args.ect_steps),
        teacher_steps=args.teacher_steps,
    )
    out["budget"].seeds = (0,)
    return {k: v for k, v in out.items() if k in args.studies}


def plans(opts: dict[str, images_mu.ImagesOptions]) -> dict[str, list[RunSpec]]:
    out = {}
    for name, o in opts.items():
        if name == "ablations":
            out[name] = images_mu.plan_ablations(o)  # type: ignore[arg-type]
        elif name == "ect":
            out[name] = images_mu.plan_ect(o)  # type: ignore[arg-type]
        else:
            specs = images_mu.plan_mu(o)
            out[name] = (
                [RunSpec(s.name.replace("ic-", "ic-long-"), "IC long", s.preset, s.overrides, s.seed) for s in specs]
                if name == "budget"
                else specs
            )
    return out


def queue(specs: list[RunSpec]) -> list[RunSpec]:
    """One queue, seed by seed (the studies' order within a seed), each run once."""
    seen: dict[str, RunSpec] = {}
    for s in specs:
        if s.name in seen and seen[s.name] != s:
            raise ValueError(f"two studies define run {s.name} differently")
        seen.setdefault(s.name, s)
    return sorted(seen.values(), key=lambda s: s.seed if "long" not in s.name else -1)


def report(name: str, o: images_mu.ImagesOptions, specs: list[RunSpec], command: str) -> None:
    """report.md / results.json / curves.png of one study from its cached runs (whole methods only)."""
    paths = StudyPaths(Path(o.cache), Path(o.work))
    by_label: dict[str, list[dict]] = {}
    for s in specs:
        rec = load_cached(s, paths)
        if rec is not None:
            by_label.setdefault(s.label, []).append(rec)
    # The report's run time: the CPU seconds of the runs it reads (each trained on one thread), teacher included.
    cpu_seconds = sum(r["cpu_seconds"] for recs in by_label.values() for r in recs)
    by_label.pop(images_mu.TEACHER_LABEL, None)  # the ECT study's shared teacher is not a method
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    ref = "IC long" if name == "budget" else "IC"
    if ref not in by_label:
        print(f"{name}: no {ref} run finished yet; no report", flush=True)
        return
    summaries = image_analysis.summarise_all(by_label, reference=ref)
    if name == "budget":
        claims = image_analysis.budget_claims(by_label[ref])
    elif name == "ablations":
        claims = image_analysis.ablation_claims(summaries, o.ablation_mu)  # type: ignore[attr-defined]
    else:
        claims = image_analysis.mu_claims(summaries)
    rep: ExperimentReport = images_mu._report(f"{name}: {o.preset}", o, by_label, claims, summaries, out)
    seeds_done = {k: len(v) for k, v in by_label.items()}
    if name == "ect":
        rep.notes.append(images_mu.ECT_NOTE)
    rep.notes.append(f"Runs finished per method: {seeds_done} of {len(o.seeds)} seed(s) planned.")
    rep.notes.append("Run time: the CPU seconds of the runs read here (one thread each), summed.")
    write_report(out, f"images-{name}", command, _settings(o), rep, cpu_seconds)
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "curves.png", FIGURES / f"{name}-curves.png")
    print(f"{name}: report {out / 'report.md'} ({seeds_done})", flush=True)


def _settings(o: images_mu.ImagesOptions) -> dict:
    """The study's options as its report shows them: its folders relative to the repository (clones differ)."""
    out = jsonable(as_dict(o))
    out.update({key: portable_path(out[key], ROOT) for key in ("cache", "work")})
    return out


INTRO = """# The paper's image claims, on CPU-sized real images

Written by `python benchmarks/image_claims.py` from the cached runs under
`benchmarks/results/image_claims/` (one JSON per training run; the same command resumes an
interrupted study and rewrites this page). Every run is the bundled trainer on a preset (`digits-ic`,
`digits-gc`, `digits-ot`, `fashion14-*`; in the ECT study `digits-edm` for the teacher, then
`digits-ect-ic` and `digits-ect-gc`) with one thread; two runs train at once. Metrics of one-step
samples at every evaluation: the classifier Fréchet distance (features of a small CNN trained on the
training split) and the pixel sliced W2, each with the held-out split's value as reference. A verdict
compares per-seed values: *agrees* / *disagrees* when the difference of the means exceeds twice its
standard error over the seeds, else *inconclusive* ("no difference at this scale"); *partly* when a
claim tested at several μ holds at some of them. Final values are the mean of the last two evaluations.
The measured column also gives a paired reading: the per-seed differences to the reference method,
mean ± twice their standard error. Runs with the same seed start from the same weights and see the
same batches, so seed effects shared by all methods cancel there. It is not the verdict's rule.

Running, resuming, reusing:

* All studies: `python benchmarks/image_claims.py --fashion-root DIR` (two runs at once, one thread each;
  `--studies mu` for one study, `--report-only` to rewrite the reports from the runs cached so far).
  After an interruption run the same command: cached runs are skipped, a run cut off mid-way restarts.
  A run's cache key is its preset, overrides and seed, not the data folder (`--fashion-root`; the
  official `.gz` files are MD5-checked when loaded), so a clone anywhere reuses the committed runs.
  A run that loads another's checkpoint (the ECT teacher, a frozen IC predictor) records that run's
  digest and trains again when that run's settings change; it loads only from a run folder marked
  with that digest (`study-digest.txt`), never from one that another version of the run left.
* One study as an experiment: `gcflow experiment images-mu` (and `images-ablations`, `images-ect`, `images-fashion
  root=DIR`; same budgets and seeds as here), writing `results.json`, `report.md` and `curves.png` into `--out`.
* Your data and a GPU: any preset family works, e.g. `gcflow experiment images-mu preset=mnist
  root=DIR device=cuda steps=20000 eval_every=1000 workers=1` (the family needs `-ic`, `-gc`, `-ot`
  presets; `data=`, `resolution=` and `extra=group.field=value,...` override them).
* Budgets: the 3 000-step digits presets stop while IC is still improving (classifier FD 139 → 52 → 34
  at steps 1 000 / 2 000 / 3 000), so the digits studies train 5 000 steps (the 18-run μ study is
  ~64 min of two cores at the measured 0.085 CPU s/step); the *budget* study below trains IC for
  10 000 steps to show where its curve flattens. Fashion-MNIST 14×14 costs 0.20 CPU s/step; its
  9-run study trains 4 000 steps (~60 min). The curriculum (N up to s1 = 160) scales with the budget.
  Within their own budgets the IC curves flatten before the end (each report says from which step).
  The ECT study trains one 1 500-step teacher (78 CPU s), then tunes 6 000 steps per run, seeds 0–5
  (≈ 80 CPU s per 1 000 steps; 52 min for the 13 runs on two cores, ~9 min per seed). At 2 000 steps
  (`--ect-steps 2000 --ect-seeds 0 1 2`, 10 min) its curves were still falling.
"""


def write_page() -> None:
    """docs/image_claims.md from every study report written so far."""
    lines = [INTRO]
    for name, title in (
        ("budget", "Where the IC curve flattens (digits)"),
        ("mu", "μ sweep on 8×8 digits"),
        ("ablations", "Ablations on 8×8 digits"),
        ("fashion", "Fashion-MNIST 14×14"),
        ("ect", "ECT setting on 8×8 digits (tuned from a diffusion teacher)"),
    ):
        path = RESULTS / name / "results.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        lines += [f"## {title}", "", f"Command: `{doc['command']}`", "", *doc["results"]["table"], ""]
        if doc["claims"]:
            lines += claims_table((c["claim"], c["measured"], c["verdict"]) for c in doc["claims"]) + [""]
        lines += [f"![{name}](figures/image_claims/{name}-curves.png)", "", *[f"* {n}" for n in doc["notes"]], ""]
    PAGE.write_text("\n".join(lines))


def main() -> int:
    args = parse()
    if "fashion" in args.studies and not args.fashion_root:
        print("image_claims: error: the fashion study needs --fashion-root DIR (Fashion-MNIST's idx files)")
        return 2
    if "fashion" in args.studies and not args.report_only:
        # Before any run: the fashion study trains after the digits ones, an hour later.
        from gcflow.data.common import DatasetError
        from gcflow.data.images import load_image_dataset

        try:
            for split in ("train", "test"):
                load_image_dataset("fashion-mnist", args.fashion_root, split)
        except DatasetError as exc:
            print(f"image_claims: error: {str(exc).replace('data.root=DIR', '--fashion-root DIR')}")
            return 2
    opts = options(args)
    by_study = plans(opts)

    def command(name: str) -> str:
        """The command that trains (or, cached, re-reads) study `name` alone, as the reports show it."""
        extra = f" --fashion-root {args.fashion_root}" if name == "fashion" else ""
        defaults = {"--steps": DIGITS_STEPS, "--fashion-steps": FASHION_STEPS, "--ect-steps": ECT_STEPS}
        given = {"--steps": args.steps, "--fashion-steps": args.fashion_steps, "--ect-steps": args.ect_steps}
        extra += "".join(f" {k} {v}" for k, v in given.items() if v != defaults[k])
        seeds = ("--ect-seeds", args.ect_seeds, ECT_SEEDS) if name == "ect" else ("--seeds", args.seeds, SEEDS)
        if name != "budget" and seeds[1] != seeds[2]:
            extra += f" {seeds[0]} {' '.join(map(str, seeds[1]))}"
        return f"python benchmarks/image_claims.py --studies {name}{extra}"

    t0 = time.time()

    def refresh(_: str = "") -> None:
        """Rewrite every study's report and the page from the runs cached so far (partial results)."""
        try:
            for name, specs in by_study.items():
                report(name, opts[name], specs, command(name))
            write_page()
        except Exception as exc:  # noqa: BLE001 -- a report must never stop the training queue
            print(f"image_claims: warning: report not written: {exc!r}", flush=True)

    if not args.report_only:
        from gcflow.training.run_dir import RunDirError

        digits = [s for k, v in by_study.items() if k != "fashion" for s in v]
        queues = [(digits, next((o for k, o in opts.items() if k != "fashion"), None))]
        queues += [(by_study["fashion"], opts["fashion"])] if "fashion" in by_study else []
        for specs, o in queues:
            if not specs or o is None:
                continue
            try:
                execute(queue(specs), images_mu._paths(o, RESULTS), workers=args.workers, on_record=refresh)
            except RunDirError as exc:  # e.g. a folder in a run's place that is not a gcflow run: never deleted
                refresh()
                print(f"image_claims: error: {exc}", flush=True)
                return 2
    refresh()
    print(json.dumps({"seconds": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
