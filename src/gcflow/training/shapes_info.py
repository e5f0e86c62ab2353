"""Human-readable facts about a config's network (parameter count, data shape)."""

from __future__ import annotations

from gcflow.training.builders import build_model
from gcflow.training.config import Config
from gcflow.training.data_source import is_toy
from gcflow.toy.mixture import make_toy


def data_shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    """(shape without batch axis, number of classes) of the configured data, without loading it."""
    if is_toy(cfg.data.name):
        return (make_toy(cfg.data.name).dim,), 0
    from gcflow.training.image_presets import dataset_shape

    return dataset_shape(cfg)


def describe_network(cfg: Config) -> str:
    """'network: <kind>, <N> parameters, data shape (...)'."""
    shape, classes = data_shape(cfg)
    model = build_model(cfg, shape, classes)
    n = sum(p.numel() for p in model.parameters())
    return f"network: {cfg.network.kind}, {n:,} parameters, data shape {shape}"
