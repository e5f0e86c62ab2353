"""Turn the library's expected failures into one-line messages and a non-zero exit status."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import NoReturn

from gcflow.training.checkpoint import CheckpointError
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import RunDirError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is written for the user (one line, with the fix)."""
    errs: list[type[BaseException]] = [ConfigError, RunDirError, CheckpointError]
    from gcflow.training.faults import TrainingError

    errs.append(TrainingError)
    try:
        from gcflow.data.common import DatasetError

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
    """Print `gcflow: error: <message>` on stderr and return exit status 2."""
    msg = " ".join(str(exc).split())
    print(f"gcflow: error: {msg}", file=sys.stderr)
    return 2


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system failure: what failed, on which path, and the usual fix."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        needed = getattr(exc, "needed", None)  # set by gcflow.files.DiskFullError
        how = f" ({needed} bytes needed)" if needed is not None else ""
        return f"no space left on the device writing{where}{how}; free some space (runs can continue with --resume)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied on{where} ({exc.strerror}); choose a writable folder"
    return f"{exc.strerror or type(exc).__name__}:{where}" if where else (exc.strerror or str(exc))


def run_guarded(fn: Callable[[], int]) -> int:
    """Call fn, converting user errors, file-system failures and running out of memory to a one-line
    message and exit status 2, and Ctrl-C (also during fn's imports) to 'gcflow: interrupted', 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        return interrupted()
    except user_errors() as exc:
        return report(exc)
    except OSError as exc:
        return report(RuntimeError(describe_os_error(exc)))
    except out_of_memory_errors() as exc:
        return report(RuntimeError(describe_out_of_memory(exc)))


def interrupted() -> int:
    """Report a Ctrl-C (KeyboardInterrupt) in one line on stderr; returns exit status 130."""
    print("gcflow: interrupted", file=sys.stderr)
    return 130


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """MemoryError and torch's (CUDA/MPS/XPU) out-of-memory error."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (MemoryError, oom) if oom is not None else (MemoryError,)


def describe_out_of_memory(exc: BaseException) -> str:
    """One line for an out-of-memory failure, with the usual fixes (the library's text is dropped: it is many lines)."""
    where = "GPU" if type(exc) is not MemoryError else "host"
    return (
        f"out of {where} memory ({type(exc).__name__}); lower the batch size (--batch or train.batch_size), "
        "use a smaller network, or free memory used by other processes"
    )


def one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make `parser` report bad command-line syntax (e.g. `--steps ten`) as one line with exit status 2."""

    def error(message: str) -> NoReturn:
        print(f"gcflow: error: {message}; see '{parser.prog} --help'", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
