"""The one helper that broadcasts per-sample quantities over data of any shape.

Per-sample noise levels always have shape (B,); data has shape (B, *D) where D is (2,) for
2-D points and (C, H, W) for images. Every formula goes through `per_sample` so that toys
and images share each line of the method.
"""

from __future__ import annotations

from torch import Tensor


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """View a (B,) tensor as (B, 1, ..., 1) so it broadcasts against `like` of shape (B, *D)."""
    if values.ndim != 1:
        raise ValueError(f"per-sample values must have shape (B,), got {tuple(values.shape)}")
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def flatten_samples(x: Tensor) -> Tensor:
    """(B, *D) -> (B, prod(D)): the per-sample vector the distances act on."""
    return x.reshape(x.shape[0], -1)
