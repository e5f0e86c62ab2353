"""Run every `gcflow experiment` study and gather their claims and figures into docs/theory.md.

    python benchmarks/theory_report.py                # run all studies (about 15 min on one core), then write
    python benchmarks/theory_report.py --reuse DIR    # only gather: DIR/<study>/results.json must exist

Each study is run exactly as `gcflow experiment NAME [key=value ...]` (the list is STUDIES below,
including a 16-D Gaussian run of the discrepancy study that shows the dimension effect). The
script copies each study's PNG figures to docs/figures/theory/, writes docs/theory.md (one table
of every claim, measured value and verdict, with each study's command and run time) and
benchmarks/results/theory.json (the same, machine-readable).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from gcflow.experiments.report import cell, claims_table, figure_lines
from gcflow.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

# (folder name, experiment, overrides); the folder name is also the figure prefix.
STUDIES: list[tuple[str, str, list[str]]] = [
    ("exact-map", "exact-map", []),
    ("theorem1", "theorem1", []),
    ("discrepancy", "discrepancy", []),
    ("discrepancy-gaussian16", "discrepancy", ["data=gaussian:16"]),
    ("transport", "transport", []),
    ("convergence", "convergence", []),
    ("modes", "modes", []),
]


def run_studies(base: Path) -> None:
    gcflow = Path(sys.executable).parent / "gcflow"
    for folder, name, overrides in STUDIES:
        cmd = [str(gcflow), "experiment", name, *overrides, "--out", str(base / folder), "--overwrite"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def gather(base: Path, docs: Path, results_json: Path) -> None:
    figures = docs / "figures" / "theory"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()
    studies = []
    for folder, _, _ in STUDIES:
        result = json.loads((base / folder / "results.json").read_text())
        pictures = []
        for name, caption in result.get("figures", {}).items():
            target = f"{folder}--{Path(name).name}"
            shutil.copy(base / folder / name, figures / target)
            pictures.append({"file": f"figures/theory/{target}", "caption": caption})
        studies.append(
            {
                "folder": folder,
                "title": result["title"],
                "command": result["command"],
                "seconds": result["seconds"],
                "claims": result["claims"],
                "notes": [n.replace(str(ROOT) + "/", "") for n in result.get("notes", [])],
                "figures": pictures,
                "environment": result.get("environment", {}),
            }
        )
    atomic_write_text(results_json, json.dumps({"studies": studies}, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(docs / "theory.md", render(studies))


def render(studies: list[dict]) -> str:
    lines = [
        "# The paper's theory, measured",
        "",
        "Every number below comes from `gcflow experiment` on a CPU (one thread), with the command shown",
        "for each study; `python benchmarks/theory_report.py` re-runs them all and rewrites this page",
        "(machine-readable copy: `benchmarks/results/theory.json`). A verdict says whether the measurement",
        "agrees with the claim as stated; *partly* and *disagrees* are reported as measured, with the",
        "study's notes on why.",
        "",
    ]
    for s in studies:
        lines += [f"## {s['title']}", "", f"Command: `{s['command']}` ({s['seconds']:.0f} s).", ""]
        lines += claims_table((c["claim"], c["measured"], c["verdict"]) for c in s["claims"])
        lines.append("")
        for fig in s["figures"]:
            lines += figure_lines(fig["file"], fig["caption"])
        if s["notes"]:
            lines += ["Notes:", ""] + [f"* {cell(n)}" for n in s["notes"]] + [""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--reuse", type=Path, default=None, help="gather existing study folders from this directory instead of running"
    )
    p.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "theory", help="where the studies run (default runs/theory)"
    )
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "theory.json")
    args = p.parse_args()
    base = args.reuse or args.work
    if args.reuse is None:
        run_studies(base)
    missing = [f for f, _, _ in STUDIES if not (base / f / "results.json").is_file()]
    if missing:
        print(
            f"theory_report: error: no results.json for {', '.join(missing)} under {base}; run without --reuse",
            file=sys.stderr,
        )
        return 2
    gather(base, args.docs, args.results)
    print(f"theory_report: wrote {args.docs / 'theory.md'} and {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
