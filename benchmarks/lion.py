"""Milliseconds per Lion step: gcflow's Lion next to lion-pytorch's foreach and per-tensor classes.

    python benchmarks/lion.py                      # digits and CIFAR-10 SongUNet parameter sets, CPU
    python benchmarks/lion.py --sizes digits --rounds 3 --steps 2 --out /tmp/lion.json   # smoke run

It measured the choice of Lion (issue 14): gcflow used to ship its own foreach Lion (kept below as
`GcflowLion`, one foreach kernel per line: mul, add, sign, add, mul, add); lion-pytorch's
`lion_pytorch.foreach.Lion` does the same update with lerp (one memory pass fewer) and won on the
CPU at both sizes, so gcflow now trains with it. The three optimizers update the parameter set of a
SongUNet built from a preset (the shapes and the number of tensors are what matter: digits-gc has
0.19 M parameters in 142 tensors, cifar10-gc 34.7 M in 320). They run in one process, interleaved:
each round times every optimizer for --steps steps, in an order that rotates from round to round,
so that a slow phase of the shared machine hits all of them alike; each figure is the median over
--rounds rounds. The clock is the process's CPU time (with --threads intra-op threads, one by
default; on CUDA it would be wall time between syncs). All three share the parameters and
gradients and keep their own momentum, so each step does the same work. Writes
benchmarks/results/lion.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor

from gcflow.training.builders import build_model
from gcflow.training.presets import load_preset

SIZES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "digits": ("digits-gc", (1, 8, 8)),
    "cifar10": ("cifar10-gc", (3, 32, 32)),
}


class GcflowLion(torch.optim.Optimizer):
    """gcflow's former Lion (src/gcflow/training/lion.py until it was replaced by lion_pytorch.foreach.Lion)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"Lion needs a positive learning rate, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f"Lion needs two betas in [0, 1], got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

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


def optimizers() -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    """name -> constructor over a parameter list, with the paper's betas and a weight decay."""
    import lion_pytorch
    from lion_pytorch.foreach import Lion as ForeachLion

    kw = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.01}
    return {
        "gcflow": lambda p: GcflowLion(p, **kw),
        "lion_pytorch.foreach": lambda p: ForeachLion(p, **kw),
        "lion_pytorch (per tensor)": lambda p: lion_pytorch.Lion(p, **kw),
    }


def parameter_set(size: str) -> list[torch.Tensor]:
    """The parameters of the preset's SongUNet, each with a random gradient."""
    preset, shape = SIZES[size]
    torch.manual_seed(0)
    params = [p.detach().clone().requires_grad_(True) for p in build_model(load_preset(preset), shape).parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def time_steps(opt: torch.optim.Optimizer, steps: int) -> float:
    """CPU seconds per step over `steps` steps."""
    start = time.process_time()
    for _ in range(steps):
        opt.step()
    return (time.process_time() - start) / steps


def bench(size: str, rounds: int, steps: int) -> dict:
    """Median milliseconds per step of each optimizer on one parameter set, and ratios to gcflow's."""
    params = parameter_set(size)
    opts = {name: make(params) for name, make in optimizers().items()}
    for opt in opts.values():  # allocate the momentum buffers outside the clock
        opt.step()
    names = list(opts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_steps(opts[name], steps))
    ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    return {
        "parameters": sum(p.numel() for p in params),
        "tensors": len(params),
        "ms_per_step": ms,
        "ratio_to_gcflow": {n: ms[n] / ms["gcflow"] for n in names},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "lion.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "lion_pytorch": version("lion-pytorch"),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "sizes": {},
    }
    for size in args.sizes:
        result["sizes"][size] = r = bench(size, args.rounds, args.steps)
        print(f"{size}: {r['parameters']:,} parameters in {r['tensors']} tensors")
        for name, ms in r["ms_per_step"].items():
            print(f"  {name:28s} {ms:9.2f} ms/step  ({r['ratio_to_gcflow'][name]:.2f}x gcflow's)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
