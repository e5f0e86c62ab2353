"""Self-tests of tests/parity_reference.py, the independent float64 re-statement of the released loop.

These tests check that the reference runs, is deterministic, and agrees with the library's parts
composed the same way; tests/test_parity_golden.py runs it against gcflow's training step on a
shrunk paper preset.
"""

import pytest
import torch
from lion_pytorch.foreach import Lion
from parity_reference import Draws, RefConfig, ReferenceLoop, draw, grid, level_probs, num_scales

from gcflow.distances import pseudo_huber
from gcflow.ema import ema_step, make_ema, warmup_ema
from gcflow.loss import consistency_loss
from gcflow.networks.mlp import ToyMLP
from gcflow.pairs.ct import ct_pairs
from gcflow.pairs.gc import generator_augment
from gcflow.precond import ConsistencyModel
from gcflow.sigmas import ict_num_scales, karras_sigmas, level_weights, lognormal_level_probs

CFG = RefConfig(steps=20, s1=160, lr=1e-3, mu=0.5)


def _net(seed=0):
    torch.manual_seed(seed)
    return ToyMLP(2, width=16, depth=1).double()


def _data():
    angles = torch.arange(8, dtype=torch.float64) * (2 * torch.pi / 8)
    return torch.stack([angles.cos(), angles.sin()], 1).repeat(4, 1)


def _run(cfg, steps=20, seed=0):
    loop, gen = ReferenceLoop(_net(seed), cfg), torch.Generator().manual_seed(seed)
    draws = [draw(_data(), k, 32, cfg, gen) for k in range(steps)]
    return loop, draws, [loop.step(k, d) for k, d in enumerate(draws)]


def test_reference_noise_levels_match_the_library():
    for k in (0, 3, 7, 19):
        assert num_scales(k, CFG) == ict_num_scales(k, CFG.steps, CFG.s0, CFG.s1)
    for n in (10, 80, 1280):
        assert torch.allclose(grid(n, CFG), karras_sigmas(n), rtol=1e-13, atol=0)
        probs = lognormal_level_probs(karras_sigmas(n))
        assert torch.allclose(level_probs(grid(n, CFG), CFG), probs, rtol=1e-10, atol=1e-16)


def test_reference_runs_and_is_deterministic():
    loop_a, _, losses_a = _run(CFG)
    loop_b, _, losses_b = _run(CFG)
    assert all(torch.isfinite(torch.tensor(losses_a))) and losses_a == losses_b
    for p, q in zip(loop_a.ema.parameters(), loop_b.ema.parameters()):
        assert torch.equal(p, q)
    # The EMA moved away from the initial weights (copies at steps 1 and 6, averages from 11).
    assert not torch.equal(next(loop_a.ema.parameters()), next(_net().parameters()))


@pytest.mark.parametrize("ema_start", [0, 7])
def test_reference_agrees_with_the_library_parts(ema_start):
    """20 steps of the reference against the same step composed from gcflow's parts, float64."""
    cfg = RefConfig(steps=20, s1=160, lr=1e-3, mu=0.5, ema_start=ema_start)
    loop, draws, losses = _run(cfg)
    model = ConsistencyModel(_net())
    ema, opt = make_ema(model), Lion(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    schedule = warmup_ema(cfg.ema_beta, cfg.ema_update_every, cfg.ema_start)
    for k, d in enumerate(draws):
        sig = karras_sigmas(ict_num_scales(k, cfg.steps, cfg.s0, cfg.s1))
        s_i, s_n, w = sig[d.idx], sig[d.idx + 1], level_weights(sig)[d.idx]
        x0 = generator_augment(d.x0, d.z, s_i, ema, d.gc)
        loss = consistency_loss(model, ct_pairs(x0, d.z, s_i, s_n, w, d.gc), pseudo_huber).mean()
        assert float(loss.detach()) == pytest.approx(losses[k], rel=1e-11, abs=1e-14), k
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_step(ema, model, schedule, k + 1)
    for p, q in zip(ema.net.parameters(), loop.ema.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def test_gc_rows_use_the_ema_prediction():
    loop = ReferenceLoop(_net(), CFG)
    d = draw(_data(), 0, 16, CFG, torch.Generator().manual_seed(3))
    no_gc = Draws(d.x0, d.z, d.idx, torch.zeros_like(d.gc))
    all_gc = Draws(d.x0, d.z, d.idx, torch.ones_like(d.gc))
    # GC rows train on pairs re-noised from the EMA's prediction: a different loss.
    assert float(loop.loss(0, no_gc).detach()) != float(loop.loss(0, all_gc).detach())
    # Only the masked rows change: a mask selecting no row equals plain iCT exactly.
    plain = ReferenceLoop(_net(), RefConfig(steps=20, s1=160, mu=0.0))
    assert float(loop.loss(0, no_gc).detach()) == float(plain.loss(0, no_gc).detach())
