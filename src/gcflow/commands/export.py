"""`gcflow export RUN --out DIR`: the run's EMA model alone (safetensors), its config and a loader README.

The folder loads with `gcflow.load_exported(DIR)` (or `gcflow.load_run(DIR)`) and needs no optimizer
state; the tensor naming is documented in gcflow.export and in the folder's README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gcflow.commands.errors import one_line_usage_errors, run_guarded


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a gcflow run folder (its newest good checkpoint) or one checkpoint file")
    p.add_argument("--out", type=Path, required=True, help="the export folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gcflow.export import export_run

    weights = export_run(args.run, args.out, overwrite=args.overwrite)
    size = weights.stat().st_size / 2**20
    print(
        f"gcflow: exported the EMA model of {args.run} to {args.out} "
        f"({weights.name}, {size:.1f} MiB; see its README.md)"
    )
    return 0
