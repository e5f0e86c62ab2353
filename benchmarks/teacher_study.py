"""Training from a teacher on the 8x8 digits: iCT from scratch vs CD and ECT from one diffusion teacher.

    python benchmarks/teacher_study.py            # resumable; results in benchmarks/results/teacher_study.json

One shared EDM pretraining (preset digits-edm), then, at equal tuning steps and for each seed:
iCT-IC and iCT-GC from scratch (digits-ic / digits-gc), CD from the teacher (digits-cd, Heun),
ECT-IC and ECT-GC (μ = 0.3) initialised from the teacher. Every run's EMA model is scored with the
classifier Fréchet distance and the pixel sliced W2 against the training reference (the held-out
split gives the noise floor), one-step (σ_max) and two-step (σ_max, then 0.821), on the same
latents. Verdicts weigh the difference of seed means against twice its standard error
(gcflow.experiments.convergence.lower_verdict). Each run's result is written to the JSON as soon as
it finishes, so an interrupted study continues where it stopped; runs go two at once, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "iCT-IC (scratch)": ("digits-ic", ()),
    "iCT-GC (scratch)": ("digits-gc", ()),
    "CD (teacher, Heun)": ("digits-cd", ("method.cd_solver=heun",)),
    "ECT-IC (teacher)": ("digits-ect-ic", ()),
    "ECT-GC mu=0.3 (teacher)": ("digits-ect-gc", ()),
}
TWO_STEP_SIGMA = 0.821
CLAIMS = [  # (a, b): "a is lower (better) than b"
    ("ECT-GC mu=0.3 (teacher)", "ECT-IC (teacher)"),
    ("ECT-IC (teacher)", "iCT-IC (scratch)"),
    ("CD (teacher, Heun)", "iCT-IC (scratch)"),
    ("iCT-GC (scratch)", "iCT-IC (scratch)"),
]


def _train(preset: str, overrides: list[str], run_dir: Path) -> None:
    import torch

    from gcflow.training.config import apply_overrides
    from gcflow.training.presets import load_preset
    from gcflow.training.trainer import train

    torch.set_num_threads(1)
    cfg = apply_overrides(load_preset(preset), overrides + ["train.threads=1", "train.device=cpu"])
    if (run_dir / "summary.json").is_file():
        return
    resume = (run_dir / "config.json").is_file()
    train(cfg, run_dir, resume=resume, overwrite=not resume and run_dir.exists(), progress=False, log=lambda *_: None)


def _score(run_dir: Path) -> dict[str, Any]:
    """One- and two-step (diffusion: Heun) classifier FD and pixel sliced W2 of a run's EMA model."""
    import torch

    from gcflow.data import to_uint8
    from gcflow.metrics.frechet import feature_stats, frechet_distance
    from gcflow.metrics.pixels import pixel_sliced_w2
    from gcflow.randomness import step_generator
    from gcflow.sampling import sample_multistep, sample_onestep
    from gcflow.training.data_source import build_source
    from gcflow.training.evaluate import ImageEvaluator, generate
    from gcflow.training.run_state import load_run

    run = load_run(run_dir)
    cfg, m = run.config, run.config.method
    ev = ImageEvaluator(cfg, build_source(cfg, torch.device("cpu")), torch.device("cpu"), log=lambda *_: None)

    def metrics(x: torch.Tensor) -> dict[str, float]:
        imgs = to_uint8(x)
        feats = ev.classifier.features(imgs[: ev.m])[0]
        return {
            "classifier_fd": frechet_distance(*feature_stats(feats), *ev.ref_stats),
            "pixel_sliced_w2": pixel_sliced_w2(imgs[: ev.m], ev.reference),
        }

    with torch.no_grad():
        if m.pairs == "edm":
            samplers = {"heun": lambda z: generate(run.model, z, cfg, 1)}
        else:
            samplers = {
                "1-step": lambda z: sample_onestep(run.model, z, m.sigma_max),
                "2-step": lambda z: sample_multistep(
                    run.model,
                    z,
                    [TWO_STEP_SIGMA],
                    m.sigma_max,
                    m.sigma_min,
                    generator=step_generator(cfg.train.seed, 0, "eval"),
                ),
            }
        out: dict[str, Any] = {"floor": ev.floor}
        for name, draw in samplers.items():
            x = draw(ev.z[: ev.m])
            out[name] = metrics(x)
            torch.save(x[:10].clone(), run_dir / f"grid-{name}.pt")
    return out


