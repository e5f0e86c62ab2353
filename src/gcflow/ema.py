"""Exponential moving average of weights, by fixed decay or by half-life (as in EDM).

Semantics: `update` is called once after every optimizer step k = 1, 2, ... and performs
ema ← β·ema + (1 − β)·θ. With a half-life of h images and a batch of B images, β = 0.5^(B/h),
so the contribution of a weight halves every h training images whatever the batch size.
Buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_from_half_life(half_life_images: float, batch_size: int) -> float:
    """β = 0.5^(B / h): per-step decay for a half-life of h images at batch size B."""
    if half_life_images <= 0:
        raise ValueError(f"EMA half-life must be > 0 images, got {half_life_images}")
    return 0.5 ** (batch_size / half_life_images)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen, gradient-free deep copy of `model` to hold the averaged weights."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model for parameters (one foreach lerp); buffers copied (one foreach copy).

    Nothing here reads a device value on the host, so on CUDA the update is queued without a sync.

    Args:
        ema: the averaged copy (from `make_ema(model)`), updated in place.
        model: the trained model; its parameters and buffers match `ema`'s one for one.
        decay: β in [0, 1] (e.g. 0.9999, or `ema_decay_from_half_life(h, B)`); 0 copies the model.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    e_params = [p for p in ema.parameters()]
    m_params = [p.detach() for p in model.parameters()]
    if e_params:
        torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if e_bufs:
        torch._foreach_copy_(e_bufs, m_bufs)
