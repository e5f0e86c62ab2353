"""`gcflow train`: train from a preset with `group.field=value` overrides."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

from gcflow.commands.errors import one_line_usage_errors, run_guarded, user_errors
from gcflow.training.config import apply_overrides, describe_options, validate
from gcflow.training.presets import DEFAULT_PRESET, load_preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="group.field=value", help="override any config field (listed below)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"starting preset (default {DEFAULT_PRESET}; see 'gcflow presets')")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<preset>-<time>)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for train.steps=N")
    p.add_argument("--mu", type=float, default=None, help="shorthand for method.gc_mu=MU, the probability of a GC pair")
    p.add_argument("--seed", type=int, default=None, help="shorthand for train.seed=S")
    p.add_argument("--device", default=None, help="shorthand for train.device=DEV")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue RUN_DIR from its newest good checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = "options (group.field  type  default  meaning):\n" + describe_options()
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    if _is_main_process():
        return run_guarded(lambda: _run(args, print))
    # The other processes of a torchrun job stay silent: rank 0 reports for the run, errors included.
    try:
        return _run(args, lambda *_: None)
    except (*user_errors(), OSError):
        return 2


def _is_main_process() -> bool:
    from gcflow.training.config import ConfigError
    from gcflow.training.distributed import world_from_env

    try:
        return world_from_env().is_main
    except ConfigError:
        return True  # a broken torchrun environment is reported by train()


def _run(args: argparse.Namespace, say: Callable[..., None]) -> int:
    from gcflow.training.trainer import Interrupted, train

    overrides = list(args.overrides)
    for flag, key in (("steps", "train.steps"), ("mu", "method.gc_mu"), ("seed", "train.seed"), ("device", "train.device")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = apply_overrides(load_preset(args.preset), overrides)
    validate(cfg)
    if args.resume is not None:
        run_dir, resume = args.resume, True
    else:
        run_dir = args.out or Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        resume = False
    say(f"gcflow: run folder {run_dir}")
    try:
        result = train(cfg, run_dir, resume=resume, overwrite=args.overwrite, progress=not args.no_progress, validated=True)
    except Interrupted as exc:
        say(f"gcflow: {exc}")
        return 130
    s = result.summary
    say(f"gcflow: finished {s['step']} steps in {s['wall_seconds']:.1f} s; run folder {result.run_dir}")
    if "w2" in s:
        say(f"gcflow: final W2 = {s['w2']:.4f} (noise floor {s['w2_noise_floor']:.4f}); "
              f"sliced W2 = {s['sliced_w2']:.4f} (noise floor {s['sliced_w2_noise_floor']:.4f})")
    for key in ("classifier_fd", "pixel_sliced_w2"):
        if key in s:
            say(f"gcflow: final {key} = {s[key]:.4f}")
    return 0
