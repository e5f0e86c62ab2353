"""The theory code reuses the library's formulas and seeding, with the numbers they had before."""

import math

import torch

from gcflow.distances import l2_norm, squared_l2
from gcflow.randomness import experiment_generator
from gcflow.theory.discrepancy import NoiseLevelDenoiser, gaussian_gc_discrepancy
from gcflow.theory.exact_map import gaussian_consistency_map, gaussian_map_scale
from gcflow.theory.theorem1 import CommonSamples, Grid, TheoremDistance, _per_sample_losses, unit_weighting
from gcflow.theory.transport import gaussian_costs


def test_experiment_generator_is_the_published_seed_scheme():
    # The published theory numbers were drawn from torch.Generator().manual_seed(seed * 1_000_003 + part).
    a = torch.randn(5, generator=experiment_generator(3, 7))
    b = torch.randn(5, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.randn(5, generator=experiment_generator(3, 8)))


def test_gaussian_map_scale_float_and_tensor_agree_and_define_the_map():
    sig = torch.tensor([0.002, 0.3, 5.0, 80.0], dtype=torch.float64)
    scales = gaussian_map_scale(sig, 0.5)
    floats = torch.tensor([gaussian_map_scale(float(s), 0.5) for s in sig], dtype=torch.float64)
    assert torch.allclose(scales, floats, rtol=1e-15, atol=0)  # equal up to the last bit (tensor vs scalar pow)
    assert gaussian_map_scale(0.002, 0.5) == 1.0  # f⋆(x, σ_min) = x
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(gaussian_consistency_map(x, sig, 0.0, 0.5), scales[:, None] * x, rtol=0, atol=0)
    # The closed forms built on it: GC transport at σ = 1 for N(0, 0.5² I) in 2-D.
    c = math.sqrt((0.25 + 0.002**2) / 1.25)
    assert gaussian_costs(1.0, 0.5, 2)["gc"] == 2 * (c**2 * 0.25 + (c - 1.0) ** 2)
    assert gaussian_gc_discrepancy(1.0, 0.5, 2) == 2 * c**2 * 0.25 / (c**2 * 0.25 + (1 + c) ** 2)


def test_noise_level_denoiser_uses_edm_scalings():
    torch.manual_seed(0)
    den = NoiseLevelDenoiser(2, width=8, depth=1)
    x, sigma = torch.randn(6, 2), torch.tensor([0.01, 0.1, 0.5, 1.0, 10.0, 80.0])
    sd = den.sigma_data
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    c_in = 1 / torch.sqrt(sigma**2 + sd**2)
    expected = c_skip[:, None] * x + c_out[:, None] * den.net(c_in[:, None] * x, torch.log(sigma) / 4)
    assert torch.allclose(den(x, sigma), expected, atol=1e-6)


def test_theorem1_losses_are_the_library_pairs_and_loss():
    # CT: both points on x⋆ + t z; CD: one Euler step of the velocity from t_{i+1} to t_i.
    g = torch.Generator().manual_seed(0)
    s = CommonSamples.draw(lambda n, gen: torch.randn(n, 2, generator=gen, dtype=torch.float64), 64, 2, g)
    grid = Grid(0.002, 2.0)

    def f(x, t):
        return x * torch.tanh(t)[:, None]

    def v(x, t):
        return x / (1.0 + t[:, None])

    for dist in (TheoremDistance("l2", squared_l2, 1.0, 2.0), TheoremDistance("l2_norm", l2_norm, 1.0, 1.0)):
        ct, cd = _per_sample_losses(f, v, s, grid, 10, dist, unit_weighting)
        t_i, t_n = grid.interval(s.u, 10)
        x_n = s.x0 + t_n[:, None] * s.z
        x_cd = x_n - (t_n - t_i)[:, None] * v(x_n, t_n)
        assert torch.equal(ct, dist.fn(f(x_n, t_n), f(s.x0 + t_i[:, None] * s.z, t_i)))
        assert torch.equal(cd, dist.fn(f(x_n, t_n), f(x_cd, t_i)))
