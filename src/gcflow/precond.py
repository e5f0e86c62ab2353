"""Preconditioning: f(x, σ) = c_skip x + c_out F(c_in x, c_noise), for consistency models and denoisers.

* `consistency_scalings` (method spec §2): the boundary condition f_θ(x, σ_min) = x holds by
  construction, c_skip(σ_min) = 1 and c_out(σ_min) = 0.
* `edm_scalings` (EDM, Karras et al. 2022, Table 1): the denoiser D(x, σ) ≈ E[x⋆ | x_σ = x]; with
  EDM's loss weight λ(σ) = 1 / c_out², the network's regression target has unit variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gcflow.shapes import per_sample


@dataclass(frozen=True)
class Scalings:
    """The four preconditioning coefficients, each of shape (B,)."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def consistency_scalings(sigma: Tensor, sigma_data: float = 0.5, sigma_min: float = 0.002) -> Scalings:
    """Coefficients for per-sample noise levels `sigma` of shape (B,)."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = sigma_data * (sigma - sigma_min) / torch.sqrt(sd2 + sigma**2)
    c_in = 1.0 / torch.sqrt(sd2 + sigma**2)
    c_noise = torch.log(sigma) / 4.0
    return Scalings(c_skip, c_out, c_in, c_noise)


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> Scalings:
    """EDM's denoiser coefficients for per-sample noise levels `sigma` of shape (B,)."""
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sd2)
    c_in = 1.0 / torch.sqrt(sd2 + sigma**2)
    c_noise = torch.log(sigma) / 4.0
    return Scalings(c_skip, c_out, c_in, c_noise)


class ConsistencyModel(nn.Module):
    """Wraps a raw network F(x_in, c_noise, class_labels) into the consistency function f_θ(x, σ).

    The raw network sees c_in·x (shape (B, *D)) and c_noise (shape (B,)) and knows nothing about σ
    semantics, so the same wrapper serves the toy MLP and the image U-Net.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, *D), sigma: (B,) -> f_θ(x, σ): (B, *D), in the dtype of x.

        The skip path is computed in at least float32 (float64 stays float64) so that the
        boundary condition stays exact even when the network itself runs under bf16 autocast.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(dtype)
        s = consistency_scalings(sigma.to(dtype), self.sigma_data, self.sigma_min)
        raw = self.net(per_sample(s.c_in, xf) * xf, s.c_noise, class_labels)
        out = per_sample(s.c_skip, xf) * xf + per_sample(s.c_out, xf) * raw.to(dtype)
        return out.to(x.dtype)
