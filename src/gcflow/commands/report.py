"""`gcflow report RUN [RUN ...]`: one markdown page comparing runs (config diff, curves overlaid, final metrics).

Writes report.md and report.png into --out (default: the run folder for one run, ./report for several).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.commands.errors import report as report_error


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="gcflow run folders (finished or running)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.md and report.png (default: the run folder for one run, ./report for several)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing report.md in --out")
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    from gcflow.report import ReportError

    def go() -> int:
        try:
            return _run(args)
        except ReportError as exc:
            return report_error(exc)

    return run_guarded(go)


def _run(args: argparse.Namespace) -> int:
    from gcflow.report import write_report

    out = args.out or (args.runs[0] if len(args.runs) == 1 else Path("report"))
    md = write_report(args.runs, out, overwrite=args.overwrite)
    print(f"gcflow: wrote {md} and its curves {md.with_suffix('.png')}")
    return 0
