"""Where training batches come from: fresh toy samples, or an in-memory image dataset.

Both give each process its slice of the global batch and keep a JSON-able state, so a resumed or
distributed run sees exactly the batches an uninterrupted single-process run would see.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from gcflow.randomness import step_generator
from gcflow.toy.mixture import TOY_PRESETS, GaussianMixture, make_toy


class DataSource(Protocol):
    shape: tuple[int, ...]
    num_classes: int

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        """This process's slice of the global batch for `step`: (x (B_local, *shape), labels or None)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ToySource:
    """Fresh samples of a Gaussian mixture at every step (an infinite data set)."""

    def __init__(self, mixture: GaussianMixture, global_batch: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.mixture = mixture
        self.shape = (mixture.dim,)
        self.num_classes = 0
        self.global_batch, self.seed, self.device = global_batch, seed, device
        self.rank, self.world_size = rank, world_size

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        x = self.mixture.sample(self.global_batch, step_generator(self.seed, step, "data")).to(torch.float32)
        local = self.global_batch // self.world_size
        return x[self.rank * local : (self.rank + 1) * local].to(self.device), None

    def state_dict(self) -> dict[str, Any]:
        return {}  # a pure function of (seed, step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def is_toy(name: str) -> bool:
    return name in TOY_PRESETS


def build_toy_source(name: str, global_batch: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1) -> ToySource:
    return ToySource(make_toy(name), global_batch, seed, device, rank, world_size)
