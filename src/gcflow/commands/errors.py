"""Turn the library's expected failures into one-line messages and a non-zero exit status."""

from __future__ import annotations

import sys
from typing import Callable

from gcflow.training.checkpoint import CheckpointError
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import RunDirError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is written for the user (one line, with the fix)."""
    errs: list[type[BaseException]] = [ConfigError, RunDirError, CheckpointError]
    from gcflow.training.trainer import TrainingError

    errs.append(TrainingError)
    try:
        from gcflow.data.images import DatasetError

        errs.append(DatasetError)
    except ImportError:
        pass
    try:
        from gcflow.metrics.inception import MetricError

        errs.append(MetricError)
    except ImportError:
        pass
    return tuple(errs)


def report(exc: BaseException) -> int:
    """Print `gcflow: error: <message>` on stderr and return exit status 2 (1 for a failed run)."""
    msg = " ".join(str(exc).split())
    print(f"gcflow: error: {msg}", file=sys.stderr)
    return 2


def run_guarded(fn: Callable[[], int]) -> int:
    """Call fn, converting user errors to a one-line message and exit status 2."""
    try:
        return fn()
    except user_errors() as exc:
        return report(exc)
