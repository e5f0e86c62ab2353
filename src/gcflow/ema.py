"""Exponential moving average of weights: constant decay, EDM's half-life, or ema-pytorch's warm-up.

Semantics: after every optimizer step k = 1, 2, ... the trainer calls `ema_step(ema, model, schedule, k)`.
An update is ema ← β·ema + (1 − β)·θ (`ema_update`); a copy is ema ← θ. The schedule says, as a pure
function of k, whether step k updates, copies or does nothing, and with which β. Nothing else is
stateful, so a run resumed at step m applies exactly what the uninterrupted run applied (no EMA
state to save besides the averaged weights).

Schedules (`EmaSchedule`):

* constant (`constant_ema`): β every step from step 1, never a copy (gcflow's historical default).
* half-life (`half_life_ema`, EDM): β = 0.5^(B/h), the contribution of a weight halves every h images.
* warm-up (`warmup_ema`): ema-pytorch 0.2.3's `EMA(beta, update_after_step=start, update_every,
  inv_gamma, power)`, which the paper's released code uses (method spec §10). With c = k − 1, the number
  of earlier calls of `EMA.update()`: nothing happens unless c is a multiple of update_every; the
  weights are copied while c ≤ start, and also at the first update after start (ema-pytorch copies
  once when it "initialises" the average); afterwards
  β(k) = min(beta, 1 − (1 + e/inv_gamma)^(−power)), e = k − start − 1 (β = 0 when e ≤ 0).

Buffers are copied, never averaged. ema-pytorch averages floating-point buffers; gcflow's networks
have only constant buffers (embedding frequencies), for which averaging and copying agree exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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


@torch.no_grad()
def ema_copy(ema: nn.Module, model: nn.Module) -> None:
    """ema ← model for parameters and buffers (foreach copies)."""
    e_params, m_params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if e_params:
        torch._foreach_copy_(e_params, m_params)
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if e_bufs:
        torch._foreach_copy_(e_bufs, m_bufs)


def warmup_decay(k: int, start: int, beta: float, inv_gamma: float = 1.0, power: float = 2.0 / 3.0) -> float:
    """ema-pytorch 0.2.3's `get_current_decay()` when its step counter reads k (i.e. during call k, 1-based).

    β = min(beta, 1 − (1 + e/inv_gamma)^(−power)) with e = max(k − start − 1, 0); β = 0 when e ≤ 0.
    Written with ema-pytorch's operation order so that it agrees to the last bit.
    """
    e = max(float(k - start - 1), 0.0)
    if e <= 0:
        return 0.0
    value = 1 - (1 + e / inv_gamma) ** -power
    return min(max(value, 0.0), beta)


@dataclass(frozen=True)
class EmaSchedule:
    """When and how the EMA follows the online weights, as a pure function of the step k (1-based).

    Attributes:
        beta: the decay (constant schedules) or its cap (warm-up).
        warmup: use ema-pytorch's warm-up decay `warmup_decay` instead of the constant `beta`.
        update_every: act only at calls k with (k − 1) a multiple of this (ema-pytorch's update_every).
        start: copy the weights while k − 1 ≤ start and at the first update after (ema-pytorch's
            update_after_step); None = never copy (the EMA starts from the initial weights).
        inv_gamma, power: the warm-up's shape (ema-pytorch's defaults 1 and 2/3).
    """

    beta: float = 0.9999
    warmup: bool = False
    update_every: int = 1
    start: int | None = None
    inv_gamma: float = 1.0
    power: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"EMA beta must be in [0, 1], got {self.beta}")
        if self.update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {self.update_every}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"EMA start must be >= 0 steps (or None for no copying), got {self.start}")
        if self.warmup and self.start is None:
            raise ValueError("the warm-up EMA needs a start step (ema-pytorch's update_after_step), e.g. start=0")
        if self.inv_gamma <= 0 or self.power <= 0:
            raise ValueError(f"EMA inv_gamma and power must be > 0, got {self.inv_gamma} and {self.power}")

    def acts_at(self, k: int) -> bool:
        """Whether optimizer step k (1-based) touches the EMA at all."""
        if k < 1:
            raise ValueError(f"EMA steps count optimizer steps from 1, got {k}")
        return (k - 1) % self.update_every == 0

    def copies_at(self, k: int) -> bool:
        """Whether step k copies the weights: an acting step whose previous acting step was ≤ start."""
        # ema-pytorch copies while c = k − 1 ≤ start, and once more at the first update with c > start
        # (its `initted` flag); that update is the one whose predecessor c − update_every is ≤ start.
        return self.start is not None and self.acts_at(k) and k - 1 - self.update_every <= self.start

    def decay_at(self, k: int) -> float | None:
        """The decay applied at step k: None = no update this step; 0.0 at copying steps."""
        if not self.acts_at(k):
            return None
        if self.copies_at(k):
            return 0.0
        if self.warmup:
            assert self.start is not None
            return warmup_decay(k, self.start, self.beta, self.inv_gamma, self.power)
        return self.beta


def constant_ema(decay: float) -> EmaSchedule:
    """ema ← decay·ema + (1 − decay)·θ after every step, starting from the initial weights."""
    return EmaSchedule(beta=decay)


def half_life_ema(half_life_images: float, batch_size: int) -> EmaSchedule:
    """EDM's EMA: a constant decay whose weights halve every `half_life_images` training images."""
    return EmaSchedule(beta=ema_decay_from_half_life(half_life_images, batch_size))


def warmup_ema(
    beta: float = 0.9999, update_every: int = 5, start: int = 0, inv_gamma: float = 1.0, power: float = 2.0 / 3.0
) -> EmaSchedule:
    """ema-pytorch 0.2.3's EMA as the paper's released code configures it (defaults: its CIFAR-10 values)."""
    return EmaSchedule(beta=beta, warmup=True, update_every=update_every, start=start, inv_gamma=inv_gamma, power=power)


def ema_step(ema: nn.Module, model: nn.Module, schedule: EmaSchedule, k: int) -> None:
    """Apply the schedule's step k (1-based: call it after the k-th optimizer step) to `ema`."""
    decay = schedule.decay_at(k)
    if decay is None:
        return
    if schedule.copies_at(k):
        ema_copy(ema, model)
    else:
        ema_update(ema, model, decay)


def weight_shares(schedule: EmaSchedule, k: int) -> torch.Tensor:
    """Shares w_j of the online weights θ_j (j = 0..k; θ_0 the initial weights) in the EMA after step k.

    Returns a float64 tensor of shape (k + 1,) summing to 1: the EMA equals Σ_j w_j θ_j. For a constant
    0.9999 from step 0, w_0 at k = 10 000 is 0.9999^10000 ≈ 0.37; the warm-up copies at step 1, so w_0 = 0.
    """
    w = torch.zeros(k + 1, dtype=torch.float64)
    w[0] = 1.0
    for j in range(1, k + 1):
        decay = schedule.decay_at(j)
        if decay is None:
            continue
        if schedule.copies_at(j):
            w.zero_()
            w[j] = 1.0
        else:
            w.mul_(decay)
            w[j] = 1.0 - decay
    return w
