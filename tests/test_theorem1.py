"""Theorem 1 checker: known limits for Gaussian data, R(θ) for affine models, and the scaled gradients."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import quad

from gcflow.networks.mlp import ToyMLP
from gcflow.precond import ConsistencyModel
from gcflow.theory.exact_map import gaussian_consistency_map
from gcflow.theory.theorem1 import (
    CommonSamples,
    Grid,
    check_gradients,
    check_theorem1,
    default_ns,
    limit_terms,
    theorem_distance,
)
from gcflow.toy.mixture import GaussianMixture, make_toy

# torch.func's forward-mode decompositions call the deprecated torch.jit.script internally (torch 2.13).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

S, D, SIGMA_MIN, T_HI = 0.5, 2, 0.002, 2.0


def _gaussian():
    mix = GaussianMixture.create(torch.zeros(1, D), S)
    den = mix.denoise
    return mix, lambda x, t: (x - den(x, t)) / t[:, None]


def _posterior_var(t: float) -> float:
    """E‖z − v_t(x_t)‖² for N(0, s²I): d s²/(s² + t²)."""
    return D * S**2 / (S**2 + t**2)


def test_distance_laws() -> None:
    l2, l1 = theorem_distance("l2", 2), theorem_distance("l1", 2)
    assert (l2.C, l2.alpha) == (1.0, 2.0) and (l1.C, l1.alpha) == (1.0, 1.0)
    ph = theorem_distance("pseudo_huber", 3 * 32 * 32)
    assert ph.alpha == 2.0 and ph.C == pytest.approx(1 / (2 * 0.00054 * math.sqrt(3072)))
    assert theorem_distance("pseudo_huber", 2, huber_c=0.1).C == pytest.approx(5.0)
    with pytest.raises(KeyError):
        theorem_distance("lpips", 2)
    assert default_ns() == [10, 20, 40, 80, 160, 320, 640, 1280]


def test_known_limit_for_the_exact_map_of_a_gaussian(gen: torch.Generator) -> None:
    # f = f⋆ is constant along PF-ODE trajectories, so ∂_CD f = 0 and ∂_CT f = c(t)(z − v):
    # N² L_CT → T ∫ c(t)² d s²/(s²+t²) dt (λ = 1, squared L2), and N² L_CD → 0.
    mix, vel = _gaussian()
    f = lambda x, t: gaussian_consistency_map(x, t, 0.0, S, SIGMA_MIN)  # noqa: E731
    samples = CommonSamples.draw(mix.sample, 20000, D, gen)
    grid = Grid(SIGMA_MIN, T_HI)
    res = check_theorem1(f, vel, samples, grid, theorem_distance("l2", D), [10, 40, 160, 640])
    c2 = lambda t: (S**2 + SIGMA_MIN**2) / (S**2 + t**2)  # noqa: E731
    exact = grid.length * quad(lambda t: c2(t) * _posterior_var(t), SIGMA_MIN, T_HI)[0]
    assert res.limit == pytest.approx(exact, abs=4 * res.limit_stderr)
    assert res.limit_cd == pytest.approx(0.0, abs=1e-12)
    # Convergence of the measured gap to the limit on the same samples, and of N² L_CD to 0.
    assert res.rel_error[-1] < 2e-3 and res.rel_error[-1] < res.rel_error[0] / 20
    assert res.scaled_cd[-1] < res.scaled_cd[0] / 100
    # α = 2: R in difference form and R = ∫ λ E‖J(z − v)‖² coincide here (∂_CD f = 0 exactly).
    assert res.R == pytest.approx(res.R_alpha2, rel=1e-9)


def test_R_for_a_linear_model_and_a_gaussian(gen: torch.Generator) -> None:
    # f(x, σ) = a(σ) x with a(σ) = 1/(1 + σ): J = a I, so R = ∫ a(t)² d s²/(s² + t²) dt for α = 2.
    mix, vel = _gaussian()
    f = lambda x, t: x / (1.0 + t)[:, None]  # noqa: E731
    samples = CommonSamples.draw(mix.sample, 40000, D, gen)
    grid = Grid(SIGMA_MIN, T_HI)
    terms = limit_terms(f, vel, samples, grid, 2.0)
    exact = quad(lambda t: _posterior_var(t) / (1 + t) ** 2, SIGMA_MIN, T_HI)[0]
    r2 = grid.length * terms.gap2.mean().item()
    r2_err = grid.length * terms.gap2.std().item() / math.sqrt(40000)
    assert r2 == pytest.approx(exact, abs=4 * r2_err)
    rdiff = grid.length * (terms.ct - terms.cd).mean().item()
    rdiff_err = grid.length * (terms.ct - terms.cd).std().item() / math.sqrt(40000)
    assert rdiff == pytest.approx(exact, abs=4 * rdiff_err)
    # And the checker converges to it: α = 2 with first-order error, α = 1 likewise.
    for name in ("l2", "l1"):
        res = check_theorem1(f, vel, samples, grid, theorem_distance(name, D), [20, 80, 320, 1280])
        assert res.rel_error[-1] < 5e-3
        assert res.R > 0


def test_pseudo_huber_needs_small_steps(gen: torch.Generator) -> None:
    # φ(r) = sqrt(r² + c²) − c ≈ r²/(2c) only once Δ‖∂f‖ ≪ c: a larger c converges at smaller N.
    mix, vel = _gaussian()
    f = lambda x, t: x / (1.0 + t)[:, None]  # noqa: E731
    samples = CommonSamples.draw(mix.sample, 4000, D, gen)
    grid = Grid(SIGMA_MIN, T_HI)
    small = check_theorem1(f, vel, samples, grid, theorem_distance("pseudo_huber", D), [40, 1280])
    large = check_theorem1(f, vel, samples, grid, theorem_distance("pseudo_huber", D, huber_c=0.3), [40, 1280])
    assert large.rel_error[-1] < 0.01 < small.rel_error[-1]
    assert small.rel_error[-1] < small.rel_error[0]
    l2 = check_theorem1(f, vel, samples, grid, theorem_distance("l2", D), [40])
    assert large.limit * 2 * 0.3 == pytest.approx(l2.limit, rel=1e-9)  # C = 1/(2c) times the L2 limit


def test_scaled_gradients_agree_for_alpha_2_and_differ_for_alpha_1(gen: torch.Generator) -> None:
    torch.manual_seed(0)
    mix = make_toy("two-modes")
    den = mix.denoise
    vel = lambda x, t: (x - den(x, t)) / t[:, None]  # noqa: E731
    model = ConsistencyModel(ToyMLP(2, 16, 1, emb_dim=16), 0.5, SIGMA_MIN).double().eval()
    samples = CommonSamples.draw(mix.sample, 4096, 2, gen)
    grid = Grid(SIGMA_MIN, T_HI)
    l2 = check_gradients(model, vel, samples, grid, [20, 320], theorem_distance("l2", 2), chunks=16)
    l1 = check_gradients(model, vel, samples, grid, [20, 320], theorem_distance("l1", 2), chunks=16)
    assert l2.agree and l2.limit_noise_ratio < 4
    assert not l1.agree and l1.limit_noise_ratio > 4
    assert l1.limit_rel_gap_debiased > 3 * l2.limit_rel_gap_debiased
    # Finite N approaches the limit.
    assert abs(l2.rel_gap[-1] - l2.limit_rel_gap) < abs(l2.rel_gap[0] - l2.limit_rel_gap) + 1e-3
