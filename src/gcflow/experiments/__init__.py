"""The paper's theory, measured: one module per experiment, run by `gcflow experiment NAME`.

`EXPERIMENTS` maps a name to (one-line description, run function). A run function has the signature
`run(options: <its Options dataclass>, out: Path) -> ExperimentReport`; the options type is read from
its annotation, so `key=value` overrides are type-checked against it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable

from gcflow.experiments import convergence, discrepancy, exact_map, images_mu, modes, theorem1, transport
from gcflow.experiments.report import ExperimentReport

RunFn = Callable[..., ExperimentReport]

EXPERIMENTS: dict[str, tuple[str, RunFn]] = {
    "exact-map": (
        "the exact consistency map f⋆ by adaptive ODE solves: closed-form and fine-step checks, speed in 2-D and 64-D",
        exact_map.run,
    ),
    "theorem1": (
        "Theorem 1: N^α (L_CT − L_CD) → C T^{α−1} R(θ) for L2, pseudo-Huber and L1, and the scaled gradients",
        theorem1.run,
    ),
    "discrepancy": (
        "proxy discrepancy E‖z − v_σ(x̃_σ)‖² per coupling (IC, minibatch OT, GC) against σ",
        discrepancy.run,
    ),
    "transport": (
        "transport cost of IC, minibatch OT (b = 128, 512, 2048) and the GC curve c(σ), in 2-D and on 64-D digits",
        transport.run,
    ),
    "convergence": ("W2 and error to f⋆ against training step for IC, OT, GC and oracle CD (CD)", convergence.run),
    "modes": (
        "mode coverage on grid25 for μ ∈ {0, 0.3, 0.5, 0.7, 1} and the shift between GC and IC marginals",
        modes.run,
    ),
    "images-mu": (
        "real images: IC vs GC at μ ∈ {0.3, 0.5, 0.7, 1} vs minibatch OT, FD against step and CPU time, seeds",
        images_mu.run,
    ),
    "images-ablations": (
        "real images: EMA vs online predictor, frozen IC predictors (μ = 1), dropout under GC",
        images_mu.run_ablations,
    ),
    "images-fashion": (
        "Fashion-MNIST 14×14: IC vs GC (μ = 0.5) vs minibatch OT over seeds (needs root=DIR)",
        images_mu.run_fashion,
    ),
    "images-ect": (
        "real images, ECT setting: ECT-IC vs ECT-GC (μ = 0.3) tuned from a diffusion teacher trained first",
        images_mu.run_ect,
    ),
}


def get_experiment(name: str) -> tuple[str, RunFn]:
    """Look up an experiment; unknown names fail with the list of choices."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(
            f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} (gcflow experiment --list)"
        ) from None


def options_type(run: RunFn) -> type:
    """The options dataclass a run function takes (from its `options` annotation)."""
    return typing.get_type_hints(run)["options"]
