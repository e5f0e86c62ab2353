"""Where training batches come from: fresh toy samples, or an in-memory image dataset.

Both give each process its slice of the global batch and keep a JSON-able state, so a resumed or
distributed run sees exactly the batches an uninterrupted single-process run would see.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from gcflow.data import DeviceBatches, ImageDataset, dataset_shape, load_image_dataset
from gcflow.randomness import step_generator
from gcflow.toy.mixture import TOY_PRESETS, GaussianMixture, make_toy
from gcflow.training.config import Config, ConfigError


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

    def __init__(
        self,
        mixture: GaussianMixture,
        global_batch: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
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
    """True for the names of the 2-D toy distributions (anything else is an image dataset)."""
    return name in TOY_PRESETS


def build_toy_source(
    name: str, global_batch: int, seed: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> ToySource:
    return ToySource(make_toy(name), global_batch, seed, device, rank, world_size)


# -- Image datasets --------------------------------------------------------------------------------


def image_splits(name: str) -> tuple[str, str]:
    """(training split, held-out split) of an image dataset; the held-out one gives the metrics' noise floor."""
    return ("train", "val") if name == "imagenet32" else ("train", "test")


def load_split(cfg: Config, split: str) -> ImageDataset:
    """One split of the configured image dataset, in memory (DatasetError if it cannot be read)."""
    return load_image_dataset(cfg.data.name, cfg.data.root or None, split=split, resolution=cfg.data.resolution or None)


def check_image_data(cfg: Config) -> None:
    """Raise DatasetError/ConfigError now if the training split cannot be loaded or batched."""
    _check_batch(load_split(cfg, image_splits(cfg.data.name)[0]), cfg)


def _check_batch(data: ImageDataset, cfg: Config) -> None:
    if len(data) < cfg.train.batch_size:
        raise ConfigError(
            f"dataset {cfg.data.name!r} has {len(data)} training images, fewer than one batch "
            f"(train.batch_size={cfg.train.batch_size}); lower train.batch_size"
        )


class ImageSource:
    """The training split held on the device; each process gets its slice of global batch `step`."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = load_split(cfg, image_splits(cfg.data.name)[0])
        _check_batch(self.dataset, cfg)
        self.loader = DeviceBatches(
            self.dataset,
            cfg.train.batch_size,
            device=device,
            seed=cfg.train.seed,
            flip=cfg.data.flip,
            world_size=world_size,
            rank=rank,
        )
        self.shape = tuple(self.dataset.images.shape[1:])
        self.conditional = bool(cfg.network.class_conditional and self.dataset.labels is not None)
        self.num_classes = self.dataset.num_classes if self.conditional else 0

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        x, labels = self.loader.batch(step)
        return x, (labels if self.conditional else None)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.loader.load_state_dict(state)


def build_source(cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> ToySource | ImageSource:
    """The configured data source: fresh toy samples, or the image dataset's training split on the device."""
    if is_toy(cfg.data.name):
        return build_toy_source(cfg.data.name, cfg.train.batch_size, cfg.train.seed, device, rank, world_size)
    return ImageSource(cfg, device, rank, world_size)  # CD on images: the teacher's or the empirical velocity


def data_shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    """(shape without batch axis, number of classes) of the configured data, without loading it."""
    if is_toy(cfg.data.name):
        return (make_toy(cfg.data.name).dim,), 0
    return dataset_shape(cfg.data.name, cfg.data.resolution)
