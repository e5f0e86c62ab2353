import math

import pytest
import torch

from gcflow.sigmas import (
    ict_num_scales,
    karras_sigmas,
    level_weights,
    lognormal_level_probs,
    sample_level_indices,
    sample_noise_levels,
)


@pytest.mark.parametrize("n", [1, 10, 37, 1280])
def test_karras_grid_endpoints_and_monotone(n):
    s = karras_sigmas(n, 0.002, 80.0, 7.0)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[0].item() == 0.002 and s[-1].item() == 80.0
    assert bool((s[1:] > s[:-1]).all())


def test_karras_grid_formula():
    n, rho = 10, 7.0
    s = karras_sigmas(n, 0.002, 80.0, rho)
    i = 4
    expected = (0.002 ** (1 / rho) + i / n * (80.0 ** (1 / rho) - 0.002 ** (1 / rho))) ** rho
    assert s[i].item() == pytest.approx(expected, rel=1e-14)


def test_curriculum_switch_points_K100k():
    K = 100_000
    k_prime = math.floor(K / (math.log2(math.floor(1280 / 10)) + 1))
    assert k_prime == 12_500
    expected = [10, 20, 40, 80, 160, 320, 640, 1280]
    for j, n in enumerate(expected):
        assert ict_num_scales(j * k_prime, K) == n
        if j > 0:
            assert ict_num_scales(j * k_prime - 1, K) == expected[j - 1]
    assert ict_num_scales(K - 1, K) == 1280
    assert ict_num_scales(0, K) == 10


def test_level_probabilities_match_erf_and_sum_to_one():
    s = karras_sigmas(40)
    p = lognormal_level_probs(s, -1.1, 2.0)
    cdf = lambda x: math.erf((math.log(x) - (-1.1)) / (math.sqrt(2) * 2.0))
    raw = torch.tensor([cdf(s[i + 1].item()) - cdf(s[i].item()) for i in range(40)], dtype=torch.float64)
    assert torch.allclose(p, raw / raw.sum(), rtol=1e-12, atol=0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert bool((p > 0).all())


def test_weights_are_inverse_spacing():
    s = karras_sigmas(20)
    w = level_weights(s)
    assert torch.allclose(w * (s[1:] - s[:-1]), torch.ones(20, dtype=torch.float64), rtol=1e-14)


def test_level_sampling_frequencies(gen):
    s = karras_sigmas(10)
    p = lognormal_level_probs(s)
    idx = sample_level_indices(p, 200_000, gen)
    freq = torch.bincount(idx, minlength=10).double() / 200_000
    assert torch.allclose(freq, p, atol=4e-3)


def test_sample_noise_levels_consistent(gen):
    lo, hi, w = sample_noise_levels(10, 512, generator=gen)
    assert lo.shape == hi.shape == w.shape == (512,)
    assert bool((hi > lo).all())
    assert torch.allclose(w, 1.0 / (hi.double() - lo.double()).float(), rtol=1e-5)
