"""The typed result of pair construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

# f(x, σ) -> x̂: x (B, *D), σ (B,) -> (B, *D). Used for GC predictors and velocities alike.
PointFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class PairBatch:
    """A batch of consistency pairs. The loss compares sg f(x_i, σ_i) with f(x_next, σ_next).

    Attributes:
        x_i: (B, *D) target point at the lower level σ_i (passed through the stop-gradient network).
        x_next: (B, *D) online point at the higher level σ_{i+1}.
        sigma_i: (B,) lower levels.
        sigma_next: (B,) higher levels.
        weight: (B,) per-sample loss weights λ_i.
        endpoint: (B, *D) the trajectory end the pair was built from: x⋆ for IC/OT/CD pairs, x̂ for GC pairs.
        noise: (B, *D) the shared z (after coupling).
        is_gc: (B,) bool, True where the pair is a generator-augmented pair.
    """

    x_i: Tensor
    x_next: Tensor
    sigma_i: Tensor
    sigma_next: Tensor
    weight: Tensor
    endpoint: Tensor
    noise: Tensor
    is_gc: Tensor
