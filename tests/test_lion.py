"""gcflow trains with lion_pytorch.foreach.Lion: it is the paper's Lion update, its state interchanges with
lion_pytorch.Lion (checkpoints), and benchmarks/lion.py, which measured that choice, still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lion_pytorch
import torch
from lion_pytorch.foreach import Lion

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(4, 3, 3, 3), (7,), (5, 6)]


def lion_reference(params, grads_per_step, lr, betas, wd):
    """The update of Chen et al. 2023, Algorithm 2, written out in float64."""
    b1, b2 = betas
    theta = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for t, mi, g in zip(theta, m, grads):
            t.mul_(1 - lr * wd).sub_(lr * torch.sign(b1 * mi + (1 - b1) * g))
            mi.copy_(b2 * mi + (1 - b2) * g)
    return theta, m


def _run(opt_cls, params, grads_per_step, **kw):
    opt = opt_cls(params, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return opt


def test_foreach_lion_is_the_lion_update():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES] for _ in range(6)]
    want, want_m = lion_reference([p.detach() for p in params], grads, lr=1e-2, betas=(0.9, 0.99), wd=0.1)
    opt = _run(Lion, params, grads, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    for p, w, wm in zip(params, want, want_m):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["exp_avg"], wm, rtol=0, atol=1e-12)


def test_foreach_lion_state_interchanges_with_the_per_tensor_class():
    """A checkpoint's optimizer state (exp_avg per parameter, lr/betas/weight_decay per group) loads either way."""
    g = torch.Generator().manual_seed(1)
    ours = [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(3)]
    a = _run(Lion, ours, grads, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    b = lion_pytorch.Lion(theirs, lr=1e-3, betas=(0.9, 0.99))
    b.load_state_dict(a.state_dict())
    step = [torch.randn(s, generator=g) for s in SHAPES]
    for opt, params in ((a, ours), (b, theirs)):
        for p, gr in zip(params, step):
            p.grad = gr.clone()
        opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # lerp vs mul+add: equal up to rounding
        assert set(a.state[p]) == set(b.state[q]) == {"exp_avg"}


def test_lion_benchmark_runs(tmp_path):
    out = tmp_path / "lion.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "lion.py"),
        "--sizes",
        "digits",
        "--rounds",
        "2",
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    res = json.loads(out.read_text())["sizes"]["digits"]
    assert res["tensors"] > 100 and set(res["ms_per_step"]) == {
        "gcflow",
        "lion_pytorch.foreach",
        "lion_pytorch (per tensor)",
    }
    assert res["ratio_to_gcflow"]["gcflow"] == 1.0 and all(v > 0 for v in res["ms_per_step"].values())
