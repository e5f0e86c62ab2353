"""`gcflow presets`: list the presets, or show one's resolved config with --show."""

from __future__ import annotations

import argparse
import json

from gcflow.commands.errors import run_guarded
from gcflow.training.config import to_dict
from gcflow.training.presets import all_presets, load_preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", metavar="NAME", default=None, help="print the preset's resolved config (and network size)")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.show is None:
        presets = all_presets()
        width = max(map(len, presets))
        for name, p in presets.items():
            print(f"{name:<{width}}  {p.description}")
        return 0
    cfg = load_preset(args.show)
    print(json.dumps(to_dict(cfg), indent=2))
    from gcflow.training.builders import describe_network

    print(describe_network(cfg))
    return 0
