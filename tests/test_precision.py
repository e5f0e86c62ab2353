import math

import pytest
import torch

from gcflow.distances import pseudo_huber
from gcflow.loss import consistency_loss
from gcflow.networks.mlp import ToyMLP
from gcflow.networks.songunet import SongUNet
from gcflow.pairs.ct import ct_pairs
from gcflow.precision import (
    SIGMA_BANDS,
    LossGrad,
    autocast_context,
    compare,
    draw_probe,
    lion_direction,
    loss_and_grad,
    precision_agrees,
    reset_weights,
)
from gcflow.precond import ConsistencyModel


def _toy(seed: int = 0) -> ConsistencyModel:
    torch.manual_seed(seed)
    return ConsistencyModel(ToyMLP(2, width=32, depth=2))


def _unet(seed: int = 0) -> ConsistencyModel:
    torch.manual_seed(seed)
    net = SongUNet(
        img_resolution=8,
        in_channels=1,
        out_channels=1,
        model_channels=8,
        channel_mult=(1, 2),
        num_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        embedding_type="positional",
        noise_label_scale=1.0,
    )
    return reset_weights(ConsistencyModel(net), seed)


def _x0(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_probe_levels_stay_in_their_band():
    g = torch.Generator().manual_seed(0)
    p = draw_probe(_x0((200, 2)), 80, g, SIGMA_BANDS["1-5"])
    assert bool(((p.sigma_i >= 1.0) & (p.sigma_i < 5.0)).all())
    assert torch.allclose(p.weight, 1.0 / (p.sigma_next - p.sigma_i))
    assert draw_probe(_x0((4, 2)), 10, g, (100.0, 200.0)) is None


def test_loss_and_grad_is_the_training_loss_in_float64():
    model = _toy()
    p = draw_probe(_x0((64, 2)), 40, torch.Generator().manual_seed(1))
    got = loss_and_grad(model, p, "fp64")
    net = model.double()
    loss = consistency_loss(net, ct_pairs(p.x0, p.z, p.sigma_i, p.sigma_next, p.weight), pseudo_huber).mean()
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])
    assert got.loss == pytest.approx(float(loss.detach()), rel=1e-14)
    assert torch.allclose(got.grad, grad, rtol=1e-12, atol=1e-16)


def test_compare_measures():
    ref = LossGrad(2.0, torch.tensor([1.0, -2.0, 3.0, -4.0], dtype=torch.float64))
    run = LossGrad(2.1, torch.tensor([1.0, 2.0, 3.0, -4.0], dtype=torch.float64))
    a = compare(run, ref)
    assert a.loss_rel_err == pytest.approx(0.05)
    assert a.grad_cosine == pytest.approx((1 - 4 + 9 + 16) / 30)
    assert a.sign_agreement == 0.75
    # With momentum, Lion's direction is sign(β1·m + (1 − β1)·g): a large momentum decides every sign.
    m = torch.tensor([10.0, -10.0, 10.0, -10.0], dtype=torch.float64)
    assert compare(run, ref, momentum=m).sign_agreement == 1.0
    assert torch.equal(lion_direction(ref.grad), torch.sign(ref.grad))


def test_fp16_emulation_matches_real_cpu_fp16_autocast():
    model, x = _unet(), _x0((4, 1, 8, 8)).float()
    s = torch.tensor([0.01, 0.5, 3.0, 40.0])
    with torch.no_grad():
        y32 = model(x, s)
        with torch.autocast("cpu", dtype=torch.float16):
            real = model(x, s)
        with autocast_context("fp16"):
            emulated = model(x, s)
        with autocast_context("bf16"):
            bf16 = model(x, s)
    # Same rounding, other accumulation order: per sample, the emulation departs from fp32 by as much
    # as real fp16 autocast does (within 2x), and both far less than bf16 (3 fewer mantissa bits).
    err_real, err_emul, err_bf16 = ((y - y32).flatten(1).norm(dim=1) for y in (real, emulated, bf16))
    assert bool((err_real > 0).all())
    assert bool(((err_emul / err_real) < 2).all() and ((err_emul / err_real) > 0.5).all())
    assert bool((err_real < 0.5 * err_bf16).all())


def test_precision_agrees_policy():
    model = _unet()
    g = torch.Generator().manual_seed(2)
    probe = draw_probe(_x0((8, 1, 8, 8)), 10, g)
    ok, stats = precision_agrees(model, probe, "fp32", "fp64")
    assert ok and stats.sign_agreement >= 0.99 and stats.loss_rel_err <= 0.01
    # At N = 1280 and large σ the teacher-student gap is far below bf16's rounding of f_θ's output.
    fine = draw_probe(_x0((8, 1, 8, 8)), 1280, g, SIGMA_BANDS["5-80"])
    ok, stats = precision_agrees(model, fine, "bf16", "fp32")
    assert not ok and (stats.loss_rel_err > 0.01 or stats.sign_agreement < 0.99)
    # The tolerances are the policy's knobs: anything passes with none.
    ok, _ = precision_agrees(model, fine, "bf16", "fp32", sign_tol=0.0, loss_tol=math.inf)
    assert ok


def test_unknown_precision_fails_loudly():
    with pytest.raises(ValueError, match="fp8"), autocast_context("fp8"):
        pass


def test_benchmark_smoke_run(tmp_path):
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import precision as benchmark
    finally:
        sys.path.remove(str(bench))
    out = tmp_path / "precision.json"
    assert benchmark.main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "bf16", "fp16"} and {r["n"] for r in rows} == {1280}
    assert "| cifar-random | 1280 | bf16 |" in benchmark.headline(rows + [dict(r, band="all") for r in rows])


def test_committed_results_cover_trained_weights_at_the_finest_grid():
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "precision.json"
    rows = json.loads(path.read_text())["rows"]
    for model in ("cifar-random", "toy-trained", "digits-trained"):
        for precision in ("fp32", "bf16", "fp16"):
            assert any(r["model"] == model and r["n"] == 1280 and r["precision"] == precision for r in rows)
    # fp32 reproduces the float64 loss everywhere it was measured.
    assert all(r["loss_rel_err"] < 1e-3 for r in rows if r["precision"] == "fp32")
