"""Issue 11, item 5: a paper preset shrunk to CPU size keeps training what the released code trained.

The cifar10-gc preset (warm-up EMA, Lion, μ = 0.5, pseudo-Huber, positional embedding) with a tiny
SongUNet, batch 8 and 8×8 random images runs 20 steps of gcflow's own training step (`TrainStep`,
as the bundled trainer runs it) in float64, selected for this test with torch's default dtype (no
hook in gcflow). Two checks:

* golden: the 20 losses, the GC masks and a checksum of the EMA weights are pinned (recorded from
  this test's first run; any change to level draws, curriculum, pairs, loss, Lion, the EMA schedule
  or the μ draw moves them far beyond the tolerance);
* parity: tests/parity_reference.py, an independent float64 re-statement of the released loop
  written from the method spec, fed the same draws and initial weights, reproduces them.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from parity_reference import Draws, RefConfig, ReferenceLoop

from gcflow.ema import make_ema
from gcflow.training.builders import build_model, build_optimizer
from gcflow.training.config import apply_overrides
from gcflow.training.predictor import build_gc_predictor
from gcflow.training.presets import load_preset
from gcflow.training.step import TrainStep, draw_inputs

SHRINK = [
    "network.channels=8",
    "network.channel_mult=1,2",
    "network.num_blocks=1",
    "network.attn_resolutions=none",
    "train.batch_size=8",
    "train.steps=20",
    "train.channels_last=false",
    "train.seed=5",
]
SHAPE = (3, 8, 8)

# Recorded from this test's first run (float64); see the module docstring.
GOLDEN_LOSSES = [
    8.348482240767463,
    9.158742204326694,
    6.923018805172016,
    12.824101526705263,
    6.734296607549781,
    6.424473048183856,
    10.22583570542141,
    3.165879008957314,
    7.105068972073037,
    5.766487101992388,
    6.126361236064008,
    6.0596989792492995,
    6.541167500169926,
    6.90876867968775,
    2.9336850903749325,
    5.007569123938557,
    2.220502353219418,
    5.083207672262142,
    4.672900788287681,
    3.476797135216372,
]
GOLDEN_GC_ROWS = [
    112,
    76,
    127,
    90,
    124,
    44,
    135,
    161,
    130,
    161,
    55,
    185,
    168,
    20,
    38,
    67,
    24,
    225,
    198,
    92,
]  # per step, the GC mask as an 8-bit integer (bit i = row i)
GOLDEN_EMA_CHECKSUM = 1356.8860480284216  # `_checksum` of the EMA after step 20


class _RandomImages:
    """A data source of 64 fixed random images in [-1, 1]: batch(step) draws rows from (seed, step)."""

    num_classes = 0
    shape = SHAPE

    def __init__(self) -> None:
        self.images = torch.rand((64, *SHAPE), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1

    def batch(self, step: int) -> tuple[torch.Tensor, None]:
        rows = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(1000 + step))
        return self.images[rows], None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@contextlib.contextmanager
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _compared(module: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters, with the attention key biases left out.

    The loss does not depend on the key bias (softmax is invariant to a constant added to a row of
    logits), so its gradient is 0 in exact arithmetic and rounding noise (~1e-20) in practice; Lion
    applies the sign of that noise, which no two implementations share. Channels C..2C of qkv.bias.
    """
    out = []
    for name, p in module.named_parameters():
        p = p.detach().reshape(-1)
        if name.endswith("qkv.bias"):
            c = p.numel() // 3
            p = torch.cat([p[:c], p[2 * c :]])
        out.append(p)
    return out


def _checksum(module: torch.nn.Module) -> float:
    """Σ_j (j mod 7 + 1)·p_j over the compared parameters, flattened in order."""
    flat = torch.cat(_compared(module)).double()
    return float((flat * (torch.arange(flat.numel()) % 7 + 1)).sum())


def _gcflow_run():
    """20 float64 steps of TrainStep on the shrunk preset: (losses, GC rows, EMA, initial raw net, inputs)."""
    cfg = apply_overrides(load_preset("cifar10-gc"), SHRINK)
    source, dev = _RandomImages(), torch.device("cpu")
    with _float64():
        torch.manual_seed(0)
        model = build_model(cfg, SHAPE)
        initial = copy.deepcopy(model.net)  # the raw network F with its initial weights
        ema, opt = make_ema(model), build_optimizer(model, cfg)
        step = TrainStep(
            cfg,
            source,
            model,
            ema,
            opt,
            device=dev,
            decay=cfg.optim.ema_decay,
            predictor=build_gc_predictor(cfg, model, ema, dev),
        )
        losses, masks, inputs = [], [], []
        for k in range(cfg.train.steps):
            inp = draw_inputs(cfg, source, k, dev)
            loss, _ = step.forward_backward(k)
            step.update()
            losses.append(float(loss))
            masks.append(int(sum(int(b) << i for i, b in enumerate(inp.gc_mask.tolist()))))
            inputs.append(inp)
    return cfg, losses, masks, ema, initial, inputs


@pytest.fixture(scope="module")
def run():
    return _gcflow_run()


def test_trainer_step_runs_in_float64(run):
    _, losses, _, ema, _, inputs = run
    assert all(p.dtype == torch.float64 for p in ema.parameters()) and inputs[0].z.dtype == torch.float64
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))


def test_golden_losses_masks_and_ema(run):
    _, losses, masks, ema, _, _ = run
    assert losses == pytest.approx(GOLDEN_LOSSES, rel=1e-9)
    assert masks == GOLDEN_GC_ROWS
    assert _checksum(ema) == pytest.approx(GOLDEN_EMA_CHECKSUM, rel=1e-9)


def test_reference_loop_reproduces_the_trainer(run):
    cfg, losses, _, ema, initial, inputs = run
    m, o = cfg.method, cfg.optim
    ref_cfg = RefConfig(
        steps=cfg.train.steps,
        s0=m.s0,
        s1=m.s1,
        mu=m.gc_mu,
        lr=o.lr,
        beta1=o.betas[0],
        beta2=o.betas[1],
        ema_beta=o.ema_decay,
        ema_update_every=o.ema_update_every,
        ema_start=o.ema_start,
    )
    with _float64():
        loop = ReferenceLoop(initial, ref_cfg)
        from parity_reference import grid, num_scales

        for k, inp in enumerate(inputs):
            sig = grid(num_scales(k, ref_cfg), ref_cfg)
            # The trainer's levels are float32 (as the released code's grid): match them to the grid's indices.
            idx = torch.argmin((sig[None, :-1] - inp.sigma_i.double()[:, None]).abs(), dim=1)
            assert torch.allclose(sig[idx], inp.sigma_i.double(), rtol=1e-6, atol=0)
            assert torch.allclose(sig[idx + 1], inp.sigma_next.double(), rtol=1e-6, atol=0)
            loss = loop.step(k, Draws(inp.x0, inp.z, idx, inp.gc_mask, inp.sigma_i, inp.sigma_next, inp.weight))
            assert loss == pytest.approx(losses[k], rel=1e-9, abs=1e-12), k
    assert _checksum(loop.ema) == pytest.approx(_checksum(ema), rel=1e-9)
    for p, q in zip(_compared(ema.net), _compared(loop.ema)):
        assert torch.allclose(p, q, rtol=0, atol=1e-10)
