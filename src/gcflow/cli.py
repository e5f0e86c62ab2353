"""The `gcflow` command line: one module per sub-command under gcflow.commands, dispatched by name."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Any

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("gcflow.commands.train", "train a consistency model (no arguments: the 1-minute CPU default)"),
    "presets": ("gcflow.commands.presets", "list the named presets, or show one with --show NAME"),
    "sample": ("gcflow.commands.sample", "draw samples from a trained run and write them with a picture"),
    "experiment": ("gcflow.commands.experiment", "run one of the paper's measured studies (see --list)"),
    "fid-ref": ("gcflow.commands.fid_ref", "compute and cache a dataset's reference feature statistics"),
    "evaluate": ("gcflow.commands.evaluate", "FID/KID/IS of a run with the paper's protocol (50k samples x 5 draws)"),
    "report": ("gcflow.commands.report", "compare runs: config diff, curves overlaid, final metrics (report.md)"),
    "export": ("gcflow.commands.export", "write a run's EMA model alone (safetensors + config) to share it"),
    "import-edm": (
        "gcflow.commands.import_edm",
        "import an NVlabs EDM/ECT network pickle safely (no code from the file runs) as safetensors",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from gcflow.commands.errors import one_line_usage_errors

    parser = argparse.ArgumentParser(prog="gcflow", description="Consistency models with generator-augmented flows.")
    one_line_usage_errors(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # a command whose module is not installed in this build
            raise
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gcflow` console script; returns the exit status.

    Ctrl-C and SIGTERM (e.g. a scheduler's) end the command with 'gcflow: interrupted' and status 130,
    also while the command modules are still importing; the training loop replaces this handler with
    its own, which first writes a checkpoint.
    """
    previous = _sigterm_raises_interrupt()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("gcflow: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_raises_interrupt() -> Any:
    """Turn SIGTERM into KeyboardInterrupt; returns the previous handler (None off the main thread)."""

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _main(argv: list[str] | None) -> int:
    parser = build_parser()  # imports every command module (torch included): Ctrl-C may land here
    # `group.field=value` overrides may come after options (argparse stops collecting positionals
    # at the first option), so gather the stray ones into the command's override list.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" in a and not a.startswith("-")]
    if stray and hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + stray
        extra = [a for a in extra if a not in stray]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
