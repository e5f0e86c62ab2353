"""gcflow: consistency models trained from scratch, with generator-augmented flows.

The library owns the maths (noise grids, preconditioning, pair construction, distances,
EMA, samplers, exact toy denoisers and metrics); the bundled trainer only composes them.
The building blocks of a training loop of your own are importable from here (see
examples/own_loop.py):

    import gcflow
    lo, hi, w = gcflow.sample_noise_levels(gcflow.ict_num_scales(k, K), batch)
    mask = gcflow.select_gc(batch, 0.5, generator)  # GC pairs with probability mu = 0.5
    pairs = gcflow.build_pairs(gcflow.PairRecipe("ct"), x0, z, lo, hi, w, gc_mask=mask, predictor=...)
    loss = gcflow.consistency_loss(model, pairs, gcflow.get_distance("pseudo_huber")).mean()

`load_run` / `load_model_for_inference` (trained runs and exported models) are imported on first
use, so `import gcflow` itself stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from gcflow.distances import get_distance
from gcflow.ema import ema_update, make_ema
from gcflow.loss import consistency_loss
from gcflow.pairs import PairBatch, PairRecipe, build_pairs, get_coupling, select_gc
from gcflow.precond import ConsistencyModel
from gcflow.sampling import default_multistep_sigmas, sample_multistep, sample_onestep, seeded_normal
from gcflow.sigmas import ict_num_scales, karras_sigmas, sample_noise_levels

__version__ = "0.1.0"

# name -> module: attributes loaded on first access (PEP 562), because they pull in the trainer
# (config, builders, networks) or safetensors I/O that a plain `import gcflow` does not need.
_LAZY: dict[str, str] = {
    "load_run": "gcflow.training.run_state",
    "load_model_for_inference": "gcflow.training.run_state",
    "load_exported": "gcflow.export",
    "export_run": "gcflow.export",
}

__all__ = [
    "ConsistencyModel",
    "PairBatch",
    "PairRecipe",
    "build_pairs",
    "consistency_loss",
    "default_multistep_sigmas",
    "ema_update",
    "export_run",
    "get_coupling",
    "get_distance",
    "ict_num_scales",
    "karras_sigmas",
    "load_exported",
    "load_model_for_inference",
    "load_run",
    "make_ema",
    "sample_multistep",
    "sample_noise_levels",
    "sample_onestep",
    "seeded_normal",
    "select_gc",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gcflow' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # a missing dependency of that module, not the module itself
        raise AttributeError(f"gcflow.{name} is not available in this build (no module {module})") from None
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
