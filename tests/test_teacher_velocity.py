"""A teacher denoiser's velocity (x − D(x, σ))/σ: with the exact denoiser of a toy it is the true velocity,
and CD pairs built from it equal oracle CD pairs."""

import pytest
import torch

from gcflow.pairs.cd import cd_pairs
from gcflow.teacher.velocity import denoiser_velocity
from gcflow.toy.mixture import GaussianMixture, ring, single_gaussian


@pytest.mark.parametrize("toy", [ring(8, 1.0, 0.05), single_gaussian(3, 0.2, 0.5)])
def test_velocity_of_exact_denoiser_is_exact_velocity(toy, gen):
    x0 = toy.sample(64, gen)
    sigma = torch.exp(torch.randn(64, dtype=torch.float64, generator=gen))
    x = x0 + sigma[:, None] * torch.randn(x0.shape, dtype=torch.float64, generator=gen)
    v = denoiser_velocity(toy.denoise)(x, sigma)
    assert torch.allclose(v, toy.velocity(x, sigma), rtol=1e-12, atol=1e-12)


def test_gaussian_velocity_closed_form(gen):
    """For x⋆ ~ N(m, s²I): D⋆ = (s² x + σ² m)/(s² + σ²), so v = σ (x − m)/(s² + σ²)."""
    toy = single_gaussian(2, 0.3, 0.5)
    x = torch.randn(10, 2, dtype=torch.float64, generator=gen) * 3
    sigma = torch.linspace(0.1, 5.0, 10, dtype=torch.float64)
    expected = sigma[:, None] * (x - 0.3) / (0.25 + sigma[:, None] ** 2)
    assert torch.allclose(denoiser_velocity(toy.denoise)(x, sigma), expected, rtol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_cd_pairs_from_teacher_equal_oracle_pairs(solver, gen):
    toy = ring(8, 1.0, 0.05)
    n = 32
    x0 = toy.sample(n, gen)
    z = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    sigma_i = torch.exp(torch.randn(n, dtype=torch.float64, generator=gen))
    sigma_next = sigma_i * 1.3
    w = 1.0 / (sigma_next - sigma_i)
    teacher = cd_pairs(x0, z, sigma_i, sigma_next, w, denoiser_velocity(toy.denoise), solver)
    oracle = cd_pairs(x0, z, sigma_i, sigma_next, w, toy.velocity, solver)
    assert torch.allclose(teacher.x_i, oracle.x_i, rtol=1e-12, atol=1e-12)
    assert torch.equal(teacher.x_next, oracle.x_next)
    # The pair is a real ODE step: it moves x_next towards the data, not by σ·z.
    assert not torch.allclose(teacher.x_i, x0 + sigma_i[:, None] * z)


def test_velocity_on_images_and_float32_denoiser(gen):
    """Image-shaped inputs and a float32 network: shapes are kept and σ broadcasts per sample."""
    data = torch.rand(5, 1, 4, 4, dtype=torch.float64, generator=gen) * 2 - 1
    toy = GaussianMixture.empirical(data)
    x = data + 0.7 * torch.randn(data.shape, dtype=torch.float64, generator=gen)
    sigma = torch.full((5,), 0.7, dtype=torch.float64)
    v = denoiser_velocity(lambda a, s: toy.denoise(a, s).float())(x.float(), sigma.float())
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.allclose(v.double(), toy.velocity(x, sigma), atol=1e-5)


def test_velocity_rejects_sigma_zero():
    toy = single_gaussian(2)
    with pytest.raises(ValueError, match="sigma > 0"):
        denoiser_velocity(toy.denoise)(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]))
