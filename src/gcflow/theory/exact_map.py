"""The exact consistency map f⋆(x, σ): the end at σ_min of the PF-ODE trajectory through (x, σ).

The PF-ODE dx/dσ = (x − D⋆(x, σ))/σ (method spec §1) is stiff in σ near σ_min and very slow far
from it, but smooth in s = log σ, where it reads dx/ds = x − D⋆(x, eˢ). We integrate it with
torchdiffeq's adaptive Dormand–Prince solver (dopri5).

To integrate a whole batch with per-sample starting levels in one solver call, every sample runs on
a common normalised time τ ∈ [0, 1] with s_b(τ) = log σ_b + τ (log σ_min − log σ_b), so that

    dx_b/dτ = (log σ_min − log σ_b) · (x_b − D⋆(x_b, exp s_b(τ))).

The step-size controller uses the worst per-sample RMS error (not the RMS over the whole batch), so
every sample meets the tolerance, whatever the batch size.

For one Gaussian N(m, s²I) the map is affine (`gaussian_consistency_map`), which the tests use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor
from torchdiffeq import odeint

from gcflow.pairs.types import PointFn
from gcflow.toy.mixture import GaussianMixture

# D(x (B, d) float64, σ (B,) float64) -> (B, d) float64: an (ideal) denoiser, the project's (x, σ) -> Tensor type.
Denoiser = PointFn
Level = TypeVar("Level", float, Tensor)

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
FIXED_METHODS = ("rk4", "midpoint", "euler")


@dataclass(frozen=True)
class ODETolerance:
    """Solver settings for the exact map.

    Attributes:
        rtol: relative tolerance of the adaptive solver.
        atol: absolute tolerance of the adaptive solver.
        method: an adaptive torchdiffeq method (dopri5 by default).
        chunk: samples per solver call (bounds memory: the denoiser of a K-point mixture uses B·K floats).
    """

    rtol: float = 1e-6
    atol: float = 1e-7
    method: str = "dopri5"
    chunk: int = 8192


def _worst_sample_rms(t: Tensor) -> Tensor:
    """Error norm for the step-size controller: max over samples of the per-sample RMS."""
    return t.reshape(t.shape[0], -1).pow(2).mean(dim=1).sqrt().max()


class _LogSigmaField(torch.nn.Module):
    """dx/dτ on the normalised log-σ clock for a batch with per-sample start levels."""

    def __init__(self, denoiser: Denoiser, log_start: Tensor, log_end: float) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.log_start = log_start  # (B,)
        span = (log_end - log_start).clamp_max(0.0)  # (B,) ≤ 0
        self.span = torch.where(
            log_start <= log_end, torch.zeros_like(span), span
        )  # samples at or below σ_min stay put
        self.evaluations = 0

    def forward(self, tau: Tensor, x: Tensor) -> Tensor:
        self.evaluations += 1
        sigma = torch.exp(self.log_start + tau * self.span)
        return self.span[:, None] * (x - self.denoiser(x, sigma))


def _prepare(x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    xf = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], -1)
    sig = torch.as_tensor(sigma, dtype=torch.float64, device=xf.device)
    if sig.ndim == 0:
        sig = sig.expand(xf.shape[0])
    if sig.shape != (xf.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape (B,) = ({xf.shape[0]},), got {tuple(sig.shape)}")
    if (sig <= 0).any():
        raise ValueError("the consistency map needs sigma > 0")
    return xf, sig


@torch.no_grad()
def consistency_map(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    sigma_min: float = 0.002,
    tol: ODETolerance = ODETolerance(),
) -> Tensor:
    """f⋆(x, σ) by adaptive integration of the PF-ODE from σ down to σ_min.

    Args:
        denoiser: D(x (B, d), σ (B,)) -> (B, d), in float64.
        x: (B, *D) points on the trajectories.
        sigma: (B,) or scalar noise level of each point; samples with σ ≤ σ_min are returned unchanged.
        sigma_min: end level of the trajectories.
        tol: solver tolerances, method and chunk size.

    Returns:
        (B, *D) float64 trajectory ends.
    """
    if tol.method not in ADAPTIVE_METHODS:
        raise ValueError(f"unknown adaptive ODE method {tol.method!r}; choose one of {list(ADAPTIVE_METHODS)}")
    xf, sig = _prepare(x, sigma)
    out = torch.empty_like(xf)
    times = torch.tensor([0.0, 1.0], dtype=torch.float64, device=xf.device)
    for lo in range(0, xf.shape[0], tol.chunk):
        sl = slice(lo, lo + tol.chunk)
        field = _LogSigmaField(denoiser, torch.log(sig[sl]), math.log(sigma_min))
        sol = odeint(
            field, xf[sl], times, rtol=tol.rtol, atol=tol.atol, method=tol.method, options={"norm": _worst_sample_rms}
        )
        out[sl] = sol[-1]
    out = torch.where((sig <= sigma_min)[:, None], xf, out)  # exactly the identity there, not up to rounding
    return out.reshape(x.shape)


@torch.no_grad()
def consistency_map_fixed(
    denoiser: Denoiser,
    x: Tensor,
    sigma: Tensor | float,
    sigma_min: float = 0.002,
    steps: int = 2000,
    method: str = "rk4",
) -> Tensor:
    """f⋆(x, σ) with `steps` equal steps in log σ of a fixed-step method (the reference for tests).

    Shapes as `consistency_map`. With RK4 the error falls as steps⁻⁴.
    """
    if method not in FIXED_METHODS:
        raise ValueError(f"unknown fixed-step ODE method {method!r}; choose one of {list(FIXED_METHODS)}")
    xf, sig = _prepare(x, sigma)
    field = _LogSigmaField(denoiser, torch.log(sig), math.log(sigma_min))
    times = torch.tensor([0.0, 1.0], dtype=torch.float64, device=xf.device)
    sol = odeint(field, xf, times, method=method, options={"step_size": 1.0 / steps})
    return sol[-1].reshape(x.shape)


def exact_consistency_map(
    mixture: GaussianMixture,
    x: Tensor,
    sigma: Tensor | float,
    sigma_min: float = 0.002,
    tol: ODETolerance = ODETolerance(),
) -> Tensor:
    """f⋆ for a Gaussian mixture (or the empirical distribution of a data set): x (B, *D), σ (B,) -> (B, *D)."""
    return consistency_map(mixture.denoise, x, sigma, sigma_min, tol)


def gaussian_consistency_map(
    x: Tensor, sigma: Tensor | float, mean: Tensor | float, std: float, sigma_min: float = 0.002
) -> Tensor:
    """Closed form for data N(m, s²I): f⋆(x, σ) = m + c(σ) (x − m), c(σ) = sqrt((s² + σ_min²)/(s² + σ²)).

    x: (B, d), sigma: (B,) or scalar, mean: (d,) or scalar -> (B, d) float64.
    """
    xf, sig = _prepare(x, sigma)
    m = torch.as_tensor(mean, dtype=torch.float64, device=xf.device)
    scale = gaussian_map_scale(sig, std, sigma_min)
    return (m + scale[:, None] * (xf - m)).reshape(x.shape)


def gaussian_map_scale(sigma: Level, std: float, sigma_min: float = 0.002) -> Level:
    """The slope c(σ) = sqrt((s² + σ_min²)/(s² + σ²)) of the exact map of N(m, s²I): f⋆(x, σ) = m + c(σ) (x − m).

    `sigma` is a float (returns a float) or a tensor of any shape (returns a tensor of that shape). The
    closed-form GC discrepancy and transport cost of a Gaussian are written in terms of this c.
    """
    ratio = (std**2 + sigma_min**2) / (std**2 + sigma**2)
    return torch.sqrt(ratio) if isinstance(ratio, Tensor) else math.sqrt(ratio)
