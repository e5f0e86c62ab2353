"""A plain, independent float64 re-statement of the paper's released training loop (method spec §2–§6, §10).

Written from the method spec, not from gcflow's modules (it imports nothing from gcflow), so that a
parity test can run gcflow's trainer and this loop on the same draws and compare losses, GC masks and
EMA weights. One step k (0-based, the released code's `i_train`):

1. N = min(s0 · 2^floor(k/K'), s1), K' = floor(K / (log2 floor(s1/s0) + 1)); Karras grid σ_0..σ_N.
2. Per sample: level index i (lognormal interval probabilities), σ_i, σ_{i+1}, λ_i = 1/(σ_{i+1} − σ_i).
3. x_i = x⋆ + σ_i z; GC rows (probability μ = P(GC)) replace x⋆ by x̂ = f_ema(x_i, σ_i) and re-noise
   with the same z: x_i = x̂ + σ_i z, x_{i+1} = x̂ + σ_{i+1} z.
4. loss = mean λ_i (sqrt(‖f_θ(x_{i+1}, σ_{i+1}) − sg f_θ(x_i, σ_i)‖² + c²) − c), c = 0.00054 sqrt(d).
5. Lion: u = sign(β1 m + (1 − β1) g); θ ← θ − lr·u; m ← β2 m + (1 − β2) g.
6. EMA as ema-pytorch 0.2.3's `EMA.update()` with update_every = 5, update_after_step = ema_start:
   on calls c = k with c % 5 == 0, copy while c ≤ ema_start or on the first average, else
   ema ← lerp(ema, θ, 1 − min(β, 1 − (1 + (c + 1 − ema_start − 1))^(−2/3))).

The network is any raw F(x_in (B, *D), c_noise (B,)) -> (B, *D) in float64; the loop applies the
consistency preconditioning of spec §2 itself. No dropout (the paper's GC configurations use 0).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class RefConfig:
    """The released CIFAR-10 GC configuration's values (spec §10); shrink steps/batch for tests."""

    steps: int = 100_000
    s0: int = 10
    s1: int = 1280
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0
    mu: float = 0.5
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    ema_beta: float = 0.9999
    ema_update_every: int = 5
    ema_start: int = 0
    ema_inv_gamma: float = 1.0
    ema_power: float = 2.0 / 3.0


def num_scales(k: int, cfg: RefConfig) -> int:
    k_prime = math.floor(cfg.steps / (math.log2(math.floor(cfg.s1 / cfg.s0)) + 1))
    return int(min(cfg.s0 * 2 ** math.floor(k / max(k_prime, 1)), cfg.s1))


def grid(n: int, cfg: RefConfig) -> Tensor:
    i = torch.arange(n + 1, dtype=torch.float64)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    return (lo + i / n * (hi - lo)) ** cfg.rho


