"""Easy Consistency Tuning's continuous-time setting (Geng et al. 2024, "Consistency Models Made Easy").

Facts taken from the released code, locuslab/ect (read at its default branch):
`training/loss.py` (class ECMLoss: level sampling, the mapping r(t), the loss and its weighting),
`training/ct_training_loop.py` (the stage schedule and the EMA update), `ct_train.py` (defaults)
and `run_ecm.sh` / `run_ecm_1hour.sh` (the CIFAR-10 command lines). The code below is our own.

    t ~ exp(N(P_mean, P_std²)),                P_mean = −1.1, P_std = 2.0
    r(t) = max(0, t·(1 − q^{−(stage+1)}·n(t))), n(t) = 1 + k·sigmoid(−b·t)  ("sigmoid" mapping;
                                                 the "const" mapping uses n = 1), k = 8, b = 1
    stage = iteration // iterations_per_stage  (ECT's `--double` ticks; Δt = t − r halves per stage for q = 2)
    L = E d(f(x⋆ + t z, t), sg f(x⋆ + r z, r)) / (t − r),  d(a, b) = sqrt(‖a − b‖² + c²) − c, c = 0 by default
    (so d is the plain L2 norm: ECT's "adaptive weighting" with p = 1/2); where r = 0 the target is x⋆ itself.

GC composes unchanged: build the pair from x̂ = sg f_η(x⋆ + t z, t) instead of x⋆, with the same z.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gcflow.distances import pseudo_huber
from gcflow.pairs.ct import ct_pairs
from gcflow.pairs.types import PairBatch
from gcflow.shapes import per_sample
from gcflow.sigmas import lognormal_levels

ECT_P_MEAN = -1.1
ECT_P_STD = 2.0
MAPPINGS = ("sigmoid", "const")


@dataclass(frozen=True)
class ECTSettings:
    """One ECT training recipe (all values from locuslab/ect; see `ECT_CIFAR10`).

    Attributes:
        p_mean, p_std: lognormal level distribution of t.
        q: shrink factor of Δt per stage; k, b: the sigmoid mapping n(t) = 1 + k·sigmoid(−b t).
        mapping: "sigmoid" or "const".
        c: pseudo-Huber constant of the distance (0 = L2 norm).
        iterations_per_stage: ECT's `--double` ticks × iterations per tick.
        iterations, batch, lr, optimizer, dropout: the run's budget and optimiser.
        ema_beta: constant EMA decay applied after every iteration (no warm-up).
        sigma_min: σ_min of the consistency parameterisation at evaluation (ECMPrecond).
        two_step_sigma: the intermediate level of ECT's two-step sampler (`--mid_t`).
        teacher: the EDM network the run is initialised from.
    """

    p_mean: float = ECT_P_MEAN
    p_std: float = ECT_P_STD
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    mapping: str = "sigmoid"
    c: float = 0.0
    iterations_per_stage: int = 25_000
    iterations: int = 200_000
    batch: int = 128
    lr: float = 1e-4
    optimizer: str = "RAdam(betas=(0.9, 0.999), eps=1e-8)"
    dropout: float = 0.2
    ema_beta: float = 0.9999
    sigma_min: float = 0.003
    two_step_sigma: float = 0.821
    teacher: str = "edm-cifar10-32x32-uncond-vp.pkl (EDM DDPM++, unconditional)"


# run_ecm.sh: --duration=25.6 (Mimg) --tick=12.8 (kimg) --double=250 (ticks) --batch=128 --lr=0.0001
# --optim=RAdam --dropout=0.2 --augment=0.0, with ct_train.py's defaults -q 2 -k 8 -b 1 -c 0
# --mapping sigmoid --mean -1.1 --std 2.0 --ema_beta 0.9999 --mid_t 0.821 --fp16 False --tf32 False.
# 25.6 Mimg / 128 = 200k iterations; a tick is 12.8k / 128 = 100 iterations, so a stage is
# 250 ticks = 25k iterations and the run has 8 stages (0..7). The augment pipe is off, so the
# transferred EDM network's `map_augment` layer is dropped (copy_params_and_buffers(require_all=False)).
ECT_CIFAR10 = ECTSettings()
# run_ecm_1hour.sh: the same with -q 256 --double 10000 --ema_beta 0.9993 (one stage for the whole
# run, so Δt = t·n(t)/256 throughout).
ECT_CIFAR10_1HOUR = ECTSettings(q=256.0, iterations_per_stage=1_000_000, ema_beta=0.9993)


def ect_sample_t(
    batch: int,
    generator: torch.Generator | None = None,
    p_mean: float = ECT_P_MEAN,
    p_std: float = ECT_P_STD,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Continuous training levels t = exp(P_mean + P_std·n), n ~ N(0, 1); shape (batch,)."""
    return lognormal_levels(batch, p_mean, p_std, generator, device, dtype)


