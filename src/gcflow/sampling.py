"""One-step and multistep consistency sampling (method spec §9)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gcflow.pairs.types import PointFn

# f(x (B, *D), σ (B,)) -> (B, *D): a consistency function, the project's (x, σ) -> Tensor type.
ConsistencyFn = PointFn


def seeded_normal(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """Standard normals of shape (len(seeds), *shape) where row i depends only on seeds[i].

    This makes sample i reproducible on its own, whatever the batch it is drawn in.

    Args:
        seeds: one integer seed per sample.
        shape: the shape of one sample, without the batch axis (e.g. (2,) or (3, 32, 32)).
        device: device of the result (the draws are made on the CPU).
    """
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        rows.append(torch.randn(*shape, generator=g))
    return torch.stack(rows).to(device)


@torch.no_grad()
def sample_onestep(f: ConsistencyFn, z: Tensor, sigma_max: float) -> Tensor:
    """x = f(σ_max z, σ_max); z: (B, *D) standard normal -> (B, *D).

    Args:
        f: the consistency function f(x, σ) with x (B, *D) and σ (B,), e.g. a ConsistencyModel.
        z: standard normal noise (B, *D), e.g. from `seeded_normal`.
        sigma_max: the largest noise level of training (σ_max).
    """
    sigma = torch.full((z.shape[0],), sigma_max, device=z.device, dtype=z.dtype)
    return f(sigma_max * z, sigma)


@torch.no_grad()
def sample_multistep(
    f: ConsistencyFn,
    z: Tensor,
    sigmas: Sequence[float],
    sigma_max: float,
    sigma_min: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Consistency sampling: one step from σ_max, then re-noise to each σ in `sigmas` and denoise.

    `sigmas` must be strictly decreasing and inside (σ_min, σ_max). Returns (B, *D).

    Args:
        f: the consistency function f(x, σ) with x (B, *D) and σ (B,).
        z: standard normal noise (B, *D) for the first step.
        sigmas: the intermediate levels, e.g. `default_multistep_sigmas(steps)`; empty = one step.
        sigma_max, sigma_min: the model's σ_max and σ_min (re-noising adds √(σ² − σ_min²) noise).
        generator: CPU random generator for the re-noising draws (None: torch's global one).
    """
    sig = [float(s) for s in sigmas]
    if any(not (sigma_min < s < sigma_max) for s in sig) or any(a <= b for a, b in zip(sig, sig[1:])):
        raise ValueError(f"multistep sigmas must decrease strictly inside ({sigma_min}, {sigma_max}), got {sig}")
    x = sample_onestep(f, z, sigma_max)
    for s in sig:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
        x = x + (s * s - sigma_min * sigma_min) ** 0.5 * noise
        x = f(x, torch.full((z.shape[0],), s, device=z.device, dtype=z.dtype))
    return x


def default_multistep_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> list[float]:
    """Intermediate levels for a `steps`-step sampler: `steps − 1` Karras levels strictly inside (σ_min, σ_max).

    (iCT tunes its two-step level by hand, e.g. σ = 0.821 on CIFAR-10; pass explicit levels for that.)

    Args:
        steps: the number of network evaluations of the sampler (1 = one-step, no levels).
        sigma_min, sigma_max, rho: the Karras grid whose interior levels are used (see `karras_sigmas`).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from gcflow.sigmas import karras_sigmas

    grid = karras_sigmas(steps, sigma_min, sigma_max, rho).tolist()
    return sorted(grid[1:-1], reverse=True)
