"""Helpers shared by the experiments: data, threads, and training toy models with the bundled trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.toy.mixture import TOY_PRESETS, GaussianMixture, make_toy, single_gaussian


def set_threads(n: int) -> None:
    """Use n intra-op CPU threads (0 leaves torch's default)."""
    if n > 0:
        torch.set_num_threads(n)


def toy(name: str) -> GaussianMixture:
    """A named toy: a trainer toy (two-modes, ring8, grid25, gaussian), `gaussian:D` (N(0, 0.5² I) in D
    dimensions, where IC and GC discrepancies are analytic) or `digits` (1797 points, 64-D, in [-1, 1])."""
    if name == "digits":
        return digits_mixture()
    if name.startswith("gaussian:"):
        try:
            dim = int(name.split(":", 1)[1])
        except ValueError:
            dim = 0
        if dim < 1:
            raise ValueError(
                f"bad data name {name!r}; write gaussian:D with an integer dimension D >= 1, e.g. gaussian:16"
            )
        return single_gaussian(dim, 0.0, GAUSSIAN_STD)
    return make_toy(name)


GAUSSIAN_STD = 0.5


def is_trainer_toy(name: str) -> bool:
    """Whether the bundled trainer knows this data name (only those can train a model inside an experiment)."""
    return name in TOY_PRESETS


def digits_mixture() -> GaussianMixture:
    """The empirical distribution of all 1797 scikit-learn digits, pixels scaled to [-1, 1] as the image loader does."""
    from gcflow.data.digits import load_digits

    imgs = torch.cat([load_digits(None, split, None).images for split in ("train", "test")])
    x = imgs.reshape(imgs.shape[0], -1).to(torch.float64) / 127.5 - 1.0
    return GaussianMixture.empirical(x)


def train_toy(run_dir: Path, preset: str, overrides: list[str], *, keep_all: bool = True) -> dict[str, Any]:
    """Train with the bundled trainer from `preset` + overrides into `run_dir`; returns its summary.

    With `keep_all`, every checkpoint written (every `train.checkpoint_every` steps) is kept so that
    the experiment can score the model along training.
    """
    from gcflow.training.config import apply_overrides
    from gcflow.training.presets import load_preset
    from gcflow.training.trainer import train

    cfg = apply_overrides(load_preset(preset), overrides)
    if keep_all:
        every = max(cfg.train.checkpoint_every, 1)
        cfg = apply_overrides(cfg, [f"train.keep_checkpoints={cfg.train.steps // every + 2}"])
    result = train(cfg, run_dir, overwrite=True, progress=False, log=lambda *a, **k: None)
    return result.summary


def run_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The trainer's evaluation records of metrics.jsonl (one per evaluation; training records left out)."""
    from gcflow.training.run_state import read_metrics

    return read_metrics(Path(run_dir), "eval")


def checkpoint_models(run_dir: Path) -> list[tuple[int, nn.Module]]:
    """(step, EMA model in eval mode) for every checkpoint of a run, oldest first."""
    from gcflow.training.checkpoint import list_checkpoints
    from gcflow.training.run_state import load_model_for_inference

    out = []
    for path in list_checkpoints(Path(run_dir) / "checkpoints"):
        model, _ = load_model_for_inference(path)
        out.append((int(path.stem.split("-")[1]), model))
    return out


def final_model(run_dir: Path) -> nn.Module:
    """The EMA model of a run folder's newest good checkpoint (or of one checkpoint file)."""
    from gcflow.training.run_state import load_model_for_inference

    model, _ = load_model_for_inference(Path(run_dir))
    return model


def prune_checkpoints(run_dir: Path) -> None:
    """Keep only the newest checkpoint of a run (the experiment has read the others)."""
    from gcflow.training.checkpoint import list_checkpoints

    for path in list_checkpoints(Path(run_dir) / "checkpoints")[:-1]:
        path.unlink(missing_ok=True)


def as_point_fn(model: nn.Module):
    """Wrap a float32 model as f(x, σ) taking and returning float64 tensors, under no_grad."""
    dtype = next(model.parameters()).dtype

    @torch.no_grad()
    def f(x: Tensor, s: Tensor) -> Tensor:
        return model(x.to(dtype), s.to(dtype)).to(torch.float64)

    return f
