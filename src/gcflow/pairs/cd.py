"""Consistency-distillation pairs: the target point comes from one ODE step with a given velocity.

x_next = x⋆ + σ_{i+1} z and x^Φ_i = x_next − (σ_{i+1} − σ_i) v_{σ_{i+1}}(x_next) (Euler), or Heun's
second-order correction. With the exact velocity of a toy distribution this is *oracle* CD, the
reference that consistency training approximates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gcflow.pairs.types import PairBatch, PointFn
from gcflow.shapes import per_sample


def euler_step(x: Tensor, sigma_from: Tensor, sigma_to: Tensor, velocity: PointFn) -> Tensor:
    """One Euler step of dx/dσ = v_σ(x) from σ_from to σ_to (both (B,))."""
    return x + per_sample(sigma_to - sigma_from, x) * velocity(x, sigma_from)


def heun_step(x: Tensor, sigma_from: Tensor, sigma_to: Tensor, velocity: PointFn) -> Tensor:
    """One Heun (trapezoidal predictor–corrector) step of dx/dσ = v_σ(x)."""
    v0 = velocity(x, sigma_from)
    x_euler = x + per_sample(sigma_to - sigma_from, x) * v0
    v1 = velocity(x_euler, sigma_to)
    return x + per_sample(sigma_to - sigma_from, x) * 0.5 * (v0 + v1)


ODE_STEPS: dict[str, Callable[[Tensor, Tensor, Tensor, PointFn], Tensor]] = {"euler": euler_step, "heun": heun_step}


@torch.no_grad()
def cd_pairs(
    x0: Tensor,
    z: Tensor,
    sigma_i: Tensor,
    sigma_next: Tensor,
    weight: Tensor,
    velocity: PointFn,
    solver: str = "euler",
) -> PairBatch:
    """CD pairs from a velocity function v(x (B,*D), σ (B,)) -> (B,*D); no gradient reaches the teacher."""
    try:
        step = ODE_STEPS[solver]
    except KeyError:
        raise KeyError(f"unknown ODE solver {solver!r}; choose one of {sorted(ODE_STEPS)}") from None
    x_next = x0 + per_sample(sigma_next, x0) * z
    x_i = step(x_next, sigma_next, sigma_i, lambda x, s: velocity(x, s).to(x.dtype))
    return PairBatch(
        x_i=x_i,
        x_next=x_next,
        sigma_i=sigma_i,
        sigma_next=sigma_next,
        weight=weight,
        endpoint=x0,
        noise=z,
        is_gc=torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device),
    )
