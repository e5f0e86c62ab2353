"""`gcflow train`: train from a preset with `group.field=value` overrides."""

from __future__ import annotations

import argparse
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gcflow.commands.errors import one_line_usage_errors, run_guarded, user_errors
from gcflow.training.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_overrides_agree,
    describe_options,
    load_config,
    validate,
)
from gcflow.training.presets import DEFAULT_PRESET, load_preset
from gcflow.training.run_dir import out_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="group.field=value", help="override any config field (listed below)")
    p.add_argument("--preset", default=None, help=f"starting preset (default {DEFAULT_PRESET}; see 'gcflow presets')")
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="run folder (default: a new runs/<preset>[-<changed options>]-<time>-<id>)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="shorthand for train.steps=N; with --resume, extend the run to N steps, see README",
    )
    p.add_argument("--mu", type=float, default=None, help="shorthand for method.gc_mu=MU, the probability of a GC pair")
    p.add_argument("--seed", type=int, default=None, help="shorthand for train.seed=S")
    p.add_argument("--device", default=None, help="shorthand for train.device=DEV")
    p.add_argument(
        "--resume", type=Path, default=None, metavar="RUN_DIR", help="continue RUN_DIR from its newest good checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--auto-resume",
        action="store_true",
        help="with --out DIR: start DIR, or resume it if it holds a run of the same config (for requeued jobs)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = "options (group.field  type  default  meaning):\n" + describe_options()
    _add_steering_arguments(p)
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "help", False):
        return run_guarded(lambda: print_help(args))
    with _sigterm_as_interrupt():  # SIGTERM before (or after) training: 'gcflow: interrupted', exit 130, as Ctrl-C
        return _run_process(args)


def _run_process(args: argparse.Namespace) -> int:
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
    from gcflow.training.run_dir import default_run_dir, first_missing_folder, remove_failed_start
    from gcflow.training.trainer import Interrupted, train

    _check_flags(args)
    cfg, overrides = resolve_config(args)
    validate(cfg)
    resume, created = args.resume is not None, None
    if resume:
        run_dir = args.resume
    elif args.out is not None:
        run_dir, created = args.out, first_missing_folder(args.out)
    else:  # a new, uniquely named folder (made now); removed again if the run fails to start
        made_root = first_missing_folder(Path("runs"))
        run_dir = default_run_dir(Path("runs"), args.preset, overrides)
        created = made_root or run_dir
    say(f"gcflow: run folder {run_dir}")
    try:
        result = train(
            cfg,
            run_dir,
            resume=resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            validated=True,
            auto_resume=args.auto_resume,
            extend_to=args.steps if resume else None,
        )
    except Interrupted as exc:
        say(f"gcflow: {exc}")
        return 130
    except BaseException:
        if not resume:
            remove_failed_start(run_dir, created)  # no empty (or checkpoint-less) folder left behind
        raise
    s = result.summary
    say(f"gcflow: finished {s.get('step', 0)} steps in {s['wall_seconds']:.1f} s; run folder {result.run_dir}")
    if "w2" in s:
        say(
            f"gcflow: final W2 = {s['w2']:.4f} (noise floor {s['w2_noise_floor']:.4f}); "
            f"sliced W2 = {s['sliced_w2']:.4f} (noise floor {s['sliced_w2_noise_floor']:.4f})"
        )
    for key in ("classifier_fd", "pixel_sliced_w2"):
        if key in s:
            say(f"gcflow: final {key} = {s[key]:.4f}")
    return 0


# -- Steering: --config, conflicting spellings, --help with the resolved values ----------------------

SHORTHANDS = (("steps", "train.steps"), ("mu", "method.gc_mu"), ("seed", "train.seed"), ("device", "train.device"))


def _add_steering_arguments(p: argparse.ArgumentParser) -> None:
    """--config, and a --help that shows the values of the chosen preset or config (not the library's)."""
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="RUN/config.json",
        help="start from an earlier run's config.json instead of a preset (overrides still apply)",
    )
    # -h/--help only sets a flag: the page is printed by run(), once --preset/--config are known
    # wherever they appear on the line.
    p.conflict_handler = p._optionals.conflict_handler = "resolve"  # replaces argparse's own -h/--help
    p.add_argument("-h", "--help", action="store_true", help="show this help, with the values of --preset/--config")
    p.set_defaults(_parser=p)


