"""The Lion optimizer (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), updated with foreach kernels.

Per parameter θ with gradient g and momentum m (β1, β2, learning rate η, weight decay λ):

    θ ← θ·(1 − ηλ)
    θ ← θ − η · sign(β1·m + (1 − β1)·g)
    m ← β2·m + (1 − β2)·g

This is exactly the update of `lion_pytorch.Lion`,
with the same state ("exp_avg") and parameter-group keys, so checkpoints move between the two;
on the CPU the results are bit-identical. The difference is speed: one foreach kernel per line
for all parameters instead of five small kernels per parameter tensor (the CIFAR-10 network has
320 tensors, so ~1,600 kernel launches per step become ~6).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor


class Lion(torch.optim.Optimizer):
    """Lion with foreach updates; drop-in for lion_pytorch.Lion(params, lr, betas, weight_decay)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"Lion needs a positive learning rate, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"Lion needs two betas in [0, 1], got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            moms = []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                moms.append(state["exp_avg"])
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_mul(moms, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_mul_(moms, beta2)
            torch._foreach_add_(moms, grads, alpha=1.0 - beta2)
        return loss