def level_probs(sig: Tensor, cfg: RefConfig) -> Tensor:
    cdf = torch.erf((torch.log(sig) - cfg.p_mean) / (math.sqrt(2.0) * cfg.p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def consistency_fn(net: nn.Module, x: Tensor, sigma: Tensor, cfg: RefConfig) -> Tensor:
    """f(x, σ) = c_skip x + c_out F(c_in x, c_noise), spec §2; x (B, *D), σ (B,)."""
    sd, smin = cfg.sigma_data, cfg.sigma_min
    view = (-1,) + (1,) * (x.ndim - 1)
    c_skip = sd**2 / ((sigma - smin) ** 2 + sd**2)
    c_out = sd * (sigma - smin) / torch.sqrt(sd**2 + sigma**2)
    c_in = 1 / torch.sqrt(sd**2 + sigma**2)
    return c_skip.view(view) * x + c_out.view(view) * net(c_in.view(view) * x, torch.log(sigma) / 4)


@dataclass
class Draws:
    """One step's random inputs: x0, z (B, *D); idx (B,) interval indices; gc (B,) bool.

    sigma_i, sigma_next, weight (B,): the levels and λ_i as a trainer computed them, when given (the
    released code builds its grid and weights in float32; gcflow rounds float64 values to float32);
    None = σ_idx, σ_idx+1 and 1/(σ_idx+1 − σ_idx) of the float64 grid.
    """

    x0: Tensor
    z: Tensor
    idx: Tensor
    gc: Tensor
    sigma_i: Tensor | None = None
    sigma_next: Tensor | None = None
    weight: Tensor | None = None


def draw(data: Tensor, k: int, batch: int, cfg: RefConfig, gen: torch.Generator) -> Draws:
    """Plain draws for the self-test (the parity test feeds the trainer's draws instead)."""
    x0 = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    idx = torch.multinomial(level_probs(grid(num_scales(k, cfg), cfg), cfg), batch, replacement=True, generator=gen)
    return Draws(x0.double(), z, idx, torch.rand(batch, generator=gen) < cfg.mu)


class ReferenceLoop:
    """The online network, its EMA and Lion's momentum, stepped as the released code steps them."""

    def __init__(self, net: nn.Module, cfg: RefConfig) -> None:
        self.cfg = cfg
        self.net = net.double()
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.momentum = [torch.zeros_like(p) for p in self.net.parameters()]
        self.ema_calls = 0
        self.ema_initted = False

    def f(self, x: Tensor, sigma: Tensor) -> Tensor:
        return consistency_fn(self.net, x, sigma, self.cfg)

    def loss(self, k: int, d: Draws) -> Tensor:
        """Step k's mean loss on draws d (gradients flow into the online network)."""
        cfg = self.cfg
        sig = grid(num_scales(k, cfg), cfg)
        s_i, s_n = sig[d.idx], sig[d.idx + 1]
        if d.sigma_i is not None and d.sigma_next is not None:
            s_i, s_n = d.sigma_i.double(), d.sigma_next.double()
        lam = 1 / (s_n - s_i) if d.weight is None else d.weight.double()
        view = (-1,) + (1,) * (d.x0.ndim - 1)
        x0 = d.x0
        if bool(d.gc.any()):
            with torch.no_grad():
                x_hat = consistency_fn(self.ema, x0 + s_i.view(view) * d.z, s_i, cfg)
            x0 = torch.where(d.gc.view(view), x_hat, x0)
        x_i, x_n = x0 + s_i.view(view) * d.z, x0 + s_n.view(view) * d.z
        with torch.no_grad():
            target = self.f(x_i, s_i)
        pred = self.f(x_n, s_n)
        c = 0.00054 * math.sqrt(x0[0].numel())
        dist = torch.sqrt((pred - target).reshape(len(pred), -1).pow(2).sum(1) + c * c) - c
        return (lam * dist).mean()

    def step(self, k: int, d: Draws) -> float:
        """One training step (loss, Lion, EMA); returns the loss."""
        cfg = self.cfg
        params = list(self.net.parameters())
        loss = self.loss(k, d)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, m in zip(params, grads, self.momentum):
                p.sub_(cfg.lr * torch.sign(cfg.beta1 * m + (1 - cfg.beta1) * g))
                m.mul_(cfg.beta2).add_((1 - cfg.beta2) * g)
        self._ema_update()
        return float(loss.detach())

    @torch.no_grad()
    def _ema_update(self) -> None:
        cfg, c = self.cfg, self.ema_calls
        self.ema_calls += 1
        if c % cfg.ema_update_every != 0:
            return
        pairs = list(zip(self.ema.parameters(), self.net.parameters()))
        if c <= cfg.ema_start or not self.ema_initted:
            self.ema_initted = c > cfg.ema_start
            for e, p in pairs:
                e.copy_(p)
            return
        epoch = c + 1 - cfg.ema_start - 1
        decay = min(cfg.ema_beta, 1 - (1 + epoch / cfg.ema_inv_gamma) ** -cfg.ema_power)
        for e, p in pairs:
            e.lerp_(p, 1 - decay)
