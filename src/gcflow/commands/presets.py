"""`gcflow presets`: list the presets, or show one's resolved config with --show (and overrides)."""

from __future__ import annotations

import argparse
import json

from gcflow.commands.errors import run_guarded
from gcflow.training.config import ConfigError, apply_overrides, check_overrides_agree, to_dict, validate
from gcflow.training.presets import all_presets, load_preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", metavar="NAME", default=None, help="print the preset's resolved config (and network size)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="group.field=value",
        help="with --show: preview the config with these overrides, as 'gcflow train' would resolve it",
    )


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.show is None:
        if args.overrides:
            raise ConfigError("overrides need a preset to apply to: gcflow presets --show NAME key=value ...")
        presets = all_presets()
        width = max(map(len, presets))
        for name, p in presets.items():
            print(f"{name:<{width}}  {p.description}")
        return 0
    check_overrides_agree([(o, o) for o in args.overrides])
    cfg = apply_overrides(load_preset(args.show), list(args.overrides))
    validate(cfg)
    print(json.dumps(to_dict(cfg), indent=2))
    from gcflow.training.builders import describe_network

    print(describe_network(cfg))
    return 0
