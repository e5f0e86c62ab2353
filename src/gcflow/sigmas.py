"""Noise levels: the Karras grid, the iCT curriculum, lognormal level sampling, 1/Δσ weights.

All functions are pure; the curriculum is a function of the training step, not mutated state.
Reference: method spec §3 (iCT, Song & Dhariwal 2023).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def karras_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ascending Karras grid with n+1 levels, shape (n+1,).

    σ_i = (σ_min^{1/ρ} + i/n (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ, i = 0..n; σ_0 = σ_min, σ_n = σ_max.

    Args:
        n: number of intervals of the grid (N(k) of the iCT curriculum); the grid has n+1 levels.
        sigma_min: smallest level σ_min (the boundary where f_θ(x, σ_min) = x).
        sigma_max: largest level σ_max (where sampling starts).
        rho: ρ, the grid's curvature; larger ρ puts more levels near σ_min (EDM uses 7).
        dtype: dtype of the returned grid (computed in float64 either way).
        device: device of the returned grid (None: the default device).
    """
    if n < 1:
        raise ValueError(f"the grid needs n >= 1 intervals, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    i = torch.arange(n + 1, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (lo + i / n * (hi - lo)) ** rho
    # Pin the endpoints: (x^{1/ρ})^ρ is not exactly x in floating point.
    sig[0], sig[-1] = sigma_min, sigma_max
    return sig.to(dtype)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT curriculum N(k): the number of grid intervals at training step k of K.

    K' = floor(K / (log2 floor(s1/s0) + 1)),  N(k) = min(s0 · 2^floor(k/K'), s1).

    Args:
        step: the training step k (0-based: the first optimizer step is k = 0).
        total_steps: K, the planned number of training steps of the whole run.
        s0: N at the start of training (iCT: 10).
        s1: the largest N, reached after log2(s1/s0) doublings (iCT: 1280).

    Returns:
        N(k), to pass as `n` to `karras_sigmas` / `sample_noise_levels`.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    if k_prime < 1:  # fewer steps than doublings: start at the finest grid we can reach
        k_prime = 1
    return int(min(s0 * 2 ** math.floor(step / k_prime), s1))


def lognormal_level_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """Probability of each interval [σ_i, σ_{i+1}], shape (n,) for a grid of shape (n+1,).

    p_i ∝ erf((log σ_{i+1} − P_mean)/(√2 P_std)) − erf((log σ_i − P_mean)/(√2 P_std)).
    """
    s = sigmas.to(torch.float64)
    cdf = torch.special.erf((torch.log(s) - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def sample_level_indices(probs: Tensor, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw `batch` interval indices i ∈ {0..n−1} from `probs` (shape (n,)); returns (batch,) int64."""
    return torch.multinomial(probs, batch, replacement=True, generator=generator)


def lognormal_levels(
    batch: int,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Continuous noise levels σ = exp(P_mean + P_std·n), n ~ N(0, 1) (EDM's and ECT's sampling); shape (batch,)."""
    n = torch.randn(batch, generator=generator, device=device, dtype=dtype)
    return torch.exp(p_mean + p_std * n)


def level_weights(sigmas: Tensor) -> Tensor:
    """iCT weighting λ_i = 1 / (σ_{i+1} − σ_i), shape (n,) for a grid of shape (n+1,)."""
    return 1.0 / (sigmas[1:] - sigmas[:-1])


def sample_noise_levels(
    n: int,
    batch: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (σ_i, σ_{i+1}, λ_i), each of shape (batch,) in float32 on `device`.

    Each sample draws an interval i of the Karras grid with n intervals with the lognormal
    probabilities of `lognormal_level_probs`, and gets its two ends and the weight λ_i = 1/(σ_{i+1} − σ_i).
    Indices are drawn on the CPU with `generator` so that runs are reproducible across devices.

    Args:
        n: number of intervals of the noise grid (the grid has n+1 levels), usually the iCT
            curriculum's N(k) = `ict_num_scales(step, total_steps)`.
        batch: number of samples B, i.e. the length of each returned tensor.
        sigma_min, sigma_max, rho: the Karras grid (see `karras_sigmas`).
        p_mean, p_std: mean and standard deviation of log σ under the lognormal level distribution
            (iCT: −1.1 and 2.0).
        generator: CPU random generator for the interval indices (None: torch's global one).
        device: device of the returned tensors.

    Returns:
        (sigma_i, sigma_next, weight): the lower level σ_i, the upper level σ_{i+1} and λ_i, each (batch,).
    """
    grid = karras_sigmas(n, sigma_min, sigma_max, rho)
    idx = sample_level_indices(lognormal_level_probs(grid, p_mean, p_std), batch, generator)
    lo, hi, w = grid[idx], grid[idx + 1], level_weights(grid)[idx]
    cast = dict(device=device, dtype=torch.float32)
    return lo.to(**cast), hi.to(**cast), w.to(**cast)
