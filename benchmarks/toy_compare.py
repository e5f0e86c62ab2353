"""IC vs OT vs GC vs oracle CD on the 2-D toy at equal steps, over several seeds.

    python benchmarks/toy_compare.py --seeds 0 1 2 [--presets toy-ic toy-ot toy-gc toy-cd] [key=value ...]

Each run is exactly `gcflow train --preset P --seed S` (plus any overrides). Writes
benchmarks/results/toy_compare.json and prints a markdown table (mean ± std of the final exact W2
and sliced W2, with the data-to-data noise floor of the same metric at the same sample size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gcflow.training.config import apply_overrides
from gcflow.training.presets import load_preset
from gcflow.training.trainer import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--presets", nargs="+", default=["toy-ic", "toy-ot", "toy-gc", "toy-cd"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "toy_compare.json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for seed in args.seeds:
                cfg = apply_overrides(load_preset(preset), [f"train.seed={seed}", *args.overrides])
                t0 = time.perf_counter()
                res = train(cfg, Path(tmp) / f"{preset}-{seed}", progress=False, log=lambda *_: None)
                s = res.summary
                rows.append(
                    {
                        "preset": preset,
                        "seed": seed,
                        "steps": s["step"],
                        "w2": s["w2"],
                        "sliced_w2": s["sliced_w2"],
                        "w2_noise_floor": s["w2_noise_floor"],
                        "sliced_w2_noise_floor": s["sliced_w2_noise_floor"],
                        "wall_seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d"),
                "runs": rows,
                "table": table,
            },
            indent=2,
        )
        + "\n"
    )
    print(markdown(table))
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        rs = [r for r in rows if r["preset"] == preset]
        w2 = [r["w2"] for r in rs]
        sw = [r["sliced_w2"] for r in rs]
        out.append(
            {
                "preset": preset,
                "seeds": len(rs),
                "steps": rs[0]["steps"],
                "w2_mean": statistics.mean(w2),
                "w2_std": statistics.pstdev(w2),
                "sliced_w2_mean": statistics.mean(sw),
                "sliced_w2_std": statistics.pstdev(sw),
                "w2_noise_floor": statistics.mean(r["w2_noise_floor"] for r in rs),
                "sliced_w2_noise_floor": statistics.mean(r["sliced_w2_noise_floor"] for r in rs),
            }
        )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| preset | steps | seeds | W2 (mean ± std) | sliced W2 (mean ± std) | W2 noise floor | sliced noise floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['preset']} | {t['steps']} | {t['seeds']} | {t['w2_mean']:.3f} ± {t['w2_std']:.3f} | "
            f"{t['sliced_w2_mean']:.3f} ± {t['sliced_w2_std']:.3f} | {t['w2_noise_floor']:.3f} | "
            f"{t['sliced_w2_noise_floor']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
