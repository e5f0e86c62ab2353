"""Proxy discrepancy and transport cost: estimators against exact values where those exist."""

from __future__ import annotations

import math

import pytest
import torch

from gcflow.theory.discrepancy import (
    DenoiserSettings,
    draw_pair_sets,
    exact_ic_discrepancy,
    fit_denoiser_discrepancy,
    gaussian_gc_discrepancy,
    gaussian_ic_discrepancy,
    generator_pairs,
    independent_pairs,
    kernel_discrepancy,
    local_linear_loo,
    minibatch_ot_pairs,
)
from gcflow.theory.exact_map import gaussian_consistency_map
from gcflow.theory.transport import gaussian_costs, generator_cost_curve, independent_cost, minibatch_ot_cost
from gcflow.toy.mixture import GaussianMixture, make_toy

S = 0.5


def _gaussian(dim: int = 2) -> GaussianMixture:
    return GaussianMixture.create(torch.zeros(1, dim), S)


def test_exact_ic_matches_the_gaussian_closed_form(gen: torch.Generator) -> None:
    sigmas = [0.01, 0.3, 2.0, 50.0]
    curve = exact_ic_discrepancy(_gaussian(), sigmas, 20000, gen)
    for s, v, e in zip(sigmas, curve.values, curve.stderr):
        assert v == pytest.approx(gaussian_ic_discrepancy(s, S, 2), abs=4 * e + 1e-12)


def test_gaussian_gc_closed_form_by_monte_carlo(gen: torch.Generator) -> None:
    # GC with the exact (affine) map: x̃ = m + c(x⋆ − m) + σ(1 + c)z; Var(z | x̃) by linear regression.
    for sigma in (0.1, 1.0, 20.0):
        pairs = generator_pairs(_gaussian(1).sample, 1, lambda x, s: gaussian_consistency_map(x, s, 0.0, S))
        end, z = pairs(sigma, 200000, gen)
        xt = end + sigma * z
        beta = (xt * z).mean() / (xt * xt).mean()
        resid = ((z - beta * xt) ** 2).mean().item()
        assert resid == pytest.approx(gaussian_gc_discrepancy(sigma, S, 1), rel=0.02)
    # Theorem 2 for a Gaussian: R̃_GC / R̃_IC → 0 like s²/σ².
    ratio = [gaussian_gc_discrepancy(s, S, 2) / gaussian_ic_discrepancy(s, S, 2) for s in (1.0, 10.0, 100.0)]
    assert ratio[0] > ratio[1] > ratio[2] and ratio[2] < 1e-4


def test_local_linear_is_exact_on_linear_targets(gen: torch.Generator) -> None:
    x = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    a = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 1.5]], dtype=torch.float64)
    y = x @ a + torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    for h in (1.0, 10.0, 100.0):
        assert torch.allclose(local_linear_loo(x, y, h, chunk=128), y, atol=1e-8)
    # With a narrow kernel, points with too few neighbours fall back to the local mean; the rest stay exact.
    err = (local_linear_loo(x, y, 0.3) - y).abs().max(1).values
    assert err.median() < 1e-8


def test_kernel_estimate_matches_exact_ic(gen: torch.Generator) -> None:
    mix = make_toy("two-modes")
    sigmas = [0.03, 0.3, 3.0]
    exact = exact_ic_discrepancy(mix, sigmas, 20000, gen)
    ic = independent_pairs(mix.sample, 2)
    for s, v in zip(sigmas, exact.values):
        end, z = ic(s, 1500, gen)
        est = kernel_discrepancy(end, z, s)
        assert est.value == pytest.approx(v, rel=0.12)


def test_kernel_estimate_matches_gaussian_gc(gen: torch.Generator) -> None:
    pairs = generator_pairs(_gaussian().sample, 2, lambda x, s: gaussian_consistency_map(x, s, 0.0, S))
    for s in (0.3, 3.0):
        end, z = pairs(s, 1500, gen)
        assert kernel_discrepancy(end, z, s).value == pytest.approx(gaussian_gc_discrepancy(s, S, 2), rel=0.1)


@pytest.mark.slow
def test_denoiser_estimate_matches_exact_ic(gen: torch.Generator) -> None:
    mix = make_toy("two-modes")
    sigmas = [0.3, 3.0]
    exact = exact_ic_discrepancy(mix, sigmas, 20000, gen)
    ic = independent_pairs(mix.sample, 2)
    train = draw_pair_sets(ic, sigmas, 4000, gen)
    test = draw_pair_sets(ic, sigmas, 4000, gen)
    curve = fit_denoiser_discrepancy(train, test, sigmas, DenoiserSettings(steps=600, width=32, depth=2))
    for v, e in zip(curve.values, exact.values):
        assert v == pytest.approx(e, rel=0.15)


def test_ot_pairs_are_a_permutation_and_cheaper(gen: torch.Generator) -> None:
    mix = make_toy("two-modes")
    end, z = minibatch_ot_pairs(mix.sample, 2, 64)(1.0, 128, gen)
    assert end.shape == z.shape == (128, 2)
    g2 = torch.Generator().manual_seed(7)
    x0, zz = mix.sample(2048, g2), torch.randn(2048, 2, generator=g2, dtype=torch.float64)
    costs = [minibatch_ot_cost(x0, zz, b).value for b in (16, 128, 512)]
    assert independent_cost(x0, zz).value > costs[0] > costs[1] > costs[2]


def test_costs_against_gaussian_closed_forms(gen: torch.Generator) -> None:
    d, m = 2, torch.tensor([0.3, -0.4], dtype=torch.float64)
    mix = GaussianMixture.create(m[None], S)
    x0 = mix.sample(40000, gen)
    z = torch.randn(40000, d, generator=gen, dtype=torch.float64)
    sigmas = [0.002, 0.1, 1.0, 10.0, 80.0]
    ic = independent_cost(x0, z)
    exact = [gaussian_costs(s, S, d, 0.25) for s in sigmas]
    assert ic.value == pytest.approx(exact[0]["ic"], abs=4 * ic.stderr)
    curve = generator_cost_curve(lambda x, s: gaussian_consistency_map(x, s, m, S), x0, z, sigmas)
    for c, e in zip(curve, exact):
        assert c.value == pytest.approx(e["gc"], abs=4 * c.stderr + 1e-9)
    # c(σ_min) is the IC cost, and c(σ) → W2² (the exact OT cost) as σ → ∞ for a Gaussian.
    assert exact[0]["gc"] == pytest.approx(exact[0]["ic"], rel=1e-2)  # f(x, σ_min) = x = x⋆ + σ_min z
    assert exact[-1]["gc"] == pytest.approx(exact[-1]["ot"], rel=1e-2)
    ot = minibatch_ot_cost(x0[:2048], z[:2048], 512)
    assert exact[0]["ot"] - 3 * ot.stderr < ot.value < ic.value  # E[minibatch OT cost] ≥ W2²


def test_mixture_gc_curve_is_batched_over_levels(gen: torch.Generator) -> None:
    calls = []

    def f(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x * 0.0

    x0, z = torch.zeros(10, 2, dtype=torch.float64), torch.ones(10, 2, dtype=torch.float64)
    curve = generator_cost_curve(f, x0, z, [0.1, 1.0, 10.0])
    assert calls == [30] and [c.value for c in curve] == [2.0, 2.0, 2.0]
    assert math.isnan(minibatch_ot_cost(x0, z, 10).stderr)
