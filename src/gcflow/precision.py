"""How much a lower precision changes the consistency loss and its gradient (method spec §10, issue 11).

The consistency loss compares two outputs of f_θ whose difference shrinks with Δσ; at fine grids it
can fall below the rounding of low-precision network passes. This module measures, for one batch of
pairs (a `Probe`), the loss and gradient under fp32, bf16 autocast and fp16 autocast against a
float64 (or fp32) reference:

* loss relative error |L − L_ref| / |L_ref|;
* gradient cosine similarity ⟨g, g_ref⟩ / (‖g‖ ‖g_ref‖) over all parameters;
* Lion sign agreement: the fraction of parameter entries where sign(β1·m + (1 − β1)·g) agrees
  (Lion's update direction; with zero momentum m it is sign(g)).

The measured thing is what trains: pairs from `gcflow.pairs.ct_pairs`, the loss from
`gcflow.loss.consistency_loss` with the chosen distance, levels from `gcflow.sigmas`.

CPU autocast emulates the rounding of GPU autocast. bf16 uses CPU autocast as is. fp16 CPU autocast
works in torch 2.13 but its convolutions fall back to a reference kernel about 20× slower than fp32,
so on the CPU convolutions are emulated: inputs, weights and bias rounded to fp16, the convolution
accumulated in fp32 (as cuDNN does), the output rounded to fp16; every other op is real fp16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gcflow.distances import Distance, pseudo_huber
from gcflow.loss import consistency_loss
from gcflow.pairs.ct import ct_pairs
from gcflow.sigmas import karras_sigmas, level_weights, lognormal_level_probs, sample_level_indices

PRECISIONS = ("fp64", "fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# σ bands of the lower level σ_i of a pair; "all" draws levels as training does.
SIGMA_BANDS: dict[str, tuple[float, float] | None] = {
    "all": None,
    "0.002-0.1": (0.0, 0.1),
    "0.1-1": (0.1, 1.0),
    "1-5": (1.0, 5.0),
    "5-80": (5.0, math.inf),
}


@dataclass
class Probe:
    """One batch of consistency-pair inputs, kept in float64 (each run casts them to its dtype).

    Attributes:
        x0: (B, *D) data; z: (B, *D) noise; sigma_i, sigma_next, weight: (B,) levels and λ_i.
    """

    x0: Tensor
    z: Tensor
    sigma_i: Tensor
    sigma_next: Tensor
    weight: Tensor


def draw_probe(
    x0: Tensor,
    n: int,
    generator: torch.Generator,
    band: tuple[float, float] | None = None,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    p_mean: float = -1.1,
    p_std: float = 2.0,
) -> Probe | None:
    """Levels of curriculum stage N = n for data x0 (B, *D), restricted to intervals with σ_i in `band`.

    Within the band the intervals keep their lognormal probabilities (renormalised). Returns None when
    no interval of the grid starts inside the band.
    """
    grid = karras_sigmas(n, sigma_min, sigma_max, rho)
    probs = lognormal_level_probs(grid, p_mean, p_std)
    if band is not None:
        inside = (grid[:-1] >= band[0]) & (grid[:-1] < band[1])
        if not bool(inside.any()):
            return None
        probs = probs * inside
    idx = sample_level_indices(probs / probs.sum(), x0.shape[0], generator)
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    return Probe(x0.to(torch.float64), z, grid[idx], grid[idx + 1], level_weights(grid)[idx])


class _Fp16ConvEmulation(TorchFunctionMode):
    """fp16 autocast convolutions computed in fp32 from fp16-rounded operands, output rounded to fp16."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not torch.conv2d:
            return func(*args, **kwargs)

        def rounded(a: Any) -> Any:
            return a.to(torch.float16).to(torch.float32) if isinstance(a, Tensor) and a.is_floating_point() else a

        with torch.autocast("cpu", enabled=False):
            out = func(*[rounded(a) for a in args], **{k: rounded(v) for k, v in kwargs.items()})
        return out.to(torch.float16)


