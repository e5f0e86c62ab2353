"""EDM's denoising loss: weighting × preconditioning gives unit-variance targets (Karras et al. 2022, App. B.6)."""

import math

import pytest
import torch
from torch import nn

from gcflow.networks.mlp import ToyMLP
from gcflow.precond import edm_scalings
from gcflow.teacher.edm_loss import (
    EDM_P_MEAN,
    EDM_P_STD,
    Denoiser,
    edm_loss,
    edm_sample_sigmas,
    edm_weight,
    effective_target,
)

SIGMA_DATA = 0.5


class Constant(nn.Module):
    """A raw network that outputs a fixed tensor (or zeros), ignoring its inputs."""

    def __init__(self, value: torch.Tensor | None = None) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, c_noise, class_labels=None):
        return torch.zeros_like(x) if self.value is None else self.value.to(x.dtype)


@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.5, 2.0, 80.0])
def test_weight_times_cout_squared_is_one(sigma):
    s = torch.tensor([sigma], dtype=torch.float64)
    c_out = edm_scalings(s, SIGMA_DATA).c_out
    assert torch.allclose(edm_weight(s, SIGMA_DATA) * c_out**2, torch.ones(1, dtype=torch.float64), rtol=1e-12)


@pytest.mark.parametrize("sigma", [0.01, 0.2, 1.0, 10.0, 80.0])
def test_effective_target_has_unit_variance_on_gaussian_data(sigma, gen):
    n, d = 20000, 16
    x0 = SIGMA_DATA * torch.randn(n, d, dtype=torch.float64, generator=gen)
    z = torch.randn(n, d, dtype=torch.float64, generator=gen)
    s = torch.full((n,), sigma, dtype=torch.float64)
    target = effective_target(x0, x0 + sigma * z, s, SIGMA_DATA)
    assert abs(target.mean().item()) < 0.02
    assert target.var().item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("sigma", [0.05, 1.0, 30.0])
def test_loss_at_init_equals_unit_variance_regression(sigma, gen):
    """With F = any zero-mean unit-variance output independent of the target, E loss / d = 1 + 1 = 2;
    with F ≡ 0 it is exactly the target's second moment, ≈ 1 (the loss is O(1) at every σ)."""
    n, d = 20000, 8
    x0 = SIGMA_DATA * torch.randn(n, d, dtype=torch.float64, generator=gen)
    z = torch.randn(n, d, dtype=torch.float64, generator=gen)
    s = torch.full((n,), sigma, dtype=torch.float64)
    zero = Denoiser(Constant(), SIGMA_DATA)
    assert (edm_loss(zero, x0, s, z).mean() / d).item() == pytest.approx(1.0, abs=0.03)
    noise_out = torch.randn(n, d, dtype=torch.float64, generator=gen)
    rand = Denoiser(Constant(noise_out), SIGMA_DATA)
    assert (edm_loss(rand, x0, s, z).mean() / d).item() == pytest.approx(2.0, abs=0.05)


def test_loss_equals_weighted_raw_regression(gen):
    """λ‖D − x⋆‖² = λ c_out² ‖F − target‖² = ‖F − target‖², sample by sample."""
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=gen) * SIGMA_DATA
    z = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    s = torch.exp(torch.randn(6, dtype=torch.float64, generator=gen))
    f = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    loss = edm_loss(Denoiser(Constant(f), SIGMA_DATA), x0, s, z)
    direct = (f - effective_target(x0, x0 + s[:, None] * z, s, SIGMA_DATA)).pow(2).sum(1)
    assert torch.allclose(loss, direct, rtol=1e-10)


def test_denoiser_matches_edm_formula_and_backpropagates(gen):
    torch.manual_seed(0)
    net = ToyMLP(2, width=16, depth=1, emb_dim=8)
    den = Denoiser(net, SIGMA_DATA)
    x = torch.randn(5, 2, generator=gen)
    s = torch.tensor([0.01, 0.1, 1.0, 5.0, 80.0])
    out = den(x, s)
    sc = edm_scalings(s, SIGMA_DATA)
    raw = net(sc.c_in[:, None] * x, sc.c_noise, None)
    assert torch.allclose(out, sc.c_skip[:, None] * x + sc.c_out[:, None] * raw, atol=1e-6)
    edm_loss(den, x, s, torch.randn(5, 2, generator=gen)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_sigma_sampling_is_lognormal(gen):
    s = edm_sample_sigmas(200000, gen, dtype=torch.float64)
    logs = torch.log(s)
    assert logs.mean().item() == pytest.approx(EDM_P_MEAN, abs=0.01)
    assert logs.std().item() == pytest.approx(EDM_P_STD, abs=0.01)
    assert math.isclose(EDM_P_MEAN, -1.2) and math.isclose(EDM_P_STD, 1.2)
