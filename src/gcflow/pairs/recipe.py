"""Compose coupling, generator augmentation and pair kind into one pair-construction call."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gcflow.pairs.cd import cd_pairs
from gcflow.pairs.coupling import get_coupling
from gcflow.pairs.ct import ct_pairs
from gcflow.pairs.gc import generator_augment, select_gc
from gcflow.pairs.types import PairBatch, PointFn

PAIR_KINDS = ("ct", "cd")


@dataclass(frozen=True)
class PairRecipe:
    """How to build training pairs.

    Attributes:
        kind: "ct" (consistency training) or "cd" (distillation from a velocity function).
        coupling: "independent" (iCT) or "ot" (minibatch optimal transport).
        gc_mu: probability μ that a sample is a generator-augmented pair (0 = plain iCT). CT only.
        cd_solver: "euler" or "heun" for CD pairs.
    """

    kind: str = "ct"
    coupling: str = "independent"
    gc_mu: float = 0.0
    cd_solver: str = "euler"

    def __post_init__(self) -> None:
        if self.kind not in PAIR_KINDS:
            raise ValueError(f"unknown pair kind {self.kind!r}; choose one of {list(PAIR_KINDS)}")
        get_coupling(self.coupling)
        if not 0.0 <= self.gc_mu <= 1.0:
            raise ValueError(f"the GC probability mu must be in [0, 1], got {self.gc_mu}")
        if self.kind == "cd" and self.gc_mu > 0:
            raise ValueError("GC pairs re-noise the prediction with z and need CT pairs: use kind 'ct' or gc_mu 0")


def build_pairs(
    recipe: PairRecipe,
    x0: Tensor,
    z: Tensor,
    sigma_i: Tensor,
    sigma_next: Tensor,
    weight: Tensor,
    *,
    predictor: PointFn | None = None,
    velocity: PointFn | None = None,
    generator: torch.Generator | None = None,
    gc_mask: Tensor | None = None,
) -> PairBatch:
    """Build a batch of pairs: coupling -> (GC augmentation) -> CT or CD pairs.

    x0, z: (B, *D); sigma_i, sigma_next, weight: (B,). `predictor` is needed when gc_mu > 0 and
    `velocity` for CD. The GC selection is `gc_mask` (B,) bool when given (the trainer draws it for the
    global batch so that every process agrees), else drawn with probability μ from `generator`.
    """
    z = get_coupling(recipe.coupling)(x0, z)
    if recipe.kind == "cd":
        if velocity is None:
            raise ValueError("CD pairs need a velocity function")
        return cd_pairs(x0, z, sigma_i, sigma_next, weight, velocity, recipe.cd_solver)
    mask = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    if recipe.gc_mu > 0:
        if predictor is None:
            raise ValueError("GC pairs (gc_mu > 0) need a predictor")
        mask = gc_mask if gc_mask is not None else select_gc(x0.shape[0], recipe.gc_mu, generator, x0.device)
        x0 = generator_augment(x0, z, sigma_i, predictor, mask)
    return ct_pairs(x0, z, sigma_i, sigma_next, weight, is_gc=mask)
