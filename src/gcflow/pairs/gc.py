"""Generator-augmented flows (GC), the paper's contribution (method spec §6).

Each sample becomes a GC pair with probability μ. For those samples the data point x⋆ is replaced
by the predictor's estimate of the trajectory end, x̂ = sg f_η(x⋆ + σ_i z, σ_i), which is then
re-noised with the *same* z by the pair kind (CT). The predictor runs only on the selected rows,
under no_grad, so GC costs a fraction μ of one forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gcflow.pairs.types import PointFn
from gcflow.shapes import per_sample


def select_gc(
    batch: int, mu: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """(B,) bool mask, each entry independently True with probability μ (the GC probability)."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"the GC probability mu must be in [0, 1], got {mu}")
    u = torch.rand(batch, generator=generator)  # drawn on the CPU: identical across devices
    return (u < mu).to(device)


@torch.no_grad()
def generator_augment(x0: Tensor, z: Tensor, sigma_i: Tensor, predictor: PointFn, mask: Tensor) -> Tensor:
    """Return x0 with the masked rows replaced by predictor(x0 + σ_i z, σ_i).

    x0, z: (B, *D); sigma_i: (B,); mask: (B,) bool. The predictor sees only the masked rows.
    """
    if not bool(mask.any()):
        return x0
    idx = mask.nonzero(as_tuple=True)[0]
    x_sel, z_sel, s_sel = x0[idx], z[idx], sigma_i[idx]
    x_hat = predictor(x_sel + per_sample(s_sel, x_sel) * z_sel, s_sel).to(x0.dtype)
    out = x0.clone()
    out[idx] = x_hat
    return out
