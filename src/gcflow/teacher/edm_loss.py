"""EDM's denoising objective (Karras et al. 2022, "Elucidating the Design Space", §5 and Table 1).

    σ ~ exp(N(P_mean, P_std²)),  P_mean = −1.2, P_std = 1.2
    D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ))          (gcflow.precond.edm_scalings)
    λ(σ) = (σ² + σ_d²) / (σ σ_d)²  = 1 / c_out(σ)²
    L = E λ(σ) ‖D(x⋆ + σ z, σ) − x⋆‖²

Rewriting the loss in terms of the raw network gives λ c_out² ‖F − (x⋆ − c_skip x_σ)/c_out‖² with
λ c_out² = 1: the network regresses the *effective target* (x⋆ − c_skip x_σ)/c_out, which has unit
variance for data of standard deviation σ_d at every σ. `effective_target` exposes it for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gcflow.precond import edm_scalings
from gcflow.shapes import flatten_samples, per_sample
from gcflow.sigmas import lognormal_levels

EDM_P_MEAN = -1.2
EDM_P_STD = 1.2


class Denoiser(nn.Module):
    """Wraps a raw network F(x_in, c_noise, class_labels) into EDM's denoiser D(x, σ).

    Same contract as gcflow.precond.ConsistencyModel (which it mirrors with EDM's scalings, so
    there is no σ_min shift and no boundary condition): the raw network sees c_in·x and c_noise.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, *D), sigma: (B,) -> D(x, σ): (B, *D) in the dtype of x (skip path in >= float32)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        s = edm_scalings(sigma.to(dtype), self.sigma_data)
        raw = self.net(per_sample(s.c_in, xf) * xf, s.c_noise, class_labels)
        out = per_sample(s.c_skip, xf) * xf + per_sample(s.c_out, xf) * raw.to(dtype)
        return out.to(x.dtype)


def edm_sample_sigmas(
    batch: int,
    generator: torch.Generator | None = None,
    p_mean: float = EDM_P_MEAN,
    p_std: float = EDM_P_STD,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Lognormal training levels σ = exp(P_mean + P_std·n), n ~ N(0, 1); shape (batch,)."""
    return lognormal_levels(batch, p_mean, p_std, generator, device, dtype)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ σ_d)², shape of `sigma` (B,)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def effective_target(x0: Tensor, x_sigma: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """The raw network's regression target (x⋆ − c_skip x_σ)/c_out; x0, x_sigma: (B, *D), sigma: (B,)."""
    s = edm_scalings(sigma, sigma_data)
    return (x0 - per_sample(s.c_skip, x0) * x_sigma) / per_sample(s.c_out, x0)


def edm_loss(
    denoiser: nn.Module,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    class_labels: Tensor | None = None,
) -> Tensor:
    """Per-sample EDM loss λ(σ)‖D(x⋆ + σ z, σ) − x⋆‖², shape (B,).

    Args:
        denoiser: a `Denoiser` (any module with forward(x, σ, class_labels) -> (B, *D)).
        x0: (B, *D) clean data x⋆.
        sigma: (B,) noise levels (see `edm_sample_sigmas`).
        noise: (B, *D) standard normal z.
        class_labels: (B,) or None, passed to the denoiser.

    The sum runs over the data dimensions, as EDM's training loop sums its element-wise loss;
    average over the batch (and divide by d if a per-pixel scale is wanted) at the call site.
    """
    sigma_data = float(getattr(denoiser, "sigma_data", 0.5))
    x_sigma = x0 + per_sample(sigma, x0) * noise
    d = denoiser(x_sigma, sigma, class_labels)
    return edm_weight(sigma, sigma_data) * flatten_samples(d - x0).pow(2).sum(dim=1)
