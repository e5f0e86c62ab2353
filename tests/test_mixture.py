import math

import pytest
import torch

from gcflow.pairs.cd import cd_pairs
from gcflow.toy.mixture import GaussianMixture, make_toy, single_gaussian, two_modes


def test_denoiser_matches_monte_carlo(gen):
    mix = make_toy("ring8")
    x = torch.tensor([[0.3, -0.2], [1.2, 0.1], [-0.4, 0.9]], dtype=torch.float64)
    for sigma in (0.1, 0.5, 2.0):
        # Self-normalised importance estimate of E[x⋆ | x_σ = x] with x⋆ ~ p_data.
        xs = mix.sample(400_000, gen)
        logw = -((x[:, None, :] - xs[None]) ** 2).sum(-1) / (2 * sigma**2)
        w = torch.softmax(logw, dim=1)
        mc = w @ xs
        exact = mix.denoise(x, torch.full((3,), sigma, dtype=torch.float64))
        assert torch.allclose(exact, mc, atol=0.01), (sigma, exact, mc)


def test_single_gaussian_closed_form():
    m, s = 0.3, 0.5
    g = single_gaussian(3, m, s)
    x = torch.randn(7, 3, dtype=torch.float64)
    sig = torch.rand(7, dtype=torch.float64) + 0.1
    expected = m + (s**2 / (s**2 + sig**2))[:, None] * (x - m)
    assert torch.allclose(g.denoise(x, sig), expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(g.velocity(x, sig), (x - expected) / sig[:, None], rtol=1e-12)


def test_general_diagonal_matches_isotropic_path():
    torch.manual_seed(0)
    means = torch.randn(4, 3)
    iso = GaussianMixture.create(means, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    # Same mixture, forced down the non-isotropic branch by a tiny per-dimension perturbation.
    stds = torch.tensor([0.1, 0.2, 0.3, 0.4])[:, None].expand(4, 3).clone()
    stds[:, 0] += 1e-12
    diag = GaussianMixture.create(means, stds)
    x = torch.randn(9, 3, dtype=torch.float64)
    s = torch.rand(9, dtype=torch.float64) + 0.05
    assert torch.allclose(iso.denoise(x, s), diag.denoise(x, s), atol=1e-9)


def test_empirical_distribution_denoiser_is_softmax_average():
    pts = torch.randn(50, 4, dtype=torch.float64)
    g = GaussianMixture.empirical(pts)
    x = torch.randn(6, 4, dtype=torch.float64)
    sigma = 0.7
    w = torch.softmax(-((x[:, None] - pts[None]) ** 2).sum(-1) / (2 * sigma**2), dim=1)
    assert torch.allclose(g.denoise(x, torch.tensor(sigma)), w @ pts, atol=1e-12)


def test_presets_and_sampling(gen):
    g = two_modes()
    x = g.sample(10_000, gen)
    assert x.shape == (10_000, 2)
    assert abs(x[:, 0].std().item() - 0.01) < 1e-3
    assert set(torch.sign(x[:, 1]).tolist()) == {-1.0, 1.0}
    with pytest.raises(KeyError, match="unknown toy"):
        make_toy("moons")
    assert make_toy("grid25").num_components == 25


def test_euler_cd_step_matches_ode_solution_to_first_order(gen):
    # Single Gaussian N(m, s²): trajectories keep (x − m)/sqrt(s² + σ²) constant.
    m, s = 0.2, 0.5
    g = single_gaussian(2, m, s)
    x0 = g.sample(64, gen)
    z = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    errors = []
    for ds in (0.1, 0.05, 0.025):
        hi = torch.full((64,), 1.0, dtype=torch.float64)
        lo = hi - ds
        p = cd_pairs(x0, z, lo, hi, torch.ones(64, dtype=torch.float64), g.velocity)
        exact = m + torch.sqrt((s**2 + lo**2) / (s**2 + hi**2))[:, None] * (p.x_next - m)
        errors.append((p.x_i - exact).abs().max().item())
    # Local error O(Δσ²): halving the step divides the error by ≈ 4.
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5
    assert errors[-1] < 1e-3
    # Heun is second order: local error O(Δσ³).
    hi = torch.full((64,), 1.0, dtype=torch.float64)
    ph = cd_pairs(x0, z, hi - 0.025, hi, torch.ones(64, dtype=torch.float64), g.velocity, solver="heun")
    exact = m + math.sqrt((s**2 + 0.975**2) / (s**2 + 1.0)) * (ph.x_next - m)
    assert (ph.x_i - exact).abs().max().item() < errors[-1] / 10


@pytest.mark.parametrize("kind", ["shared", "dirac", "per-component", "diagonal"])
def test_every_denoiser_branch_matches_the_posterior_formula(kind):
    """The shortcut branches (shared variance, Dirac, uniform weights) against the textbook posterior mean."""
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    stds = {
        "shared": torch.tensor(0.2, dtype=torch.float64),
        "dirac": torch.tensor(0.0, dtype=torch.float64),
        "per-component": torch.rand(6, generator=gen, dtype=torch.float64),
        "diagonal": torch.rand(6, 3, generator=gen, dtype=torch.float64),
    }[kind]
    for w in (None, torch.rand(6, generator=gen, dtype=torch.float64)):
        mix = GaussianMixture.create(means, stds, None if w is None else w / w.sum())
        x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
        sig = torch.rand(40, generator=gen, dtype=torch.float64) + 0.05
        v = mix.stds[None] ** 2 + sig[:, None, None] ** 2  # (B, K, d)
        log_joint = torch.log(mix.weights)[None] + torch.distributions.Normal(mix.means[None], v.sqrt()).log_prob(
            x[:, None]
        ).sum(-1)
        r = torch.softmax(log_joint, dim=1)[:, :, None]
        expected = (r * (mix.means[None] * sig[:, None, None] ** 2 + x[:, None] * mix.stds[None] ** 2) / v).sum(1)
        assert torch.allclose(mix.denoise(x, sig), expected, rtol=1e-10, atol=1e-12)
        assert torch.allclose(mix.responsibilities(x, sig), r[:, :, 0], rtol=1e-10, atol=1e-12)