@contextlib.contextmanager
def autocast_context(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """The network passes' context for `precision` (fp64/fp32: none; bf16/fp16: autocast, see module doc)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision not in _AUTOCAST:
        yield
        return
    dev = torch.device(device)
    with torch.autocast(dev.type, dtype=_AUTOCAST[precision]):
        if precision == "fp16" and dev.type == "cpu":
            with _Fp16ConvEmulation():
                yield
        else:
            yield


@dataclass
class LossGrad:
    """The mean loss (a float) and the flat gradient over all parameters ((P,) float64)."""

    loss: float
    grad: Tensor


def loss_and_grad(model: nn.Module, probe: Probe, precision: str, distance: Distance = pseudo_huber) -> LossGrad:
    """Mean consistency loss of the probe's CT pairs and its gradient, with `model`'s weights in `precision`.

    `model` (f(x (B, *D), σ (B,)) -> (B, *D)) is not modified: a copy runs in float64 for "fp64" and in
    float32 otherwise, its passes under `autocast_context(precision)`. The distance and the loss
    reduction run in the input dtype, as in training. Dropout is off (eval mode): masks drawn in
    different dtypes would differ, and the paper's GC configurations use no dropout.
    """
    dtype = torch.float64 if precision == "fp64" else torch.float32
    net = copy.deepcopy(model).to(dtype).eval()
    net.requires_grad_(True)
    device = next(net.parameters()).device
    cast = {"dtype": dtype, "device": device}
    pairs = ct_pairs(
        probe.x0.to(**cast),
        probe.z.to(**cast),
        probe.sigma_i.to(**cast),
        probe.sigma_next.to(**cast),
        probe.weight.to(**cast),
    )

    def f(x: Tensor, s: Tensor) -> Tensor:
        with autocast_context(precision, device):
            return net(x, s)

    loss = consistency_loss(f, pairs, distance).mean()
    params = list(net.parameters())
    # fp16 training needs loss scaling (GradScaler), else small activation gradients flush to zero:
    # start at GradScaler's 2^16 and halve while the scaled gradient overflows.
    scale = 2.0**16 if precision == "fp16" else 1.0
    while True:
        grads = torch.autograd.grad(loss * scale, params, allow_unused=True, retain_graph=scale > 1)
        flat = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1).double() for g, p in zip(grads, params)]
        )
        if scale == 1.0 or bool(torch.isfinite(flat).all()):
            return LossGrad(float(loss.detach()), flat / scale)
        scale /= 2.0


def reset_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every Linear and Conv2d of `model` in place with PyTorch's default init; returns it.

    EDM's initialisation scales each residual branch's last layer by 1e-5, so an untrained SongUNet is
    almost the identity and f_θ almost its skip path: "random weights" for a precision measurement
    need outputs of order one, as in a trained network.
    """
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()
    return model


@dataclass
class Agreement:
    """How a run compares with its reference (see the module docstring for the three measures)."""

    loss: float
    loss_ref: float
    loss_rel_err: float
    grad_cosine: float
    sign_agreement: float


def lion_direction(grad: Tensor, momentum: Tensor | None = None, beta1: float = 0.9) -> Tensor:
    """sign(β1·m + (1 − β1)·g), Lion's update direction; sign(g) without momentum. Shapes (P,)."""
    if momentum is None:
        return torch.sign(grad)
    return torch.sign(beta1 * momentum + (1.0 - beta1) * grad)


def compare(run: LossGrad, ref: LossGrad, momentum: Tensor | None = None, beta1: float = 0.9) -> Agreement:
    """Loss relative error, gradient cosine and Lion sign agreement of `run` against `ref`."""
    rel = abs(run.loss - ref.loss) / max(abs(ref.loss), 1e-300)
    denom = float(run.grad.norm() * ref.grad.norm())
    cosine = float(run.grad @ ref.grad) / denom if denom > 0 else float("nan")
    agree = lion_direction(run.grad, momentum, beta1) == lion_direction(ref.grad, momentum, beta1)
    return Agreement(run.loss, ref.loss, rel, cosine, float(agree.double().mean()))


def measure(
    model: nn.Module,
    probe: Probe,
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16"),
    reference: str = "fp64",
    distance: Distance = pseudo_huber,
    momentum: Tensor | None = None,
) -> dict[str, Agreement]:
    """Agreement of each precision with the reference on one probe: {precision: Agreement}."""
    ref = loss_and_grad(model, probe, reference, distance)
    return {p: compare(loss_and_grad(model, probe, p, distance), ref, momentum) for p in precisions}


def precision_agrees(
    model: nn.Module,
    probe: Probe,
    precision: str = "bf16",
    reference: str = "fp32",
    *,
    sign_tol: float = 0.99,
    loss_tol: float = 0.01,
    distance: Distance = pseudo_huber,
    momentum: Tensor | None = None,
) -> tuple[bool, Agreement]:
    """The check of `train.precision=auto`: may `precision` replace `reference` on this batch?

    ok when the Lion sign agreement is ≥ sign_tol (99 %) and the loss is within loss_tol (1 %,
    relative). Run it on one training batch at each curriculum stage change and every few thousand
    steps; train in `reference` whenever it fails.
    """
    stats = measure(model, probe, (precision,), reference, distance, momentum)[precision]
    ok = stats.sign_agreement >= sign_tol and stats.loss_rel_err <= loss_tol
    return ok, stats
