"""The proxy of the discrepancy, R̃_σ = E‖z − v_σ(x̃_σ)‖², per coupling (method spec §8).

A coupling is a joint law of (trajectory end, noise): IC draws them independently, minibatch OT
permutes the noises within each batch, GC replaces the end by a predictor's output
x̂ = f(x⋆ + σ z, σ) (so the GC coupling depends on σ). With x̃_σ = end + σ z, the coupling's own
velocity is v_σ(x) = E[z | x̃_σ = x], and R̃_σ is the Bayes risk of predicting z from x̃_σ:

    R̃_σ = E‖z − E[z | x̃_σ]‖² = E‖end − E[end | x̃_σ]‖² / σ²     (since z = (x̃_σ − end)/σ).

Estimators, all working through the denoiser E[end | x̃_σ]:
  * `exact_ic_discrepancy`: IC with the exact velocity of a Gaussian mixture (Monte Carlo over x⋆, z).
  * `kernel_discrepancy`: leave-one-out local-linear kernel regression (a first-order
    Nadaraya–Watson estimator) at one σ, bandwidth chosen by leave-one-out error; for d ≤ 3.
  * `DenoiserEstimator`: the paper's estimator — an MLP denoiser trained on the coupling's pairs,
    evaluated on held-out pairs.
Both regression estimates are held-out risks of a fitted regressor, hence upper bounds on R̃_σ up to
Monte-Carlo noise; on IC they are checked against the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gcflow.networks.mlp import ToyMLP
from gcflow.pairs.coupling import minibatch_ot_coupling
from gcflow.pairs.gc import generator_augment
from gcflow.pairs.types import PointFn
from gcflow.precond import edm_scalings
from gcflow.shapes import per_sample
from gcflow.theory.exact_map import gaussian_map_scale
from gcflow.toy.mixture import GaussianMixture

# sample_data(n, generator) -> (n, d) float64 data points.
DataSampler = Callable[[int, torch.Generator], Tensor]
# coupling(σ, n, generator) -> (end (n, d), z (n, d)): n pairs of that coupling at level σ.
CouplingSampler = Callable[[float, int, torch.Generator], tuple[Tensor, Tensor]]


def independent_pairs(sample_data: DataSampler, dim: int) -> CouplingSampler:
    """IC: end = x⋆ and z independent."""

    def draw(sigma: float, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        return sample_data(n, g).to(torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)

    return draw


def minibatch_ot_pairs(sample_data: DataSampler, dim: int, batch: int) -> CouplingSampler:
    """Minibatch OT: within each batch of `batch` pairs, noises permuted to minimise Σ‖x⋆ − z‖² (exact assignment)."""

    def draw(sigma: float, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        ends, zs = [], []
        for _ in range(math.ceil(n / batch)):
            x0 = sample_data(batch, g).to(torch.float64)
            z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
            ends.append(x0)
            zs.append(minibatch_ot_coupling(x0, z))
        return torch.cat(ends)[:n], torch.cat(zs)[:n]

    return draw


def generator_pairs(sample_data: DataSampler, dim: int, predictor: PointFn) -> CouplingSampler:
    """GC: end = x̂ = predictor(x⋆ + σ z, σ) with the same z (method spec §6, every sample a GC pair)."""

    def draw(sigma: float, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x0 = sample_data(n, g).to(torch.float64)
        z = torch.randn(n, dim, generator=g, dtype=torch.float64)
        s = torch.full((n,), float(sigma), dtype=torch.float64)
        return generator_augment(x0, z, s, predictor, torch.ones(n, dtype=torch.bool)), z

    return draw


@dataclass
class DiscrepancyCurve:
    """R̃_σ on a grid of levels.

    Attributes:
        sigmas: (S,) levels.
        values: (S,) estimates of R̃_σ.
        stderr: (S,) Monte-Carlo standard errors (of the mean over evaluation samples).
    """

    sigmas: list[float]
    values: list[float]
    stderr: list[float]


def exact_ic_discrepancy(
    mixture: GaussianMixture, sigmas: list[float], n: int, generator: torch.Generator
) -> DiscrepancyCurve:
    """R̃_σ for IC with the exact velocity: mean over n draws of ‖z − v_σ(x⋆ + σ z)‖², per σ."""
    vals, errs = [], []
    for sigma in sigmas:
        x0 = mixture.sample(n, generator)
        z = torch.randn(n, mixture.dim, generator=generator, dtype=torch.float64)
        s = torch.full((n,), float(sigma), dtype=torch.float64)
        per = (z - mixture.velocity(x0 + sigma * z, s)).pow(2).sum(1)
        vals.append(float(per.mean()))
        errs.append(float(per.std() / math.sqrt(n)))
    return DiscrepancyCurve(list(map(float, sigmas)), vals, errs)


def gaussian_ic_discrepancy(sigma: float, std: float, dim: int) -> float:
    """Closed form for data N(m, s²I): R̃_σ = d s²/(s² + σ²) (the posterior variance of z given x_σ)."""
    return dim * std**2 / (std**2 + sigma**2)


def gaussian_gc_discrepancy(sigma: float, std: float, dim: int, sigma_min: float = 0.002) -> float:
    """Closed form for data N(m, s²I) and GC with the exact map (μ = 1).

    x̂ = m + c (x⋆ − m + σ z) with c = sqrt((s² + σ_min²)/(s² + σ²)), so per coordinate
    x̃ − m = c (x⋆ − m) + σ (1 + c) z is Gaussian and Var(z | x̃) = c² s² / (c² s² + σ² (1 + c)²).
    As σ → ∞ this falls like s⁴/σ⁴, against s²/σ² for IC: Theorem 2's R̃_GC ≪ R̃_IC.
    """
    c = gaussian_map_scale(float(sigma), std, sigma_min)
    a = c**2 * std**2
    return dim * a / (a + sigma**2 * (1 + c) ** 2)


# ----------------------------------------------------------------------------------------------
# Nonparametric estimate (low dimension).


def local_linear_loo(x: Tensor, y: Tensor, bandwidth: float, chunk: int = 1024, ridge: float = 1e-10) -> Tensor:
    """Leave-one-out local-linear kernel regression of y on x with a Gaussian kernel.

    For each i, fit y ≈ a + B (x_j − x_i) by least squares weighted by exp(−‖x_j − x_i‖²/(2h²)),
    j ≠ i, and return a. Where the kernel sees fewer than 2(d + 1) effective neighbours the linear
    fit is undetermined and the local-constant (Nadaraya–Watson) value is used instead.
    x: (n, d), y: (n, p) -> (n, p) float64. Memory O(chunk · n).
    """
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    n, d = x.shape
    p = y.shape[1]
    # Raw moments of the neighbours: [1, x, x xᵀ, y, x yᵀ] per point, shape (n, q).
    xx = (x[:, :, None] * x[:, None, :]).reshape(n, d * d)
    xy = (x[:, :, None] * y[:, None, :]).reshape(n, d * p)
    feats = torch.cat([torch.ones(n, 1, dtype=torch.float64), x, xx, y, xy], dim=1)
    sq = (x * x).sum(1)
    out = torch.empty(n, p, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for lo in range(0, n, chunk):
        xi = x[lo : lo + chunk]
        m = xi.shape[0]
        d2 = (sq[lo : lo + chunk, None] + sq[None, :] - 2 * xi @ x.T).clamp_min(0)
        w = torch.exp(-0.5 * d2 / bandwidth**2)
        w[torch.arange(m), torch.arange(lo, lo + m)] = 0.0  # leave one out
        mom = w @ feats  # (m, q)
        s0 = mom[:, :1].clamp_min(1e-300)
        ess = s0[:, 0] ** 2 / w.pow(2).sum(1).clamp_min(1e-300)  # effective number of neighbours
        # Work with weighted means, centred at x_i: E_w[x − x_i], E_w[(x − x_i)(x − x_i)ᵀ], …
        mx = mom[:, 1 : 1 + d] / s0
        mxx = mom[:, 1 + d : 1 + d + d * d].reshape(m, d, d) / s0[:, :, None]
        my = mom[:, 1 + d + d * d : 1 + d + d * d + p] / s0
        mxy = mom[:, 1 + d + d * d + p :].reshape(m, d, p) / s0[:, :, None]
        cov_x = mxx - mx[:, :, None] * mx[:, None, :]  # weighted covariance of the neighbours
        cov_xy = mxy - mx[:, :, None] * my[:, None, :]
        reg = ridge * torch.diagonal(cov_x, dim1=1, dim2=2).mean(1) + 1e-12 * bandwidth**2
        slope, info = torch.linalg.solve_ex(cov_x + reg[:, None, None] * eye, cov_xy)  # (m, d, p)
        # The local line evaluated at x_i: ȳ_w + Bᵀ (x_i − x̄_w).
        pred = my + ((xi - mx)[:, :, None] * slope).sum(1)
        linear_ok = (ess >= 2 * (d + 1)) & (info == 0) & torch.isfinite(pred).all(1)
        out[lo : lo + m] = torch.where(linear_ok[:, None], pred, my)
    return out


@dataclass
class KernelEstimate:
    """A kernel estimate of R̃_σ at one level.

    Attributes:
        value: the leave-one-out risk at the chosen bandwidth.
        stderr: its Monte-Carlo standard error.
        bandwidth: the chosen bandwidth.
        risks: leave-one-out risk for each bandwidth tried.
        bandwidths: the bandwidths tried.
    """

    value: float
    stderr: float
    bandwidth: float
    risks: list[float]
    bandwidths: list[float]


def kernel_discrepancy(
    end: Tensor,
    z: Tensor,
    sigma: float,
    bandwidths: list[float] | None = None,
    rel_bandwidths: tuple[float, ...] = tuple(float(r) for r in np.geomspace(0.004, 2.0, 10)),
) -> KernelEstimate:
    """Estimate R̃_σ from pairs (end (n, d), z (n, d)) by leave-one-out local-linear regression.

    R̂ = mean ‖end − Ê[end | x̃]‖² / σ² with x̃ = end + σ z. Bandwidths default to `rel_bandwidths`
    times the overall spread of x̃; the one with the smallest leave-one-out risk is kept.
    """
    x = end + sigma * z
    if bandwidths is None:
        spread = float(x.std(0).pow(2).mean().sqrt())
        bandwidths = [r * spread for r in rel_bandwidths]
    risks, pers = [], []
    for h in bandwidths:
        pred = local_linear_loo(x, end, h)
        per = (end - pred).pow(2).sum(1) / sigma**2
        per = torch.where(torch.isfinite(per), per, torch.full_like(per, float("inf")))
        risks.append(float(per.mean()))
        pers.append(per)
    best = int(np.argmin(risks))
    per = pers[best]
    return KernelEstimate(
        risks[best],
        float(per.std() / math.sqrt(per.shape[0])),
        float(bandwidths[best]),
        risks,
        list(map(float, bandwidths)),
    )


# ----------------------------------------------------------------------------------------------
# The paper's estimator: a denoiser trained on the coupling's pairs.


class NoiseLevelDenoiser(nn.Module):
    """D(x, σ) = c_skip x + c_out F(c_in x, c_noise) with EDM's denoiser scalings (σ_data = `sigma_data`).

    x: (B, d), sigma: (B,) -> (B, d). Trained to predict the trajectory end from x̃_σ.
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net = ToyMLP(dim, width, depth)
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x: (B, d), sigma: (B,) -> D(x, σ): (B, d)."""
        s = edm_scalings(sigma, self.sigma_data)
        return per_sample(s.c_skip, x) * x + per_sample(s.c_out, x) * self.net(per_sample(s.c_in, x) * x, s.c_noise)


@dataclass(frozen=True)
class DenoiserSettings:
    """Training budget of the MLP estimator (per coupling)."""

    steps: int = 2000
    batch: int = 256
    lr: float = 2e-3
    width: int = 64
    depth: int = 2
    seed: int = 0


def fit_denoiser_discrepancy(
    train: tuple[Tensor, Tensor, Tensor],
    test: tuple[Tensor, Tensor, Tensor],
    sigmas: list[float],
    settings: DenoiserSettings = DenoiserSettings(),
) -> DiscrepancyCurve:
    """Train a denoiser on pairs and return its held-out R̂_σ per level.

    Args:
        train, test: (level index (n,), end (n, d), z (n, d)); the level of row j is sigmas[index_j].
        sigmas: the S levels.
        settings: optimisation budget.

    The loss is EDM's: ((σ² + σ_d²)/(σ σ_d)²) ‖end − D(x̃, σ)‖², which gives every level a similar scale.
    """
    torch.manual_seed(settings.seed)
    idx_tr, end_tr, z_tr = train
    dim = end_tr.shape[1]
    sig = torch.tensor(sigmas, dtype=torch.float32)
    model = NoiseLevelDenoiser(dim, settings.width, settings.depth)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k / settings.steps, 1.0)))
    )
    g = torch.Generator().manual_seed(settings.seed)
    end_tr, z_tr = end_tr.float(), z_tr.float()
    sd2 = model.sigma_data**2
    for _ in range(settings.steps):
        rows = torch.randint(0, end_tr.shape[0], (settings.batch,), generator=g)
        s = sig[idx_tr[rows]]
        e, zz = end_tr[rows], z_tr[rows]
        pred = model(e + s[:, None] * zz, s)
        w = (s**2 + sd2) / (s**2 * sd2)
        loss = (w * (pred - e).pow(2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    idx_te, end_te, z_te = test
    vals, errs = [], []
    model.eval()
    with torch.no_grad():
        for k, sigma in enumerate(sigmas):
            rows = idx_te == k
            e, zz = end_te[rows].float(), z_te[rows].float()
            s = torch.full((e.shape[0],), float(sigma))
            pred = model(e + sigma * zz, s).double()
            per = (e.double() - pred).pow(2).sum(1) / sigma**2
            vals.append(float(per.mean()))
            errs.append(float(per.std() / math.sqrt(per.shape[0])))
    return DiscrepancyCurve(list(map(float, sigmas)), vals, errs)


def draw_pair_sets(
    coupling: CouplingSampler, sigmas: list[float], n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """n pairs of the coupling at each level: (level index (S·n,), end (S·n, d), z (S·n, d))."""
    idx, ends, zs = [], [], []
    for k, sigma in enumerate(sigmas):
        e, z = coupling(float(sigma), n, generator)
        idx.append(torch.full((n,), k, dtype=torch.int64))
        ends.append(e)
        zs.append(z)
    return torch.cat(idx), torch.cat(ends), torch.cat(zs)
