"""Gaussian mixtures with diagonal covariances, in any dimension, with exact denoiser and velocity.

A component with zero standard deviation is a Dirac mass, so `GaussianMixture.empirical(points)`
is the empirical distribution of a finite data set and its denoiser is the ideal one for that
training set: D⋆(x, σ) = Σ_k softmax_k(−‖x − x_k‖²/(2σ²)) x_k.

Under x_σ = x⋆ + σ z with x⋆ from the mixture, component k gives x_σ ~ N(m_k, diag(s_k² + σ²)), so
the posterior responsibilities are r_k ∝ w_k N(x; m_k, s_k² + σ²) and
D⋆(x, σ) = Σ_k r_k (m_k σ²/(s_k²+σ²) + x s_k²/(s_k²+σ²)).
Everything is written with matrix products so memory is O(B·K), not O(B·K·d).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianMixture:
    """Mixture of K diagonal Gaussians in dimension d.

    Attributes:
        means: (K, d) component means.
        stds: (K, d) per-dimension standard deviations (0 allowed: a Dirac component).
        weights: (K,) mixture weights summing to 1.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    @staticmethod
    def create(means: Tensor, stds: Tensor | float = 0.0, weights: Tensor | None = None) -> GaussianMixture:
        """Build a mixture in float64; `stds` may be a scalar, (K,) or (K, d); weights default to uniform."""
        m = torch.as_tensor(means, dtype=torch.float64)
        if m.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(m.shape)}")
        k, d = m.shape
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.ndim == 0:
            s = s.expand(k, d)
        elif s.ndim == 1:
            s = s[:, None].expand(k, d)
        s = s.clone()
        if (s < 0).any():
            raise ValueError("mixture standard deviations must be >= 0")
        w = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if w.shape != (k,) or (w < 0).any() or not math.isclose(float(w.sum()), 1.0, rel_tol=1e-9):
            raise ValueError("mixture weights must be K non-negative numbers summing to 1")
        return GaussianMixture(m, s, w)

    @staticmethod
    def empirical(points: Tensor) -> GaussianMixture:
        """The empirical distribution of a finite data set, points of shape (n, *D) flattened to (n, d)."""
        p = torch.as_tensor(points, dtype=torch.float64).reshape(points.shape[0], -1)
        return GaussianMixture.create(p, 0.0)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    def mean(self) -> Tensor:
        """E[x⋆], shape (d,)."""
        return self.weights @ self.means

    def std(self) -> float:
        """Overall data standard deviation sqrt(E‖x⋆ − E x⋆‖² / d) (a scalar σ_data)."""
        mu = self.mean()
        second = self.weights @ (self.stds**2 + (self.means - mu) ** 2).sum(dim=1)
        return float(torch.sqrt(second / self.dim))

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        return_labels: bool = False,
        dtype: torch.dtype = torch.float64,
    ):
        """Draw n points, shape (n, d) in `dtype` (and component labels (n,) if asked).

        Training data for a network: dtype=torch.float32 (what the bundled trainer's toy source
        feeds). The default float64 matches the mixture's exact methods (denoise, velocity, score),
        which the theory and experiments combine with these samples. The draw is always made in
        float64 and cast at the end, so both dtypes give the same points, to float32 rounding.
        """
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = (self.means[labels] + self.stds[labels] * eps).to(dtype)
        return (x, labels) if return_labels else x

    def responsibilities(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Posterior p(k | x_σ = x), shape (B, K); x: (B, d), sigma: (B,)."""
        x, sigma = self._check(x, sigma)
        return torch.softmax(self._logits(x, sigma), dim=1)

    def _check(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(x).reshape(x.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"points have dimension {x.shape[1]}, the mixture has {self.dim}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64).to(x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if (sigma <= 0).any():
            raise ValueError("the denoiser needs sigma > 0")
        return x, sigma

    # Structure of the mixture, computed once: the denoiser runs hundreds of times per exact-map solve.
    @functools.cached_property
    def _isotropic(self) -> bool:
        return bool((self.stds == self.stds[:, :1]).all())

    @functools.cached_property
    def _shared_variance(self) -> bool:
        return self._isotropic and bool((self.stds == self.stds[0, 0]).all())

    @functools.cached_property
    def _uniform_weights(self) -> bool:
        return bool((self.weights == self.weights[0]).all())

    @functools.cached_property
    def _half_sq_means(self) -> Tensor:
        return 0.5 * (self.means * self.means).sum(1)

    def _logits(self, x: Tensor, sigma: Tensor) -> Tensor:
        """log w_k + log N(x; m_k, diag(s_k² + σ²)) up to terms constant in k, shape (B, K).

        The isotropic case is one fused (B, d)·(d, K) product: ‖x‖² is the same for every k and
        cancels in the softmax; with one variance shared by all components (every toy, every
        empirical data set) so do the normalisers, and with uniform weights so does log w.
        """
        m, s2 = self.means.to(x.device), self.stds.to(x.device) ** 2
        logw = torch.log(self.weights.to(x.device))
        if not self._isotropic:
            # General diagonal case: (B, K, d) memory — only for non-isotropic mixtures (small K·d).
            v = s2[None, :, :] + sigma[:, None, None] ** 2
            diff = x[:, None, :] - m[None, :, :]
            return logw[None, :] - 0.5 * (diff * diff / v).sum(-1) - 0.5 * torch.log(2 * math.pi * v).sum(-1)
        logits = torch.addmm(-self._half_sq_means.to(x.device)[None, :], x, m.T)  # x·m_k − ‖m_k‖²/2
        if self._shared_variance:
            logits.div_(s2[0, 0] + sigma[:, None] ** 2)
            return logits if self._uniform_weights else logits.add_(logw[None, :])
        v = s2[:, 0][None, :] + sigma[:, None] ** 2  # (B, K)
        return (logits - 0.5 * (x * x).sum(1, keepdim=True)) / v + logw[None, :] - 0.5 * self.dim * torch.log(v)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Ideal denoiser D⋆(x, σ) = E[x⋆ | x_σ = x]; x: (B, *D), sigma: (B,) or scalar -> (B, *D) float64."""
        shape = x.shape
        xf, sig = self._check(x, sigma)
        r = torch.softmax(self._logits(xf, sig), dim=1)  # (B, K)
        m, s2, sb2 = self.means.to(xf.device), self.stds.to(xf.device) ** 2, sig[:, None] ** 2
        if self._shared_variance:
            shrink = s2[0, 0] / (s2[0, 0] + sb2)  # s²/(s² + σ²), (B, 1)
            out = (1.0 - shrink) * (r @ m) + shrink * xf
        elif self._isotropic:
            shrink = s2[:, 0][None, :] / (s2[:, 0][None, :] + sb2)  # s_k²/(s_k² + σ²), (B, K)
            out = (r * (1.0 - shrink)) @ m + xf * (r * shrink).sum(1, keepdim=True)
        else:
            v = s2[None] + sb2[:, :, None]  # (B, K, d)
            out = (r[:, :, None] * (m[None] * sb2[:, :, None] / v + xf[:, None, :] * s2[None] / v)).sum(1)
        return out.reshape(shape)

    def velocity(self, x: Tensor, sigma: Tensor) -> Tensor:
        """True PF-ODE velocity v_σ(x) = E[z | x_σ = x] = (x − D⋆(x, σ)) / σ, same shape as x."""
        xf, sig = self._check(x, sigma)
        d = self.denoise(x, sig).reshape(xf.shape)
        return ((xf - d) / sig[:, None]).reshape(x.shape)

    def score(self, x: Tensor, sigma: Tensor) -> Tensor:
        """∇ log p_σ(x) = −v_σ(x)/σ."""
        _, sig = self._check(x, sigma)
        v = self.velocity(x, sig)
        return -v / sig.reshape(-1, *([1] * (x.ndim - 1)))


def two_modes(std: float = 0.01) -> GaussianMixture:
    """The paper's toy: two tight modes at (0, ±0.5) with standard deviation 0.01."""
    return GaussianMixture.create(torch.tensor([[0.0, 0.5], [0.0, -0.5]], dtype=torch.float64), std)


def ring(k: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """k equal modes evenly spaced on a circle."""
    a = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return GaussianMixture.create(torch.stack([radius * torch.cos(a), radius * torch.sin(a)], 1), std)


def grid(side: int = 5, spacing: float = 0.5, std: float = 0.03) -> GaussianMixture:
    """side × side equal modes on a square grid centred at 0 (25 modes by default): a mode-coverage test bed."""
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return GaussianMixture.create(torch.stack([gx.flatten(), gy.flatten()], 1), std)


def single_gaussian(dim: int = 2, mean: float = 0.0, std: float = 0.5) -> GaussianMixture:
    """One isotropic Gaussian: everything (denoiser, consistency map, discrepancy) is analytic."""
    return GaussianMixture.create(torch.full((1, dim), mean, dtype=torch.float64), std)


TOY_PRESETS: dict[str, Callable[[], GaussianMixture]] = {
    "two-modes": two_modes,
    "ring8": ring,
    "grid25": grid,
    "gaussian": single_gaussian,
}


def make_toy(name: str) -> GaussianMixture:
    """Build a named toy distribution; unknown names fail with the list of choices."""
    try:
        return TOY_PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown toy distribution {name!r}; choose one of {sorted(TOY_PRESETS)}") from None
