import itertools

import pytest
import torch

from gcflow.pairs import (
    PairRecipe,
    build_pairs,
    ct_pairs,
    generator_augment,
    get_coupling,
    minibatch_ot_coupling,
    select_gc,
)
from gcflow.pairs.coupling import ot_assignment
from gcflow.sigmas import sample_noise_levels


def _inputs(gen, b=16, shape=(2,)):
    x0 = torch.randn(b, *shape, generator=gen, dtype=torch.float64)
    z = torch.randn(b, *shape, generator=gen, dtype=torch.float64)
    lo, hi, w = sample_noise_levels(10, b, generator=gen)
    return x0, z, lo.double(), hi.double(), w.double()


@pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
def test_mu_zero_is_exactly_the_ct_pair(gen, shape):
    x0, z, lo, hi, w = _inputs(gen, shape=shape)
    calls = []
    p = build_pairs(PairRecipe(), x0, z, lo, hi, w, gc_mask=None, predictor=lambda x, s: calls.append(1) or x)
    ref = ct_pairs(x0, z, lo, hi, w)
    assert not calls
    assert torch.equal(p.x_i, ref.x_i) and torch.equal(p.x_next, ref.x_next)
    assert torch.equal(p.x_i, x0 + lo.view(-1, *[1] * len(shape)) * z)
    assert not bool(p.is_gc.any())


def test_mu_one_replaces_every_data_point(gen):
    x0, z, lo, hi, w = _inputs(gen)

    def predictor(x, s):
        return 2.0 * x + s[:, None]  # any deterministic function of (x_σ, σ)

    p = build_pairs(PairRecipe(), x0, z, lo, hi, w, gc_mask=select_gc(16, 1.0, gen), predictor=predictor)
    x_hat = 2.0 * (x0 + lo[:, None] * z) + lo[:, None]
    assert bool(p.is_gc.all())
    assert torch.equal(p.endpoint, x_hat)
    # Same z for both points, re-noising the prediction.
    assert torch.equal(p.x_i, x_hat + lo[:, None] * z)
    assert torch.equal(p.x_next, x_hat + hi[:, None] * z)
    assert torch.equal(p.noise, z)


def test_predictor_sees_only_selected_samples(gen):
    x0, z, lo, hi, w = _inputs(gen, b=64)
    seen = []

    def predictor(x, s):
        seen.append(x.shape[0])
        return torch.zeros_like(x)

    mask = select_gc(64, 0.5, gen)
    p = build_pairs(PairRecipe(), x0, z, lo, hi, w, gc_mask=mask, predictor=predictor)
    assert seen == [int(mask.sum())]
    assert 0 < seen[0] < 64
    assert torch.equal(p.endpoint[~mask], x0[~mask])
    assert torch.equal(p.endpoint[mask], torch.zeros_like(x0[mask]))
    assert torch.equal(p.is_gc, mask)


def test_gc_selection_rate(gen):
    m = select_gc(100_000, 0.3, gen)
    assert abs(m.float().mean().item() - 0.3) < 0.01
    with pytest.raises(ValueError):
        select_gc(4, 1.5, gen)


def test_no_gradient_into_predictor_or_target(gen):
    lin = torch.nn.Linear(2, 2)
    x0, z, lo, hi, w = _inputs(gen)
    x0, z, lo, hi, w = (t.float() for t in (x0, z, lo, hi, w))
    x0.requires_grad_(True)
    mask = torch.ones(16, dtype=torch.bool)
    out = generator_augment(x0, z, lo, lambda x, s: lin(x), mask)
    assert not out.requires_grad
    from gcflow.distances import squared_l2
    from gcflow.loss import consistency_loss

    p = ct_pairs(out, z, lo, hi, w)
    model = torch.nn.Linear(2, 2)
    calls = []

    def f(x, s):
        y = model(x)
        calls.append(y.requires_grad)
        return y

    loss = consistency_loss(f, p, squared_l2).mean()
    loss.backward()
    assert calls == [False, True]  # the target pass is under no_grad
    assert lin.weight.grad is None and model.weight.grad is not None


def test_ot_coupling_matches_brute_force(gen):
    for b in (3, 5, 6):
        x0 = torch.randn(b, 3, generator=gen)
        z = torch.randn(b, 3, generator=gen)
        perm = ot_assignment(x0, z)
        assert sorted(perm.tolist()) == list(range(b))
        # x0 and z are bound now (default arguments), not looked up in the loop when cost is called.
        cost = lambda pi, x0=x0, z=z: float(((x0 - z[list(pi)]) ** 2).sum())
        best = min(cost(pi) for pi in itertools.permutations(range(b)))
        assert cost(perm.tolist()) == pytest.approx(best, rel=1e-6)
        assert torch.equal(minibatch_ot_coupling(x0, z), z[perm])


def test_ot_lowers_transport_cost(gen):
    x0 = torch.randn(256, 2, generator=gen) * 0.3 + 1.0
    z = torch.randn(256, 2, generator=gen)
    assert ((x0 - minibatch_ot_coupling(x0, z)) ** 2).sum() < ((x0 - z) ** 2).sum()


def test_recipe_validation(gen):
    x0, z, lo, hi, w = _inputs(gen)
    with pytest.raises(ValueError, match="need CT pairs"):
        build_pairs(PairRecipe(kind="cd"), x0, z, lo, hi, w, gc_mask=select_gc(16, 0.5, gen), velocity=lambda x, s: x)
    with pytest.raises(ValueError, match="need a predictor"):
        build_pairs(PairRecipe(), x0, z, lo, hi, w, gc_mask=select_gc(16, 0.5, gen))
    with pytest.raises(ValueError):
        select_gc(16, -0.1, gen)
    with pytest.raises(ValueError):
        PairRecipe(kind="ddpm")
    with pytest.raises(KeyError):
        get_coupling("sinkhorn")
