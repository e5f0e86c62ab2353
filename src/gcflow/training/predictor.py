"""The GC predictor f_η of the bundled trainer: the EMA network, the online one, or a frozen trained run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from gcflow.training.builders import set_memory_format
from gcflow.training.config import Config
from gcflow.training.run_state import load_run

GCPredictor = Callable[..., Tensor]  # (x (n, *D), σ (n,)[, class_labels (n,)]) -> x̂ (n, *D)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (no dropout) and restore its previous mode afterwards."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def build_gc_predictor(cfg: Config, model: nn.Module, ema: nn.Module, device: torch.device) -> GCPredictor:
    """The GC predictor chosen by method.gc_predictor: "ema" (default), "online", or "frozen" (method.gc_checkpoint).

    It runs in eval mode (no dropout) and under no_grad: it only supplies the re-noised endpoint.
    """
    kind = cfg.method.gc_predictor
    if kind == "ema":
        net = ema
    elif kind == "online":
        net = model
    else:
        net = set_memory_format(load_run(Path(cfg.method.gc_checkpoint), device).model, cfg)
    # Compiled with a dynamic batch axis: the GC subset's size changes from step to step.
    run = torch.compile(net, dynamic=True) if cfg.train.compile else net

    @torch.no_grad()
    def predict(x: Tensor, s: Tensor, class_labels: Tensor | None = None) -> Tensor:
        with eval_mode(net):
            return run(x, s, class_labels) if class_labels is not None else run(x, s)

    return predict
