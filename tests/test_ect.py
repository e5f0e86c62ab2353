"""ECT's continuous-time setting: r(t) golden values, stage schedule, weighting, pairs and targets."""

import math

import pytest
import torch

from gcflow.teacher.ect import (
    ECT_CIFAR10,
    ECT_CIFAR10_1HOUR,
    ect_distance,
    ect_pairs,
    ect_r,
    ect_sample_t,
    ect_stage,
    ect_targets,
    ect_weight,
    iterations_per_stage,
    mapping_factor,
)

# Golden r(t) by hand: r = max(0, t (1 − n(t)/q^(stage+1))), n(t) = 1 + 8/(1 + e^t) (k = 8, b = 1).
#   t = 1:   n = 1 + 8/3.7182818 = 3.1515314 -> stage 0: 1 − 1.5757657 < 0 -> 0; stage 2: 1 − 0.3939414.
#   t = 10:  n = 1 + 8/22027.466 = 1.0003632 -> stage 0: 10 (1 − 0.5001816).
#   t = 80:  n = 1 (to 1e-34)               -> stage 7: 80 (1 − 1/256) = 79.6875.
#   t = 3:   n = 1 + 8/21.085537 = 1.3794021 -> stage 1: 3 (1 − 0.3448505).
#   q = 256, t = 0.5: n = 1 + 8/2.6487213 = 4.0203255 -> 0.5 (1 − 0.0157044).
GOLDEN = [
    (1.0, 0, 2.0, 0.0),
    (1.0, 2, 2.0, 0.6060586),
    (10.0, 0, 2.0, 4.9981841),
    (80.0, 7, 2.0, 79.6875),
    (3.0, 1, 2.0, 1.9654448),
    (0.5, 0, 256.0, 0.4921478),
]


@pytest.mark.parametrize("t, stage, q, expected", GOLDEN)
def test_r_golden_values(t, stage, q, expected):
    r = ect_r(torch.tensor([t], dtype=torch.float64), stage, q=q)
    assert r.item() == pytest.approx(expected, abs=1e-6)


def test_const_mapping_golden():
    r = ect_r(torch.tensor([2.0, 8.0], dtype=torch.float64), 1, q=2.0, mapping="const")
    assert torch.allclose(r, torch.tensor([1.5, 6.0], dtype=torch.float64))


def test_mapping_factor_limits():
    t = torch.tensor([0.0, 50.0], dtype=torch.float64)
    assert torch.allclose(mapping_factor(t), torch.tensor([5.0, 1.0], dtype=torch.float64))  # 1 + 8·½, 1 + 8·0
    with pytest.raises(ValueError, match="unknown ECT mapping"):
        mapping_factor(t, mapping="cosine")


def test_dt_shrinks_by_q_per_stage_and_r_stays_below_t():
    t = torch.logspace(-3, math.log10(80.0), 200, dtype=torch.float64)
    prev_r = None
    for stage in range(8):
        r = ect_r(t, stage)
        assert (r >= 0).all() and (r < t).all()
        if prev_r is not None:
            live = prev_r > 0  # away from the clamp, Δt = t n(t)/q^(stage+1) exactly halves
            assert live.sum() > 50
            assert torch.allclose((t - prev_r)[live] / (t - r)[live], torch.full_like(t[live], 2.0))
        prev_r = r


def test_stage_schedule():
    assert [ect_stage(s, 25_000) for s in (0, 24_999, 25_000, 199_999)] == [0, 0, 1, 7]
    assert iterations_per_stage(200_000, 8) == 25_000 == ECT_CIFAR10.iterations_per_stage
    assert ECT_CIFAR10.iterations // ECT_CIFAR10.iterations_per_stage == 8
    assert ect_stage(199_999, ECT_CIFAR10_1HOUR.iterations_per_stage) == 0
    with pytest.raises(ValueError):
        ect_stage(3, 0)


def test_cifar10_settings_are_the_released_ones():
    c = ECT_CIFAR10
    assert (c.p_mean, c.p_std, c.q, c.k, c.b, c.c) == (-1.1, 2.0, 2.0, 8.0, 1.0, 0.0)
    assert (c.batch, c.lr, c.dropout, c.ema_beta, c.two_step_sigma) == (128, 1e-4, 0.2, 0.9999, 0.821)
    # 25.6 Mimg at batch 128.
    assert c.iterations * c.batch == 25_600_000


def test_t_sampling_is_lognormal(gen):
    t = ect_sample_t(200_000, gen, dtype=torch.float64)
    assert torch.log(t).mean().item() == pytest.approx(-1.1, abs=0.02)
    assert torch.log(t).std().item() == pytest.approx(2.0, abs=0.02)


def test_weight_distance_and_pairs(gen):
    x0 = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    z = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    r = ect_r(t, 0)
    p = ect_pairs(x0, z, t, r)
    assert torch.allclose(p.x_next, x0 + t[:, None] * z) and torch.allclose(p.x_i, x0 + r[:, None] * z)
    assert torch.allclose(p.weight, 1.0 / (t - r)) and torch.equal(ect_weight(t, r), p.weight)
    assert not p.is_gc.any() and torch.equal(p.endpoint, x0)
    a, b = torch.randn(4, 3, 2, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen)
    assert torch.allclose(ect_distance(a, b), (a - b).flatten(1).norm(dim=1), atol=1e-6)
    assert torch.allclose(ect_distance(a, b, 0.1), ((a - b).flatten(1).pow(2).sum(1) + 0.01).sqrt() - 0.1, atol=1e-6)


def test_targets_use_endpoint_where_r_is_zero(gen):
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=gen)
    z = torch.randn(4, 2, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.5, 1.0, 10.0, 80.0], dtype=torch.float64)
    p = ect_pairs(x0, z, t, ect_r(t, 0))  # r = 0 for t = 0.5 and 1
    seen = []

    def model(x, s):
        seen.append(s.clone())
        assert (s > 0).all()
        return 2.0 * x

    out = ect_targets(model, p)
    assert torch.equal(out[:2], x0[:2])
    assert torch.allclose(out[2:], 2.0 * p.x_i[2:])
    assert len(seen) == 1
    # With σ_min = 5, the t = 10 pair (r ≈ 4.998) is treated as a boundary pair too.
    assert torch.equal(ect_targets(model, p, sigma_min=5.0)[2], x0[2])
