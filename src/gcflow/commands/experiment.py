"""`gcflow experiment`: run one of the paper's measured studies into a folder (results.json, figures, report.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import out_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="experiment options (see NAME --options)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--options", action="store_true", help="show the options of NAME with their defaults and exit")
    p.add_argument("--out", type=out_path, default=None, help="output folder (default runs/experiments/NAME)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of an existing output folder")
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _fail(message: str) -> int:
    print(f"gcflow: error: {message}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from gcflow.experiments import EXPERIMENTS, get_experiment, options_type
    from gcflow.experiments.options import as_dict, describe, parse_options
    from gcflow.experiments.report import write_report
    from gcflow.training.run_dir import RunLock, first_missing_folder, prepare_run_dir, remove_failed_start

    if args.list:
        width = max(map(len, EXPERIMENTS))
        for name, (description, _) in EXPERIMENTS.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if not args.name:
        return _fail("name an experiment, e.g. 'gcflow experiment theorem1'; 'gcflow experiment --list' lists them")
    try:
        _, fn = get_experiment(args.name)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    cls = options_type(fn)
    if args.options:
        print(f"options of experiment {args.name} (key  default  meaning):\n{describe(cls)}")
        return 0
    try:
        options = parse_options(cls, list(args.overrides), args.name)
    except (ConfigError, TypeError, ValueError) as exc:
        return _fail(" ".join(str(exc).split()))
    out = args.out or Path("runs") / "experiments" / args.name
    created = first_missing_folder(out)
    out = prepare_run_dir(out, resume=False, overwrite=args.overwrite)  # refuses to replace what is not a run
    command = "gcflow experiment " + " ".join(shlex.quote(a) for a in [args.name, *args.overrides])
    print(f"gcflow: experiment {args.name} -> {out}")
    start = time.perf_counter()
    try:
        with RunLock(out):
            report = fn(options, out)
            seconds = time.perf_counter() - start
            write_report(out, args.name, command, as_dict(options), report, seconds)
    except (ValueError, ArithmeticError) as exc:  # e.g. a diverged training: non-finite numbers
        remove_failed_start(out, created)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _fail(
            f"experiment {args.name} failed ({type(exc).__name__}: {first}); no results.json was written "
            "(a diverged run? see 'gcflow experiment NAME --options')"
        )
    except BaseException:
        remove_failed_start(out, created)  # a folder this command made is not left empty
        raise
    print(f"gcflow: finished in {seconds:.0f} s; report {out / 'report.md'}")
    for claim in report.claims:
        print(f"  [{claim.verdict}] {claim.claim}")
    return 0
