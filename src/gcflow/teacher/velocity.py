"""The PF-ODE velocity of a denoiser, v_σ(x) = (x − D(x, σ))/σ (method spec §1), for CD pairs.

With the ideal denoiser D⋆ this is the true velocity E[z | x_σ = x]; with a trained denoiser
(a gcflow diffusion run or an imported EDM network) it is the teacher's estimate, and
gcflow.pairs.cd_pairs turns it into distillation pairs with Euler or Heun steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gcflow.pairs.types import PointFn
from gcflow.shapes import per_sample


def denoiser_velocity(denoiser: PointFn) -> PointFn:
    """Return v(x (B, *D), σ (B,)) = (x − D(x, σ))/σ -> (B, *D) computed without gradients.

    The result is in the dtype of the denoiser's output promoted with x's, so a float64 toy
    denoiser keeps full precision. σ must be positive (the velocity is singular at σ = 0).
    """

    @torch.no_grad()
    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        if (sigma <= 0).any():
            raise ValueError("the teacher velocity (x - D(x, sigma))/sigma needs sigma > 0")
        d = denoiser(x, sigma)
        dtype = torch.promote_types(x.dtype, d.dtype)
        return (x.to(dtype) - d.to(dtype)) / per_sample(sigma.to(dtype), x)

    return velocity
