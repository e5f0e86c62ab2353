"""The exact consistency map f⋆: closed forms, fixed-step references, consistency along trajectories."""

from __future__ import annotations

import math

import pytest
import torch

from gcflow.theory.exact_error import error_to_exact, exact_map_targets
from gcflow.theory.exact_map import (
    ODETolerance,
    consistency_map,
    consistency_map_fixed,
    exact_consistency_map,
    gaussian_consistency_map,
)
from gcflow.toy.mixture import GaussianMixture, make_toy

SIGMA_MIN = 0.002


def _path_points(mix: GaussianMixture, n: int, g: torch.Generator, lo: float = 0.005, hi: float = 80.0):
    x0 = mix.sample(n, g)
    z = torch.randn(n, mix.dim, generator=g, dtype=torch.float64)
    sig = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(lo), math.log(hi), generator=g))
    return x0 + sig[:, None] * z, sig


def test_gaussian_closed_form(gen: torch.Generator) -> None:
    # One Gaussian N(m, s²I) in 3-D: f⋆ is affine, m + sqrt((s²+σ_min²)/(s²+σ²)) (x − m).
    mix = GaussianMixture.create(torch.tensor([[0.3, -0.2, 1.0]]), 0.7)
    x, sig = _path_points(mix, 300, gen)
    f = exact_consistency_map(mix, x, sig, SIGMA_MIN)
    closed = gaussian_consistency_map(x, sig, mix.means[0], 0.7, SIGMA_MIN)
    assert (f - closed).abs().max() < 1e-5
    # The closed form itself: identity at σ_min, and it maps N(m, (s²+σ²)I) to N(m, (s²+σ_min²)I).
    assert torch.allclose(gaussian_consistency_map(x, SIGMA_MIN, 0.0, 0.7, SIGMA_MIN), x)
    big = GaussianMixture.create(torch.zeros(1, 1), 0.7).sample(20000, gen) + 5.0 * torch.randn(
        20000, 1, generator=gen, dtype=torch.float64
    )
    mapped = gaussian_consistency_map(big, 5.0, 0.0, 0.7, SIGMA_MIN)
    assert mapped.std().item() == pytest.approx(math.sqrt(0.49 + SIGMA_MIN**2), rel=0.03)


def test_single_dirac_is_a_straight_line(gen: torch.Generator) -> None:
    # A single point x₁ (s = 0): f⋆(x, σ) = x₁ + (σ_min/σ)(x − x₁).
    p = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    mix = GaussianMixture.empirical(p)
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64) * 3
    sig = torch.rand(50, generator=gen, dtype=torch.float64) * 10 + 0.01
    f = exact_consistency_map(mix, x, sig, SIGMA_MIN)
    assert torch.allclose(f, p + (SIGMA_MIN / sig)[:, None] * (x - p), atol=1e-7)


@pytest.mark.parametrize("name", ["two-modes", "ring8", "grid25"])
def test_mixture_matches_fine_fixed_step(name: str, gen: torch.Generator) -> None:
    mix = make_toy(name)
    den = mix.denoise
    x, sig = _path_points(mix, 200, gen)
    f = consistency_map(den, x, sig, SIGMA_MIN)
    ref = consistency_map_fixed(den, x, sig, SIGMA_MIN, steps=800)
    err = (f - ref).norm(dim=1)
    assert err.median() < 1e-6
    assert torch.quantile(err, 0.95) < 1e-4


def test_batch_with_mixed_levels_equals_one_by_one(gen: torch.Generator) -> None:
    # Per-sample levels share one solver call; each sample must still meet the tolerance.
    mix = make_toy("ring8")
    x, sig = _path_points(mix, 6, gen)
    together = exact_consistency_map(mix, x, sig)
    alone = torch.cat([exact_consistency_map(mix, x[i : i + 1], sig[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_samples_at_or_below_sigma_min_are_unchanged(gen: torch.Generator) -> None:
    mix = make_toy("two-modes")
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    sig = torch.tensor([SIGMA_MIN, 0.001, SIGMA_MIN, 0.0015, SIGMA_MIN], dtype=torch.float64)
    assert torch.equal(exact_consistency_map(mix, x, sig), x)


def test_consistency_along_a_trajectory(gen: torch.Generator) -> None:
    # Integrating from σ to σ' < σ and then applying f⋆ at σ' gives f⋆ at σ (the defining property).
    mix = make_toy("ring8")
    den = mix.denoise
    x, _ = _path_points(mix, 100, gen, 2.0, 2.0)
    sig = torch.full((100,), 2.0, dtype=torch.float64)
    mid = consistency_map(den, x, sig, sigma_min=0.3)
    direct = consistency_map(den, x, sig, SIGMA_MIN)
    via_mid = consistency_map(den, mid, torch.full((100,), 0.3, dtype=torch.float64), SIGMA_MIN)
    assert torch.quantile((direct - via_mid).norm(dim=1), 0.95) < 1e-4


def test_pushforward_of_the_noisy_marginal_is_the_data(gen: torch.Generator) -> None:
    # The PF-ODE preserves marginals: f⋆(x⋆ + σz, σ) has (almost) the data law p_{σ_min}; mode masses are kept.
    mix = make_toy("two-modes")
    x, _ = _path_points(mix, 2000, gen, 3.0, 3.0)
    f = exact_consistency_map(mix, x, 3.0, SIGMA_MIN, ODETolerance(rtol=1e-5, atol=1e-6))
    upper = (f[:, 1] > 0).double().mean().item()
    assert upper == pytest.approx(0.5, abs=0.04)
    assert (f[:, 1].abs() - 0.5).abs().mean() < 0.02


def test_error_to_exact(gen: torch.Generator) -> None:
    mix = make_toy("gaussian")
    targets = exact_map_targets(mix, [0.1, 1.0, 10.0], 64, gen)
    exact = lambda x, s: gaussian_consistency_map(x, s, 0.0, 0.5)  # noqa: E731
    assert max(error_to_exact(exact, targets)) < 1e-9
    offset = torch.tensor([0.3, -0.4], dtype=torch.float64)
    shifted = error_to_exact(lambda x, s: exact(x, s) + offset, targets)
    assert shifted == pytest.approx([0.25] * 3, rel=1e-6)
    # A float32 module is evaluated in its own dtype.
    lin = torch.nn.Linear(2, 2).float()

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.float32
            return self.lin(x)

    assert all(math.isfinite(v) for v in error_to_exact(Wrap(), targets))


def test_bad_inputs() -> None:
    mix = make_toy("two-modes")
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma"):
        exact_consistency_map(mix, x, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        exact_consistency_map(mix, x, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="adaptive"):
        exact_consistency_map(mix, x, 1.0, tol=ODETolerance(method="rk4"))
