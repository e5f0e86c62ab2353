"""Compose generator augmentation and pair kind into one pair-construction call.

The bundled trainer and a user's own loop make the same call:

    z = get_coupling(coupling)(x0, z)             # which noise goes with which data point (IC or OT)
    mask = select_gc(B, mu, generator)            # which rows are GC pairs (None: no GC pair)
    pairs = build_pairs(PairRecipe("ct"), x0, z, sigma_i, sigma_next, weight, gc_mask=mask, predictor=f_eta)

The coupling and the GC selection are inputs rather than recipe fields, because the trainer
decides both for the global batch (every process agrees on them) and solves the OT assignment off
the critical path (a worker thread on CUDA); the pairs themselves are built only here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from gcflow.pairs.cd import cd_pairs
from gcflow.pairs.ct import ct_pairs
from gcflow.pairs.gc import generator_augment
from gcflow.pairs.types import PairBatch, PointFn

PAIR_KINDS = ("ct", "cd")


@dataclass(frozen=True)
class PairRecipe:
    """How to build training pairs from coupled (data, noise) rows.

    Attributes:
        kind: "ct" (consistency training) or "cd" (distillation from a velocity function).
        cd_solver: "euler" or "heun" for CD pairs.
    """

    kind: str = "ct"
    cd_solver: str = "euler"

    def __post_init__(self) -> None:
        if self.kind not in PAIR_KINDS:
            raise ValueError(f"unknown pair kind {self.kind!r}; choose one of {list(PAIR_KINDS)}")


def build_pairs(
    recipe: PairRecipe,
    x0: Tensor,
    z: Tensor,
    sigma_i: Tensor,
    sigma_next: Tensor,
    weight: Tensor,
    *,
    gc_mask: Tensor | None = None,
    predictor: PointFn | None = None,
    velocity: PointFn | None = None,
) -> PairBatch:
    """Build a batch of pairs: (GC augmentation of the masked rows) -> CT or CD pairs.

    Args:
        recipe: the pair kind (and CD solver).
        x0: (B, *D) data.
        z: (B, *D) noise, already matched to x0 by the coupling (`get_coupling(name)(x0, z)`, or
            `z[ot_assignment(x0, z)]`); both points of every pair use it.
        sigma_i, sigma_next, weight: (B,) adjacent noise levels σ_i < σ_{i+1} and loss weights λ_i.
        gc_mask: (B,) bool, True where the pair is generator-augmented (draw it with
            `select_gc(B, μ, generator)`); None = no GC pair (plain iCT). CT only.
        predictor: the GC predictor f_η(x, σ) -> x̂, needed with `gc_mask`; it sees only the masked rows.
        velocity: the exact velocity v(x, σ) for CD pairs.
    """
    if recipe.kind == "cd":
        if gc_mask is not None:
            raise ValueError("GC pairs re-noise the prediction with z and need CT pairs: use kind 'ct' or no gc_mask")
        if velocity is None:
            raise ValueError("CD pairs need a velocity function")
        return cd_pairs(x0, z, sigma_i, sigma_next, weight, velocity, recipe.cd_solver)
    if gc_mask is None:
        return ct_pairs(x0, z, sigma_i, sigma_next, weight)
    if predictor is None:
        raise ValueError("GC pairs (a gc_mask) need a predictor")
    x0 = generator_augment(x0, z, sigma_i, predictor, gc_mask)
    return ct_pairs(x0, z, sigma_i, sigma_next, weight, is_gc=gc_mask)
