"""Build the run's parts from its config through small registries that fail loudly on unknown names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gcflow.networks.mlp import ToyMLP
from gcflow.precond import ConsistencyModel
from gcflow.training.config import Config, ConfigError
from gcflow.training.data_source import data_shape


def _mlp(cfg: Config, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    dim = 1
    for s in shape:
        dim *= s
    return ToyMLP(dim, cfg.network.width, cfg.network.depth, dropout=float(cfg.network.dropout[0]))


def _songunet(cfg: Config, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from gcflow.networks.songunet import SongUNet

    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"network.kind=songunet needs square images (C, H, W), got data of shape {shape}")
    n = cfg.network
    nb: Any = n.num_blocks[0] if len(n.num_blocks) == 1 else tuple(n.num_blocks)
    dr: Any = n.dropout[0] if len(n.dropout) == 1 else tuple(n.dropout)
    try:
        return SongUNet(
            img_resolution=shape[1],
            in_channels=shape[0],
            out_channels=shape[0],
            model_channels=n.channels,
            channel_mult=tuple(n.channel_mult),
            num_blocks=nb,
            attn_resolutions=tuple(n.attn_resolutions),
            dropout=dr,
            embedding_type=n.embedding,
            noise_label_scale=n.noise_label_scale,
            num_classes=num_classes if n.class_conditional else 0,
        )
    except ValueError as exc:
        raise ConfigError(f"network: {exc}") from None


NETWORKS: dict[str, Callable[[Config, tuple[int, ...], int], nn.Module]] = {"mlp": _mlp, "songunet": _songunet}


def build_model(cfg: Config, data_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
    """The preconditioned model for data of shape `data_shape` (without the batch axis): the consistency
    model f_θ, or EDM's denoiser D_θ for a diffusion run (method.pairs=edm)."""
    net = NETWORKS[cfg.network.kind](cfg, tuple(data_shape), num_classes)
    if cfg.method.pairs == "edm":
        from gcflow.teacher.edm_loss import Denoiser

        return Denoiser(net, sigma_data=cfg.method.sigma_data)
    return ConsistencyModel(net, sigma_data=cfg.method.sigma_data, sigma_min=cfg.method.sigma_min)


def init_from_teacher(model: nn.Module, cfg: Config) -> nn.Module:
    """`model` with its raw network copied from method.init_from (a diffusion run or imported file), if set."""
    if not cfg.method.init_from:
        return model
    from gcflow.training.teacher_source import init_from_teacher as copy_teacher

    return copy_teacher(model, cfg.method.init_from)


def _lion(params: Any, cfg: Config) -> torch.optim.Optimizer:
    from lion_pytorch.foreach import Lion  # foreach kernels; faster than a copy of our own (benchmarks/lion.py)

    o = cfg.optim
    return Lion(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def _adam(params: Any, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    params = list(params)
    fused = bool(params) and params[0].is_cuda  # one fused kernel on CUDA; foreach kernels on the CPU
    return torch.optim.AdamW(
        params,
        lr=o.lr,
        betas=tuple(o.betas),
        weight_decay=o.weight_decay,
        foreach=None if fused else True,
        fused=fused or None,
    )


def _radam(params: Any, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim  # ECT's optimiser (locuslab/ect: RAdam, betas 0.9/0.999, eps 1e-8)
    return torch.optim.RAdam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


OPTIMIZERS: dict[str, Callable[[Any, Config], torch.optim.Optimizer]] = {"lion": _lion, "adam": _adam, "radam": _radam}


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The optimizer named by `optim.name` over the model's parameters."""
    return OPTIMIZERS[cfg.optim.name](model.parameters(), cfg)


def set_memory_format(model: nn.Module, cfg: Config) -> nn.Module:
    """Put an image network's convolution weights in the channels-last layout when train.channels_last is set.

    Call before making the EMA and the optimizer so that they inherit the layout. Checkpoints are
    unaffected (tensors are saved contiguous in the standard layout).
    """
    if cfg.train.channels_last and cfg.network.kind == "songunet":
        model = model.to(memory_format=torch.channels_last)
    return model


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, else Apple's MPS, else the CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use train.device=cpu")
    return dev


def describe_network(cfg: Config) -> str:
    """'network: <kind>, <N> parameters, data shape (...)' of the configured network, without loading data."""
    shape, classes = data_shape(cfg)
    model = build_model(cfg, shape, classes)
    n = sum(p.numel() for p in model.parameters())
    return f"network: {cfg.network.kind}, {n:,} parameters, data shape {shape}"
