"""One markdown page comparing runs: the config settings that differ, the curves overlaid, the final metrics.

`write_report([RUN, ...], OUT)` reads each run folder's config.json, metrics.jsonl and (when the
run finished) summary.json, and writes OUT/report.md with OUT/report.png (the metrics.jsonl curves
of all runs overlaid, one panel per metric). This is `gcflow report RUN [RUN ...]`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gcflow.files import atomic_write_bytes
from gcflow.plotting import metric_label, save_overlaid_curves

# Record fields that are bookkeeping, not curves; noise floors are drawn with their metric instead.
NOT_CURVES = {"step", "images", "kind", "seconds", "partial", "window_steps", "loss_sum", "grad_norm_sum", "gc_rows"}
FLOORS = {"w2": "w2_noise_floor", "sliced_w2": "sliced_w2_noise_floor"}
# Curves first in this order (the training record, then evaluations); other numeric keys after, sorted.
CURVE_ORDER = [
    "loss",
    "grad_norm",
    "lr",
    "n_scales",
    "mu",
    "gc_fraction",
    "images_per_s",
    "step_time_ms",
    "w2",
    "sliced_w2",
    "classifier_fd",
    "pixel_sliced_w2",
    "fid",
    "kid",
    "is",
]


class ReportError(ValueError):
    """A run folder cannot be reported on; the message is one line naming the folder and the fix."""


@dataclass
class RunRecords:
    """What a report reads from one run folder."""

    label: str
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {type(exc).__name__}; is this a complete gcflow run folder?") from None


def read_run(path: Path, label: str | None = None) -> RunRecords:
    """The config, metrics.jsonl records and summary (None while the run has not finished) of a run folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ReportError(f"{path} is not a gcflow run folder (no config.json)")
    records = []
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if "event" not in record:  # event records (precision switches) are not evaluations
                records.append(record)
        except ValueError:
            if i < len(lines):  # a torn last line is a run still writing; anything else is damage
                raise ReportError(f"{metrics} line {i} is not JSON; the file is damaged") from None
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    return RunRecords(label or path.name, path, _read_json(path / "config.json"), records, summary)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """{"group": {"field": v}} -> {"group.field": v} (the spelling of command-line overrides)."""
    return {f"{g}.{k}": v for g, fields in config.items() if isinstance(fields, dict) for k, v in fields.items()}


def config_diff(configs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The settings whose values differ between configs: "group.field" -> one value per config (None if absent)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k)) for f in flat}) > 1}


def curve_keys(runs: Sequence[RunRecords]) -> list[str]:
    """The numeric metrics recorded by any run, in CURVE_ORDER then alphabetical order."""
    found = {
        k
        for r in runs
        for rec in r.records
        for k, v in rec.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    found -= NOT_CURVES | set(FLOORS.values())
    return [k for k in CURVE_ORDER if k in found] + sorted(found - set(CURVE_ORDER))


def final_metrics(run: RunRecords) -> dict[str, Any]:
    """The run's final numbers: summary.json's scalars, or while it runs the newest value of each metric
    of its evaluations (the training records' every-log_every values when it has not evaluated yet)."""
    if run.summary is not None:
        return {
            k: v for k, v in run.summary.items() if isinstance(v, (int, float, str)) and k not in ("run_dir", "kind")
        }
    evals = [r for r in run.records if r.get("kind") != "train"]
    last: dict[str, Any] = {}
    for rec in evals or run.records:
        last.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "kind"})
    return last


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(_cell(x) for x in v)
    return str(v).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_cell(c) if i else str(c) for i, c in enumerate(row)) + " |" for row in rows]


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def render(runs: Sequence[RunRecords], png_name: str | None) -> str:
    """The markdown page for `runs`; `png_name` is the curves picture beside it (None: no curves)."""
    labels = [r.label for r in runs]
    lines = [f"# gcflow report: {' vs '.join(labels)}", "", "Runs:"]
    lines += [
        f"* `{r.label}`: `{r.path}` ({'finished' if r.summary else 'no summary.json yet'}, "
        f"{len(r.records)} metrics records)"
        for r in runs
    ]
    lines += ["", "## Configuration differences", ""]
    diff = config_diff([r.config for r in runs])
    if len(runs) == 1:
        lines.append(f"One run: its whole config is in `{runs[0].path / 'config.json'}`.")
    elif not diff:
        lines.append("The runs share the same config (they differ only in what the config does not hold).")
    else:
        lines += _table(["setting", *labels], [[f"`{k}`", *v] for k, v in diff.items()])
    lines += ["", "## Curves", ""]
    lines.append(
        f"![metrics of {', '.join(labels)} against the training step]({png_name})"
        if png_name
        else "No run has recorded metrics yet."
    )
    lines += ["", "## Final metrics", ""]
    finals = [final_metrics(r) for r in runs]
    keys = [k for k in dict.fromkeys(k for f in finals for k in f) if k not in ("config",)]
    rows = [
        [f"`{k}`" + (f": {metric_label(k)}" if metric_label(k) != k else ""), *[f.get(k) for f in finals]] for k in keys
    ]
    lines += _table(["metric", *labels], rows) if rows else ["No metrics yet."]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence[Path], out: Path, *, overwrite: bool = False) -> Path:
    """Write OUT/report.md and OUT/report.png comparing the runs; returns the markdown's path.

    Args:
        run_dirs: one or more gcflow run folders (finished or still running).
        out: the folder to write into (created if missing).
        overwrite: replace an existing OUT/report.md (otherwise a ReportError).
    """
    if not run_dirs:
        raise ReportError("name at least one run folder")
    paths = [Path(p) for p in run_dirs]
    runs = [read_run(p, label) for p, label in zip(paths, _labels(paths))]
    out = Path(out)
    md, png = out / "report.md", out / "report.png"
    if md.exists() and not overwrite:
        raise ReportError(f"{md} already exists; pass --overwrite to replace it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    drawn = save_overlaid_curves(
        png, {r.label: r.records for r in runs}, curve_keys(runs), FLOORS, title=" vs ".join(r.label for r in runs)
    )
    atomic_write_bytes(md, render(runs, png.name if drawn else None).encode())
    return md