def shorthand_overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(spelling, "group.field=value") of every override on the line: positional ones, then --steps/--mu/...

    Raises ConfigError (one line) when a setting is given twice with different values, e.g.
    `--mu 0.3 method.gc_mu=0.7`.
    """
    items = [(o, o) for o in args.overrides]
    for flag, key in SHORTHANDS:
        value = getattr(args, flag, None)
        if value is not None:
            items.append((f"--{flag} {value}", f"{key}={value}"))
    check_overrides_agree(items)
    return items


def resolve_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The config to train and the overrides that made it: --preset (default the default job) or
    --config RUN/config.json, then the overrides. Sets args.preset to the name run folders start
    with (the preset, or the earlier run's folder name without its time stamp)."""
    if args.config is not None and args.preset is not None:
        raise ConfigError(
            "--config and --preset cannot be combined: the config file holds every setting; drop --preset"
        )
    overrides = [item for _, item in shorthand_overrides(args)]
    if args.config is not None:
        base = _read_config_file(args.config)
        args.preset = _rerun_label(args.config)
    else:
        args.preset = args.preset or DEFAULT_PRESET
        base = load_preset(args.preset)
    return apply_overrides(base, overrides), overrides


def _read_config_file(path: Path) -> Config:
    """A config.json (a run folder names its own); one-line ConfigError when missing or unreadable."""
    path = path / "config.json" if path.is_dir() else path
    try:
        return load_config(path)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file; name an earlier run's config.json") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not a readable gcflow config ({type(exc).__name__})") from None


_TIME_STAMP = re.compile(r"-\d{8}-\d{6}(-[0-9a-f]{4})?$")


def _rerun_label(path: Path) -> str:
    """runs/toy-gc-mu0.3-20250101-120000-ab12/config.json -> toy-gc-mu0.3 (the name of a rerun's folder)."""
    folder = path if path.is_dir() else path.parent
    name = _TIME_STAMP.sub("", folder.resolve().name)
    return name or "config"


def print_help(args: argparse.Namespace) -> int:
    """`gcflow train [--preset P | --config FILE] [overrides] --help`: the options with the values they train with."""
    parser: argparse.ArgumentParser = args._parser
    cfg, _ = resolve_config(args)
    source = f"--config {args.config}" if args.config is not None else f"preset {args.preset}"
    values = _values(cfg)
    for action in parser._actions:
        key = dict(SHORTHANDS).get(action.dest)
        if key is not None and "(now " not in (action.help or ""):
            action.help = f"{action.help} (now {values[key]})"
    parser.epilog = f"options (group.field  type  value  meaning), values of {source}:\n" + describe_options(cfg)
    parser.print_help()
    return 0


def _values(cfg: Config) -> dict[str, Any]:
    from gcflow.training.config import iter_fields

    return {key: value for key, _, value in iter_fields(cfg)}


def _check_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot mean anything, as one-line errors."""
    from gcflow.training.config import ConfigError

    if args.auto_resume and args.out is None:
        raise ConfigError("--auto-resume needs --out DIR: a rerun must find the same folder (default names are unique)")
    if args.auto_resume and (args.resume is not None or args.overwrite):
        raise ConfigError("--auto-resume decides itself whether to start or resume; drop --resume/--overwrite")
    if args.resume is not None and (args.out is not None or args.overwrite):
        raise ConfigError("--resume RUN_DIR continues RUN_DIR in place; drop --out/--overwrite")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps} must be >= 1")


class _sigterm_as_interrupt:
    """Turn SIGTERM into KeyboardInterrupt while the command runs (outside the training loop, which
    handles both signals itself by checkpointing): the run stops with 'gcflow: interrupted', exit 130."""

    def __enter__(self) -> None:
        self.previous: Any = None
        try:
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread: leave signals alone
            pass

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt
