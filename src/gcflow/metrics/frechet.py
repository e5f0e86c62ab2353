"""Pure maths of feature-space image metrics: Fréchet distance, KID and Inception Score.

Nothing here knows about networks or images: every function takes feature or logit arrays
(torch tensors or numpy arrays) and computes in float64 numpy. Feature extraction lives in
`inception.py` / `classifier.py`, the evaluation protocol (draws, seeds, reference files) in
`protocol.py`.

* Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Dowson & Landau 1982; FID, Heusel et al. 2017):

      FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}.

* KID (Bińkowski et al. 2018): the unbiased estimate of MMD² with the polynomial kernel
  k(x, y) = (γ x·y + c0)^d, γ = 1/F, c0 = 1, d = 3, averaged over random subsets (the defaults
  of the paper and of torch-fidelity: 100 subsets of 1000).

* Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), computed on `splits`
  contiguous chunks, reported as mean and standard deviation over the chunks.

Standard deviations are population standard deviations (numpy's default ddof = 0), as in
torch-fidelity.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.special import xlogy
from torch import Tensor

ArrayLike = Tensor | np.ndarray

# Rows converted to float64 at a time when accumulating a covariance: bounds peak memory
# (50 000 × 2048 float32 features never get a full float64 copy).
_CHUNK_ROWS = 8192


def _as_numpy(x: ArrayLike) -> np.ndarray:
    """A 2-D numpy view/copy of features (N, F), keeping the dtype (float32 stays float32)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        x = x.numpy() if x.dtype in (torch.float32, torch.float64) else x.double().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected features of shape (N, F), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ (F,) and unbiased covariance Σ (F, F) (ddof = 1, as np.cov) of features (N, F), float64.

    Two-pass (centred) accumulation over row chunks: exact in float64 and memory-light.
    """
    x = _as_numpy(features)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    mu = np.zeros(x.shape[1], dtype=np.float64)
    for i in range(0, n, _CHUNK_ROWS):
        mu += x[i : i + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for i in range(0, n, _CHUNK_ROWS):
        c = x[i : i + _CHUNK_ROWS].astype(np.float64) - mu
        sigma += c.T @ c
    sigma /= n - 1
    return mu, sigma


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigendecomposition (negative round-off clipped)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} for symmetric PSD Σ1, Σ2.

    Σ1 Σ2 is similar to the symmetric PSD matrix M = Σ1^{1/2} Σ2 Σ1^{1/2} (AB and BA share their
    eigenvalues, with A = Σ1^{1/2}, B = Σ1^{1/2} Σ2), so tr (Σ1 Σ2)^{1/2} = Σ_k sqrt(λ_k(M)).
    Both steps are symmetric eigendecompositions, which stay real and accurate when the
    covariances are singular or near-singular (fewer samples than features, dead ReLU units).
    We prefer this to `scipy.linalg.sqrtm(Σ1 Σ2)`, the usual FID implementation, which works on a
    non-symmetric product, can return complex values or NaN for singular inputs and then needs
    an ad-hoc ε·I offset; on well-conditioned inputs the two agree to round-off (tested).
    """
    s1 = _sqrt_psd(np.asarray(sigma1, dtype=np.float64))
    m = s1 @ np.asarray(sigma2, dtype=np.float64) @ s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ1, Σ1) and N(μ2, Σ2).

    FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}, in float64, clipped at 0 against
    round-off. See `trace_sqrt_product` for the (eigen-based) matrix square root.
    """
    mu1, mu2, s1, s2 = (_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return float(max(fd, 0.0))


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (γ x·y + c0)^d for all rows of x (n, F) and y (m, F); γ defaults to 1/F, d ≥ 1 an integer."""
    if int(degree) != degree or degree < 1:
        raise ValueError(f"kernel degree must be a positive integer, got {degree}")
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    base = gamma * (x @ y.T) + coef0
    out = base.copy()
    for _ in range(degree - 1):  # repeated products: several times faster than np.power
        out *= base
    return out


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from kernel matrices: off-diagonal means of K_xx and K_yy minus twice the mean of K_xy."""
    m, n = k_xx.shape[0], k_yy.shape[0]
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kid(
    features_a: ArrayLike,
    features_b: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: np.random.Generator | int | None = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over `subsets` of the unbiased MMD² between random
    subsets (without replacement, `subset_size` rows each, capped at the smaller set's size) of
    features_a (n, F) and features_b (m, F), with the polynomial kernel (x·y/F + 1)^3 by default.

    `generator` is a numpy Generator or an integer seed (default 0: a fixed, reproducible draw).
    """
    a, b = _as_numpy(features_a), _as_numpy(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    values = np.empty(subsets, dtype=np.float64)
    for s in range(subsets):
        x = a[rng.choice(a.shape[0], size, replace=False)].astype(np.float64)
        y = b[rng.choice(b.shape[0], size, replace=False)].astype(np.float64)
        k_xx, k_yy, k_xy = (polynomial_kernel(p, q, degree, gamma, coef0) for p, q in ((x, x), (y, y), (x, y)))
        values[s] = mmd2_unbiased(k_xx, k_yy, k_xy)
    return float(values.mean()), float(values.std())


def inception_score(
    scores: ArrayLike,
    splits: int = 10,
    kind: Literal["logits", "probs"] = "logits",
) -> tuple[float, float]:
    """Inception Score exp E_x KL(p(y|x) ‖ p(y)) of class scores (N, K): mean and std over `splits`
    contiguous chunks (p(y) is the chunk's marginal). `kind` says whether rows are logits
    (softmax applied here, in float64) or probabilities (rows renormalised to sum to 1).

    Bounds: 1 when every prediction is the same, K when predictions are one-hot and classes are
    equally frequent within each chunk.
    """
    s = _as_numpy(scores).astype(np.float64)
    if kind == "logits":
        log_p = s - s.max(axis=1, keepdims=True)
        p = np.exp(log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True)))
    elif kind == "probs":
        if (s < 0).any():
            raise ValueError("probabilities must be non-negative")
        p = s / s.sum(axis=1, keepdims=True)
    else:
        raise ValueError(f"kind must be 'logits' or 'probs', got {kind!r}")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    values = []
    for idx in np.array_split(np.arange(n), splits):
        pc = p[idx]
        py = pc.mean(axis=0, keepdims=True)
        # KL(p(y|x) ‖ p(y)) with 0 log 0 = 0 (xlogy), so one-hot probabilities are exact.
        kl = (xlogy(pc, pc) - xlogy(pc, py)).sum(axis=1)
        values.append(np.exp(kl.mean()))
    values = np.asarray(values)
    return float(values.mean()), float(values.std())
