"""The reference step: one iCT / OT / GC training step written plainly, as a user following the paper would.

This is the yardstick of benchmarks/step.py and of tests/test_fast_step.py. It is the same algorithm as gcflow's step
(method spec §3–§7), written the straightforward way:

* fp32, eager, the standard NCHW layout, no torch.compile;
* the GC predictor (the EMA network) runs on the *whole* batch and `torch.where` keeps the GC rows;
* the OT assignment is solved in place (cost on the device, SciPy's exact solver on the host);
* one shared dropout mask by re-seeding the global RNG before the teacher and the student pass;
* lion_pytorch's Lion (a few small kernels per parameter tensor), the EMA as a Python loop;
* the loss read back every step (`loss.item()`, to log it), as training scripts usually do.

It reuses gcflow's network (the EDM SongUNet inside the consistency preconditioning) and nothing
else from gcflow, so that the benchmark compares training steps, not networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


@dataclass
class RefBatch:
    """One step's inputs: data x0 and noise z (B, C, H, W); σ_i, σ_{i+1}, λ_i (B,); GC rows (B,) bool or None."""

    x0: Tensor
    z: Tensor
    sigma_i: Tensor
    sigma_next: Tensor
    weight: Tensor
    gc_mask: Tensor | None
    dropout_seed: int


def reference_draw(
    data: Tensor,
    batch: int,
    n_scales: int,
    mu: float,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
) -> RefBatch:
    """Draw a batch the plain way: random rows of the data, fresh noise, iCT levels, GC rows with probability μ."""
    device = data.device
    x0 = data[torch.randint(0, data.shape[0], (batch,), device=device)]
    z = torch.randn_like(x0)
    # Karras grid with n_scales + 1 levels, lognormal interval probabilities, weights 1 / Δσ.
    i = torch.arange(n_scales + 1, device=device, dtype=torch.float64)
    grid = (sigma_min ** (1 / rho) + i / n_scales * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho
    cdf = torch.erf((torch.log(grid) - p_mean) / (math.sqrt(2) * p_std))
    idx = torch.multinomial(cdf[1:] - cdf[:-1], batch, replacement=True)
    sigma_i, sigma_next = grid[idx].float(), grid[idx + 1].float()
    weight = 1.0 / (sigma_next - sigma_i)
    gc_mask = torch.rand(batch, device=device) < mu if mu > 0 else None
    return RefBatch(x0, z, sigma_i, sigma_next, weight, gc_mask, int(torch.randint(0, 2**62, (1,)).item()))


def reference_loss(model: nn.Module, ema: nn.Module, b: RefBatch, *, coupling: str = "independent") -> Tensor:
    """The mean consistency loss of batch `b` (pseudo-Huber, c = 0.00054·sqrt(d)); gradients flow into `model`."""
    x0, z = b.x0, b.z
    if coupling == "ot":  # permute the noises to minimise the total squared distance to the data
        cost = torch.cdist(x0.flatten(1), z.flatten(1)) ** 2
        _, cols = linear_sum_assignment(cost.cpu().numpy())
        z = z[torch.as_tensor(cols, device=z.device)]
    s_i, s_n = b.sigma_i.view(-1, 1, 1, 1), b.sigma_next.view(-1, 1, 1, 1)
    if b.gc_mask is not None:  # generator-augmented pairs: the EMA's prediction replaces x0 on the GC rows
        with torch.no_grad():
            x_hat = ema(x0 + s_i * z, b.sigma_i)
        x0 = torch.where(b.gc_mask.view(-1, 1, 1, 1), x_hat, x0)
    x_i, x_n = x0 + s_i * z, x0 + s_n * z
    torch.manual_seed(b.dropout_seed)
    with torch.no_grad():
        target = model(x_i, b.sigma_i)
    torch.manual_seed(b.dropout_seed)
    pred = model(x_n, b.sigma_next)
    c = 0.00054 * math.sqrt(x0[0].numel())
    dist = torch.sqrt((pred - target).flatten(1).pow(2).sum(dim=1) + c**2) - c
    return (b.weight * dist).mean()


def reference_step(
    model: nn.Module,
    ema: nn.Module,
    opt: torch.optim.Optimizer,
    b: RefBatch,
    *,
    coupling: str = "independent",
    ema_decay: float = 0.9999,
) -> float:
    """One optimizer step and EMA update on batch `b`; returns the loss (read back, as for logging)."""
    loss = reference_loss(model, ema, b, coupling=coupling)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.mul_(ema_decay).add_(p, alpha=1 - ema_decay)
    return loss.item()
