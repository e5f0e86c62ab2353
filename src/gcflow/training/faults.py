"""What stops a run: a non-finite loss or gradient (recorded on the device without a host sync), or a signal."""

from __future__ import annotations

import math
import signal
from typing import Any

import torch
from torch import Tensor

from gcflow.training.distributed import World


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the likely cause."""


class Interrupted(Exception):
    """Raised inside the loop after SIGINT/SIGTERM, once a checkpoint has been written."""


def nonfinite_message(step: int, loss: float, grad_norm: float) -> str:
    """One line naming the first non-finite step, what was non-finite, and the usual fix."""
    what = (
        "loss"
        if not math.isfinite(loss)
        else "gradient"
        if not math.isfinite(grad_norm)
        else "loss or gradient (on another process)"
    )
    return (
        f"non-finite {what} at step {step} (loss={loss:.4g}, grad norm={grad_norm:.4g}); "
        "likely cause: learning rate too high or non-finite data; lower optim.lr or check the data"
    )


def new_fault_record(device: torch.device) -> Tensor:
    """(3,) float64 on `device`: (first non-finite step or 0, its loss, its gradient norm)."""
    return torch.zeros(3, dtype=torch.float64, device=device)


def record_fault(fault: Tensor, step: int, loss: Tensor, grad_norm: Tensor) -> None:
    """Remember (step, loss, grad norm) of the first non-finite step, on the device (no host sync).

    fault: (3,) float64 from `new_fault_record`; loss, grad_norm: 0-d tensors on the same device.
    """
    first = (fault[0] == 0) & ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
    step_t = torch.full((), float(step), dtype=torch.float64, device=fault.device)
    now = torch.stack([step_t, loss.double(), grad_norm.double()])
    fault.copy_(torch.where(first, now, fault))


def raise_on_fault(fault: Tensor, world: World) -> None:
    """Read the fault record (a sync point) and stop every process if any process recorded a non-finite step."""
    step, loss, grad_norm = fault.tolist()
    (bad,) = world.any(step > 0)
    if bad:
        if step == 0:
            raise TrainingError("non-finite loss or gradient on another process; see rank 0's message")
        raise TrainingError(nonfinite_message(int(step), loss, grad_norm))


class StopSignals:
    """Record SIGINT/SIGTERM instead of dying (the loop checkpoints and stops); restores the handlers on exit."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._handlers[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _note(self, sig: int, _frame: Any) -> None:
        self.received.append(sig)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