def ect_stage(step: int, iterations_per_stage: int) -> int:
    """The stage of iteration `step` (0-based): step // iterations_per_stage.

    ECT counts in ticks and switches stage after the tick that completes `double` ticks; its first
    tick is a single iteration, so its switch happens one iteration later than here.
    """
    if iterations_per_stage < 1:
        raise ValueError(f"iterations_per_stage must be >= 1, got {iterations_per_stage}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step // iterations_per_stage


def iterations_per_stage(total_steps: int, num_stages: int) -> int:
    """Equal stages over a run: max(1, total_steps // num_stages) (ECT CIFAR-10: 200k / 8 = 25k)."""
    if total_steps < 1 or num_stages < 1:
        raise ValueError(f"need total_steps >= 1 and num_stages >= 1, got {total_steps}, {num_stages}")
    return max(1, total_steps // num_stages)


def mapping_factor(t: Tensor, k: float = 8.0, b: float = 1.0, mapping: str = "sigmoid") -> Tensor:
    """n(t) = 1 + k·sigmoid(−b·t) ("sigmoid": larger relative Δt at small t) or 1 ("const"); shape of t."""
    if mapping == "sigmoid":
        return 1.0 + k * torch.sigmoid(-b * t)
    if mapping == "const":
        return torch.ones_like(t)
    raise ValueError(f"unknown ECT mapping {mapping!r}; choose one of {MAPPINGS}")


def ect_r(t: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0, mapping: str = "sigmoid") -> Tensor:
    """The lower level r(t) = max(0, t·(1 − q^{−(stage+1)}·n(t))) of each pair; t: (B,) -> (B,).

    Δt = t − r shrinks by a factor q per stage; at stage 0 with q = 2 every t below ≈ 2.3 maps to
    r = 0 (the pair's target is the data point itself).
    """
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    decay = q ** -(stage + 1)
    return torch.clamp(t * (1.0 - decay * mapping_factor(t, k, b, mapping)), min=0.0)


def ect_weight(t: Tensor, r: Tensor) -> Tensor:
    """ECT's weighting 1/(t − r), shape (B,)."""
    return 1.0 / (t - r)


def ect_distance(a: Tensor, b: Tensor, c: float = 0.0) -> Tensor:
    """sqrt(‖a − b‖² + c²) − c per sample (c = 0: the L2 norm); a, b: (B, *D) -> (B,)."""
    return pseudo_huber(a, b, c)


def ect_pairs(x0: Tensor, z: Tensor, t: Tensor, r: Tensor, is_gc: Tensor | None = None) -> PairBatch:
    """Pairs on the straight path: x_i = x0 + r z (target), x_next = x0 + t z (online), weight 1/(t − r).

    x0 is x⋆ for IC pairs or the predictor's x̂ for GC pairs; x0, z: (B, *D); t, r: (B,) with t > r >= 0.
    Where r = 0 there is no network target: use `ect_targets`, which substitutes the endpoint.
    """
    return ct_pairs(x0, z, r, t, ect_weight(t, r), is_gc=is_gc)  # CT pairs at the levels (r, t)


@torch.no_grad()
def ect_targets(model: Callable[[Tensor, Tensor], Tensor], pairs: PairBatch, sigma_min: float = 0.0) -> Tensor:
    """sg f(x_i, r) where r > sigma_min and the endpoint elsewhere (ECT's mask, sigma_min = 0); returns (B, *D).

    Rows with r = 0 are evaluated at their own t instead (a finite, discarded value) so log(0)
    never reaches the noise embedding and no device value is read on the host, as in ECT.
    """
    live = pairs.sigma_i > sigma_min
    safe_sigma = torch.where(live, pairs.sigma_i, pairs.sigma_next)
    f = model(pairs.x_i, safe_sigma).to(pairs.endpoint.dtype)
    return torch.where(per_sample(live, f), f, pairs.endpoint)
