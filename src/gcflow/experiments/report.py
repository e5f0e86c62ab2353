"""What an experiment leaves behind: `results.json` (every number) and `report.md` (claims vs measurements).

An experiment returns an `ExperimentReport`: the paper's claims it tested, each with the measured
numbers and a verdict, the raw results, and the figures it wrote into its folder.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcflow.files import atomic_write_text

VERDICTS = ("agrees", "disagrees", "partly", "inconclusive", "measured")


@dataclass
class Claim:
    """One statement checked by an experiment.

    Attributes:
        claim: what the paper (or the theory) says, in one sentence.
        measured: the numbers we measured, in one or two sentences.
        verdict: one of VERDICTS ("measured" for open questions the paper did not answer).
    """

    claim: str
    measured: str
    verdict: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; choose one of {VERDICTS}")


@dataclass
class ExperimentReport:
    """The outcome of one experiment run.

    Attributes:
        title: a heading for report.md.
        summary: a short paragraph saying what was run.
        claims: the checked statements.
        results: all measured numbers (JSON-able after `jsonable`).
        figures: file names of the PNG figures written into the output folder, with a caption each.
        notes: caveats worth a line in the report.
    """

    title: str
    summary: str
    claims: list[Claim]
    results: dict[str, Any]
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def jsonable(obj: Any) -> Any:
    """Convert tensors, numpy values, tuples and non-finite floats (-> None) for strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fmt(x: float, digits: int = 3) -> str:
    """A number for prose: 3 significant digits, scientific when small or large."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def write_report(
    out: Path, name: str, command: str, options: dict[str, Any], report: ExperimentReport, seconds: float
) -> None:
    """Write `results.json` and `report.md` into the experiment folder `out`."""
    doc = {
        "experiment": name,
        "title": report.title,
        "command": command,
        "options": options,
        "seconds": round(seconds, 2),
        "claims": [c.__dict__ for c in report.claims],
        "results": report.results,
        "figures": report.figures,
        "notes": report.notes,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
    }
    atomic_write_text(out / "results.json", json.dumps(jsonable(doc), indent=2, allow_nan=False) + "\n")
    lines = [
        f"# {report.title}",
        "",
        report.summary,
        "",
        f"Command: `{command}`  ",
        f"Run time: {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s).",
        "",
    ]
    lines += ["## Claims and measurements", ""] + claims_table((c.claim, c.measured, c.verdict) for c in report.claims)
    if report.figures:
        lines += ["", "## Figures", ""]
        for fname, caption in report.figures.items():
            lines += figure_lines(fname, caption)
    if report.notes:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in report.notes]
    lines += ["", "## Options", "", "```"] + [f"{k} = {v}" for k, v in options.items()] + ["```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))


def claims_table(claims: Iterable[tuple[str, str, str]]) -> list[str]:
    """Markdown lines of a `claim | measured | verdict` table from (claim, measured, verdict) triples."""
    lines = ["| claim | measured | verdict |", "|---|---|---|"]
    return lines + [f"| {cell(claim)} | {cell(measured)} | **{verdict}** |" for claim, measured, verdict in claims]


def figure_lines(path: str, caption: str) -> list[str]:
    """Markdown lines showing a figure with its caption below it."""
    return [f"![{cell(caption)}]({path})", "", f"*{cell(caption)}*", ""]


def cell(text: str) -> str:
    """Text for one Markdown table cell or line: whitespace collapsed, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
