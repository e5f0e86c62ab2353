"""Per-sample distances d(a, b) on flattened samples (method spec §4), and their registry.

Each takes a and b of shape (B, *D) and returns shape (B,). Pseudo-Huber is computed on the
per-sample vector norm, not element-wise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from gcflow.shapes import flatten_samples

Distance = Callable[[Tensor, Tensor], Tensor]


def pseudo_huber_c(dim: int) -> float:
    """The iCT constant c = 0.00054 · sqrt(d) for data of dimension d (≈ 0.0299 for 3×32×32)."""
    return 0.00054 * math.sqrt(dim)


def pseudo_huber(a: Tensor, b: Tensor, c: float | None = None) -> Tensor:
    """sqrt(‖a − b‖² + c²) − c per sample; c defaults to 0.00054·sqrt(d)."""
    diff = flatten_samples(a - b)
    if c is None:
        c = pseudo_huber_c(diff.shape[1])
    return torch.sqrt(diff.pow(2).sum(dim=1) + c * c) - c


def squared_l2(a: Tensor, b: Tensor) -> Tensor:
    """‖a − b‖² per sample."""
    return flatten_samples(a - b).pow(2).sum(dim=1)


def l2_norm(a: Tensor, b: Tensor) -> Tensor:
    """The Euclidean norm ‖a − b‖ per sample (φ(x) = x, i.e. α = 1 in Theorem 1)."""
    return flatten_samples(a - b).norm(dim=1)


DISTANCES: dict[str, Distance] = {
    "pseudo_huber": pseudo_huber,
    "l2": squared_l2,
    "l2_norm": l2_norm,
}

# Old names still accepted (configs saved with them load and train identically): "l1" was the norm's
# first name, though it is the Euclidean norm, not the L1 norm.
DISTANCE_ALIASES: dict[str, str] = {"l1": "l2_norm"}

# Every name a configuration may use: the registry's names and the aliases.
DISTANCE_NAMES: tuple[str, ...] = (*DISTANCES, *DISTANCE_ALIASES)


def canonical_distance(name: str) -> str:
    """The registry name for `name` (an alias maps to its distance); unknown names fail with the choices."""
    name = DISTANCE_ALIASES.get(name, name)
    if name not in DISTANCES:
        raise KeyError(f"unknown distance {name!r}; choose one of {sorted(DISTANCE_NAMES)}")
    return name


# (C, α) with φ(x) ~ C x^α near 0, for Theorem 1; pseudo-Huber's C = 1/(2c) depends on d.
def distance_exponent(name: str, dim: int) -> tuple[float, float]:
    """Return (C, α) such that φ(x) ≈ C x^α as x → 0 for the named distance (or alias) on dimension `dim`."""
    name = canonical_distance(name)
    if name == "pseudo_huber":
        return 1.0 / (2.0 * pseudo_huber_c(dim)), 2.0
    if name == "l2":
        return 1.0, 2.0
    return 1.0, 1.0  # l2_norm


def get_distance(name: str) -> Distance:
    """Look up a distance by name or alias; unknown names fail with the list of choices."""
    return DISTANCES[canonical_distance(name)]
