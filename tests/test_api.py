"""The public API: `import gcflow` exposes the building blocks of a training loop, stays light, and
every exported function's docstring says what each of its arguments is."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys

import pytest
import torch

import gcflow

BUILDING_BLOCKS = [
    "karras_sigmas",
    "ict_num_scales",
    "sample_noise_levels",
    "PairRecipe",
    "build_pairs",
    "consistency_loss",
    "ema_update",
    "make_ema",
    "ConsistencyModel",
    "get_distance",
    "sample_onestep",
    "sample_multistep",
    "default_multistep_sigmas",
    "seeded_normal",
]
# Functions whose docstrings document each argument by name (the data classes document their fields).
DOCUMENTED = [
    "karras_sigmas",
    "ict_num_scales",
    "sample_noise_levels",
    "consistency_loss",
    "ema_update",
    "sample_onestep",
    "sample_multistep",
    "default_multistep_sigmas",
    "seeded_normal",
]


@pytest.mark.parametrize("name", BUILDING_BLOCKS)
def test_building_blocks_are_exported(name):
    assert name in gcflow.__all__ and callable(getattr(gcflow, name))


def test_the_exports_are_the_library_functions():
    from gcflow.pairs.recipe import build_pairs
    from gcflow.sigmas import sample_noise_levels

    assert gcflow.build_pairs is build_pairs and gcflow.sample_noise_levels is sample_noise_levels
    lo, hi, w = gcflow.sample_noise_levels(gcflow.ict_num_scales(0, 100), 5, generator=torch.Generator().manual_seed(0))
    grid = gcflow.karras_sigmas(10, dtype=torch.float32)
    assert lo.shape == (5,) and bool((hi > lo).all()) and torch.isin(lo, grid).all() and torch.isin(hi, grid).all()
    torch.testing.assert_close(w, 1 / (hi - lo))


@pytest.mark.parametrize("name", DOCUMENTED)
def test_docstrings_state_every_argument(name):
    fn = getattr(gcflow, name)
    doc = inspect.getdoc(fn) or ""
    missing = [p for p in inspect.signature(fn).parameters if p not in doc]
    assert not missing, f"gcflow.{name}'s docstring does not say what {missing} are"


def test_import_gcflow_does_not_load_the_trainer():
    code = (
        "import sys, gcflow; print(sorted(m for m in sys.modules if m.startswith(('gcflow.training', 'safetensors'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_loaders_are_loaded_on_first_use():
    """load_exported (gcflow.export) now; load_run and load_model_for_inference once
    gcflow.training.run_state exists.
    """
    from gcflow.export import load_exported

    assert gcflow.load_exported is load_exported
    if importlib.util.find_spec("gcflow.training.run_state") is None:
        with pytest.raises(AttributeError, match="not available in this build"):
            gcflow.load_run  # noqa: B018
    else:
        run_state = importlib.import_module("gcflow.training.run_state")
        assert gcflow.load_run is run_state.load_run
        assert gcflow.load_model_for_inference is run_state.load_model_for_inference
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        gcflow.nonexistent  # noqa: B018
