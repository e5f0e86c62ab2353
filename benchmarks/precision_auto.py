"""train.precision=auto against fp32 over a full digits curriculum (issue 11): speed and final quality.

For each seed, the digits-gc preset (its full step count unless --steps) is trained twice, with
train.precision=fp32 and train.precision=auto, one thread per run, the two runs of a seed at the
same time (so both meet the same load on the machine). Each run's result (wall-clock seconds, final
classifier FD, the precision events auto logged) is written to the results file as soon as it
finishes; a rerun skips the runs already there, so the study resumes after an interruption.

    PYTHONPATH=src python benchmarks/precision_auto.py            # 3 seeds, ~25 min on 2 cores
    PYTHONPATH=src python benchmarks/precision_auto.py --steps 600 --out /tmp/quick.json

Results: benchmarks/results/precision_auto.json ("runs": one record per (precision, seed); "summary":
per precision the mean ± std over seeds, and auto's speed-up over fp32 per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "auto")


def run_one(precision: str, seed: int, steps: int | None, runs_dir: Path) -> dict:
    """Train digits-gc once in a subprocess (one thread); returns its record."""
    out = runs_dir / f"{precision}-seed{seed}"
    cmd = [
        sys.executable,
        "-m",
        "gcflow",
        "train",
        "--preset",
        "digits-gc",
        "--out",
        str(out),
        "--overwrite",
        "--no-progress",
        f"train.precision={precision}",
        f"train.seed={seed}",
        "train.threads=1",
    ]
    if steps:
        cmd += [f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{precision} seed {seed} failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    events = [r for r in records if r.get("event") == "precision"]
    return {
        "precision": precision,
        "seed": seed,
        "steps": summary["step"],
        "train_seconds": summary["wall_seconds"],
        "process_seconds": round(time.perf_counter() - t0, 3),
        "classifier_fd": summary["classifier_fd"],
        "classifier_fd_noise_floor": summary.get("classifier_fd_noise_floor"),
        "loss": summary["loss"],
        "precision_events": events,
        "bf16_steps": _bf16_steps(events, summary["step"]),
    }


def _bf16_steps(events: list[dict], total: int) -> int:
    """How many steps ran in bf16 according to auto's switch records."""
    count, since = 0, None
    for e in events:
        if e["precision"] == "bf16" and since is None:
            since = e["step"]
        elif e["precision"] != "bf16" and since is not None:
            count, since = count + e["step"] - since, None
    return count + (total - since if since is not None else 0)


def summarise(runs: list[dict]) -> dict:
    """Mean ± std per precision and auto's per-seed speed-up (fp32 seconds / auto seconds)."""
    out: dict = {}
    for p in PRECISIONS:
        rs = [r for r in runs if r["precision"] == p]
        if len(rs) >= 2:
            for key in ("train_seconds", "classifier_fd"):
                vals = [r[key] for r in rs]
                out[f"{p}_{key}_mean"], out[f"{p}_{key}_std"] = statistics.mean(vals), statistics.stdev(vals)
    by = {(r["precision"], r["seed"]): r for r in runs}
    out["speedup_per_seed"] = {
        s: by[("fp32", s)]["train_seconds"] / by[("auto", s)]["train_seconds"]
        for (p, s) in by
        if p == "auto" and ("fp32", s) in by
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="train.steps (default: the preset's full curriculum)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/precision_auto.json")
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs/precision_auto")
    args = ap.parse_args()
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    if data.get("steps_arg") not in (None, args.steps):
        sys.exit(f"{args.out} holds a study with --steps {data['steps_arg']}; pass the same or another --out")
    data.update(
        {
            "steps_arg": args.steps,
            "command": " ".join(["python", *sys.argv]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread per run",
        }
    )
    done = {(r["precision"], r["seed"]) for r in data["runs"]}

    def finish(record: dict) -> None:
        data["runs"].append(record)
        data["summary"] = summarise(data["runs"])
        data["date"] = time.strftime("%Y-%m-%d")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(
            f"{record['precision']} seed {record['seed']}: {record['train_seconds']:.0f} s, "
            f"classifier FD {record['classifier_fd']:.2f}, bf16 steps {record['bf16_steps']}",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:  # two runs at once: fp32 and auto of one seed
        for seed in range(args.seeds):
            todo = [p for p in PRECISIONS if (p, seed) not in done]
            for fut in [pool.submit(run_one, p, seed, args.steps, args.runs_dir) for p in todo]:
                finish(fut.result())


if __name__ == "__main__":
    main()