def _job(label: str, preset: str, overrides: list[str], run_dir: str) -> tuple[str, str, dict[str, Any]]:
    """Train (or finish) one run and score it; runs in a worker process with one thread."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.process_time()
    _train(preset, overrides, Path(run_dir))
    result = _score(Path(run_dir))
    result["cpu_seconds"] = round(time.process_time() - t0, 1)
    return label, run_dir, result


def _save(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def _summarise(results: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    from statistics import mean, stdev

    from gcflow.experiments.convergence import lower_verdict

    table: dict[str, Any] = {}
    for label in METHODS:
        runs = [r for s in seeds if (r := results["runs"].get(f"{label}|seed{s}"))]
        if not runs:  # (a partial study reports the seeds that finished)
            continue
        row: dict[str, Any] = {"seeds": len(runs)}
        for sampler in ("1-step", "2-step"):
            for metric in ("classifier_fd", "pixel_sliced_w2"):
                vals = [r[sampler][metric] for r in runs]
                row[f"{sampler} {metric}"] = {
                    "mean": mean(vals),
                    "std": stdev(vals) if len(vals) > 1 else 0.0,
                    "values": vals,
                }
        table[label] = row
    verdicts = []
    for a, b in CLAIMS:
        if a in table and b in table:
            for key in ("1-step classifier_fd", "2-step classifier_fd", "1-step pixel_sliced_w2"):
                verdicts.append(
                    {
                        "claim": f"{a} lower than {b}",
                        "metric": key,
                        "verdict": lower_verdict(table[a][key]["values"], table[b][key]["values"]),
                    }
                )
    return {"table": table, "verdicts": verdicts}


def _grid(results: dict[str, Any], out: Path) -> None:
    """Ten one-step samples of seed 0 per method, one row each (teacher's Heun samples first)."""
    import torch

    from gcflow.plotting import save_image_grid

    rows = [ROOT / results["teacher"]["run_dir"] / "grid-heun.pt"]  # (an absolute run_dir stays absolute)
    rows += [
        ROOT / results["runs"][f"{label}|seed0"]["run_dir"] / "grid-1-step.pt"
        for label in METHODS
        if f"{label}|seed0" in results["runs"]
    ]
    images = torch.cat([torch.load(p) for p in rows if p.is_file()])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(out, images, nrow=10, scale=4)


def markdown(results: dict[str, Any]) -> str:
    """The results table (mean ± std over seeds) and the verdicts, as Markdown."""
    summary = _summarise(results, list(range(results["settings"]["seeds"])))
    t = results["teacher"]
    lines = [
        "| method | 1-step FD | 2-step FD | 1-step pixel SW2 | 2-step pixel SW2 |",
        "|---|---|---|---|---|",
        (
            f"| teacher (EDM, 18 Heun steps = 35 NFE) | {t['heun']['classifier_fd']:.1f} | | "
            f"{t['heun']['pixel_sliced_w2']:.3f} | |"
        ),
    ]
    for label, row in summary["table"].items():
        label = f"{label} ({row['seeds']} seeds)"
        cells = [
            f"{row[k]['mean']:.1f} ± {row[k]['std']:.1f}" for k in ("1-step classifier_fd", "2-step classifier_fd")
        ]
        cells += [
            f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("1-step pixel_sliced_w2", "2-step pixel_sliced_w2")
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    floor = t["floor"]
    lines.append(
        f"| held-out data (noise floor) | {floor['classifier_fd_noise_floor']:.1f} | | "
        f"{floor['pixel_sliced_w2_noise_floor']:.3f} | |"
    )
    lines += ["", "| claim | metric | verdict |", "|---|---|---|"]
    lines += [f"| {v['claim']} | {v['metric']} | {v['verdict']} |" for v in summary["verdicts"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from gcflow.paths import portable_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="tuning steps of every consistency run")
    p.add_argument("--teacher-steps", type=int, default=2000, help="diffusion pretraining steps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "teacher-study", help="run folders")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_study.json")
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "figures" / "teacher_study_grid.png")
    p.add_argument("--report", action="store_true", help="only print the Markdown table of the cached results")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.json.read_text())))
        return 0
    settings = {"steps": args.steps, "teacher_steps": args.teacher_steps, "seeds": args.seeds}
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if results.get("settings") != settings:
        results = {"settings": settings, "runs": {}}
    results["command"] = "python benchmarks/teacher_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    teacher = args.work / "teacher"
    if "teacher" not in results:
        _, _, res = _job(
            "teacher", "digits-edm", [f"train.steps={args.teacher_steps}", "train.eval_every=0"], str(teacher)
        )
        results["teacher"] = {"run_dir": portable_path(teacher, ROOT), **res}
        _save(args.json, results)
    seeds = list(range(args.seeds))
    common = [f"train.steps={args.steps}", "train.eval_every=0", "train.checkpoint_every=0", "method.s1=80"]
    todo = []
    for seed in seeds:
        for label, (preset, extra) in METHODS.items():
            key = f"{label}|seed{seed}"
            if key in results["runs"]:
                continue
            over = [*common, f"train.seed={seed}", *extra]
            if "teacher" in label:
                over += [f"method.teacher={teacher}"] if preset == "digits-cd" else [f"method.init_from={teacher}"]
            todo.append((key, preset, over, str(args.work / f"{preset}-seed{seed}")))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_job, *job) for job in todo]
        for fut in as_completed(futures):
            key, run_dir, res = fut.result()
            results["runs"][key] = {"run_dir": portable_path(run_dir, ROOT), **res}
            _save(args.json, results)
            print(
                f"{key}: 1-step FD {res['1-step']['classifier_fd']:.1f}, "
                f"2-step FD {res['2-step']['classifier_fd']:.1f}",
                flush=True,
            )
    results["summary"] = _summarise(results, seeds)
    _save(args.json, results)
    _grid(results, args.grid)
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
