"""Pixel-space sliced 2-Wasserstein distance between two image sets.

A feature-free sanity metric for small datasets: images are flattened to vectors in [−1, 1]
(uint8 v ↦ v / 127.5 − 1, the training scale) and compared with POT's Monte-Carlo sliced W2,
SW2(a, b) = (E_θ W2²(θ·a, θ·b))^{1/2} over `n_projections` uniformly random unit directions θ
drawn from a fixed seed, so two calls on the same sets give the same number.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gcflow.metrics.protocol import MetricError
from gcflow.metrics.wasserstein import sliced_w2

DEFAULT_PROJECTIONS = 1000


def images_to_vectors(images: Tensor) -> np.ndarray:
    """uint8 images (N, C, H, W) → float64 vectors (N, C·H·W) in [−1, 1]."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
        raise MetricError(f"expected uint8 images (N, C, H, W), got {got}")
    return (images.reshape(images.shape[0], -1).to(torch.float64) / 127.5 - 1.0).numpy()


def pixel_sliced_w2(
    images_a: Tensor, images_b: Tensor, n_projections: int = DEFAULT_PROJECTIONS, seed: int = 0
) -> float:
    """Sliced W2 between two uint8 image sets of the same shape (sizes may differ), fixed seed."""
    if images_a.shape[1:] != images_b.shape[1:]:
        raise MetricError(f"image shapes differ: {tuple(images_a.shape[1:])} vs {tuple(images_b.shape[1:])}")
    return sliced_w2(images_to_vectors(images_a), images_to_vectors(images_b), n_projections=n_projections, seed=seed)
