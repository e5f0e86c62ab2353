"""Evaluation during and after training: sampling with the EMA model and sample-quality metrics."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from gcflow.metrics.wasserstein import noise_floor, sliced_w2, w2_exact
from gcflow.randomness import step_generator
from gcflow.sampling import default_multistep_sigmas, sample_multistep, sample_onestep
from gcflow.training.config import Config


def generate(model: nn.Module, z: Tensor, cfg: Config, steps: int, class_labels: Tensor | None = None, seed: int = 0) -> Tensor:
    """Samples (B, *D) from standard normals z with the 1-step or multistep consistency sampler."""
    m = cfg.method

    def f(x: Tensor, s: Tensor) -> Tensor:
        return model(x, s, class_labels) if class_labels is not None else model(x, s)

    if steps == 1:
        return sample_onestep(f, z, m.sigma_max)
    sigmas = default_multistep_sigmas(steps, m.sigma_min, m.sigma_max, m.rho)
    return sample_multistep(f, z, sigmas, m.sigma_max, m.sigma_min, generator=step_generator(seed, 0, "eval"))


class ToyEvaluator:
    """W2 (exact OT) and sliced W2 between model samples and a fixed reference data sample.

    The latent z and the reference sample are fixed for the whole run, so successive evaluations
    differ only through the model; the noise floor is the same metric between two data samples.
    """

    def __init__(self, sample_data: Callable[[int, torch.Generator], Tensor], n: int, dim: int, seed: int, device: torch.device) -> None:
        self.reference = sample_data(n, step_generator(seed, 0, "eval")).to(torch.float32)
        self.z = torch.randn(n, dim, generator=step_generator(seed, 1, "eval")).to(device)
        self.floor = noise_floor(sample_data, n, seed=seed + 1)
        self.seed = seed

    @torch.no_grad()
    def __call__(self, model: nn.Module, cfg: Config) -> tuple[dict[str, Any], Tensor]:
        x = generate(model, self.z, cfg, cfg.train.sample_steps, seed=self.seed).cpu()
        return {
            "w2": w2_exact(x, self.reference),
            "sliced_w2": sliced_w2(x, self.reference),
            "w2_noise_floor": self.floor["w2"],
            "sliced_w2_noise_floor": self.floor["sliced_w2"],
        }, x
