"""Consistency-training pairs: both points on the straight path x⋆ + σ z with the same z."""

from __future__ import annotations

import torch
from torch import Tensor

from gcflow.pairs.types import PairBatch
from gcflow.shapes import per_sample


def ct_pairs(
    x0: Tensor,
    z: Tensor,
    sigma_i: Tensor,
    sigma_next: Tensor,
    weight: Tensor,
    is_gc: Tensor | None = None,
) -> PairBatch:
    """x_i = x0 + σ_i z, x_next = x0 + σ_{i+1} z. x0, z: (B, *D); σ's and weight: (B,)."""
    if is_gc is None:
        is_gc = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    return PairBatch(
        x_i=x0 + per_sample(sigma_i, x0) * z,
        x_next=x0 + per_sample(sigma_next, x0) * z,
        sigma_i=sigma_i,
        sigma_next=sigma_next,
        weight=weight,
        endpoint=x0,
        noise=z,
        is_gc=is_gc,
    )
