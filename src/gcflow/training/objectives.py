"""The training objective of a step, chosen by method.pairs: a small registry of per-sample losses.

* "ct", "cd": consistency pairs from `gcflow.pairs.build_pairs` (iCT's grid levels, GC optional)
  and `gcflow.loss.consistency_loss`. CD's velocity is the teacher's or the exact one
  (`gcflow.training.teacher_source.cd_velocity`).
* "edm": EDM's denoising loss λ(σ)‖D(x⋆ + σ z, σ) − x⋆‖² with σ ~ lognormal(method.p_mean, p_std)
  (diffusion pretraining; the model is a `gcflow.teacher.edm_loss.Denoiser`).
* "ect": Easy Consistency Tuning: t ~ lognormal(method.p_mean, p_std), r = r(t, stage) with Δt
  shrinking by method.ect_q per stage, loss d(f(x + t z, t), sg f(x + r z, r))/(t − r); GC pairs
  replace x⋆ by x̂ = sg f_η(x⋆ + t z, t) and re-noise it with the same z at t and r.

The continuous levels are drawn for the global batch and
sliced to this process's rows, from the same "levels" stream as the grid levels of `draw_inputs`
(which these modes do not use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gcflow.pairs.gc import generator_augment
from gcflow.randomness import step_generator
from gcflow.shapes import flatten_samples, per_sample
from gcflow.teacher.ect import (
    ect_pairs,
    ect_r,
    ect_sample_t,
    ect_stage,
    ect_targets,
    iterations_per_stage,
)
from gcflow.teacher.edm_loss import edm_sample_sigmas, edm_weight

if TYPE_CHECKING:
    from gcflow.training.step import StepInputs, TrainStep

# (the step, this step's inputs, the coupled noise z (b, *D)) -> per-sample loss (b,)
Objective = Callable[["TrainStep", "StepInputs", Tensor], Tensor]


def pairs_objective(step: TrainStep, inp: StepInputs, z: Tensor) -> Tensor:
    """CT or CD pairs (with GC rows when μ > 0) and the consistency loss, as iCT."""
    pairs = step.pairs(inp, z)
    return step.loss_fn(step._model_fn(inp.labels), pairs, step.distance, inp.dropout)


def global_levels(step: TrainStep, inp: StepInputs, draw: Callable[[int, torch.Generator], Tensor]) -> Tensor:
    """Continuous levels (b,) for this process: `draw(global batch, generator)` sliced to its rows."""
    t = step.cfg.train
    b = inp.x0.shape[0]
    lo = step.world.rank * b
    levels = draw(t.batch_size, step_generator(t.seed, inp.step, "levels"))[lo : lo + b]
    return levels.to(step.device)


def edm_objective(step: TrainStep, inp: StepInputs, z: Tensor) -> Tensor:
    """EDM's per-sample loss λ(σ)‖D(x⋆ + σ z, σ) − x⋆‖² (summed over pixels, as EDM)."""
    m = step.cfg.method
    sigma = global_levels(step, inp, lambda n, g: edm_sample_sigmas(n, g, m.p_mean, m.p_std))
    x0 = inp.x0
    with inp.dropout.replay():
        d = step._model_fn(inp.labels)(x0 + per_sample(sigma, x0) * z, sigma)
    return edm_weight(sigma, m.sigma_data) * flatten_samples(d.float() - x0.float()).pow(2).sum(dim=1)


def ect_levels(step: TrainStep, inp: StepInputs) -> tuple[Tensor, Tensor]:
    """(t, r) of ECT for this step, each (b,): lognormal t and r(t) at the step's stage."""
    m, steps = step.cfg.method, step.cfg.train.steps
    t = global_levels(step, inp, lambda n, g: ect_sample_t(n, g, m.p_mean, m.p_std))
    stage = ect_stage(inp.step, iterations_per_stage(steps, m.ect_stages))
    return t, ect_r(t, stage, m.ect_q, m.ect_k, m.ect_b, m.ect_mapping)


def ect_objective(step: TrainStep, inp: StepInputs, z: Tensor) -> Tensor:
    """ECT's per-sample loss d(f_θ(x + t z, t), sg f_θ(x + r z, r))/(t − r); x = x̂ on GC rows.

    The target at r = 0 (below method.sigma_min) is the endpoint itself. Both passes share the
    dropout mask, as in consistency_loss.
    """
    t, r = ect_levels(step, inp)
    x0 = inp.x0
    if inp.gc_mask is not None:
        predictor = step._step_predictor(inp)
        assert predictor is not None, "GC rows need the predictor (method.gc_mu > 0 builds it)"
        x0 = generator_augment(x0, z, t, predictor, inp.gc_mask)
    pairs = ect_pairs(x0, z, t, r, is_gc=inp.gc_mask)
    f = step._model_fn(inp.labels)
    with inp.dropout.replay():
        target = ect_targets(f, pairs, step.cfg.method.sigma_min)
    with inp.dropout.replay():
        pred = f(pairs.x_next, pairs.sigma_next)
    return pairs.weight * step.distance(pred, target.detach())


OBJECTIVES: dict[str, Objective] = {
    "ct": pairs_objective,
    "cd": pairs_objective,
    "edm": edm_objective,
    "ect": ect_objective,
}


def get_objective(name: str) -> Objective:
    """The objective of method.pairs=`name`; unknown names fail with the list of known ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}") from None
