"""Pre-flight checks of a new run: everything that can fail is tried before the run folder is touched.

With `--overwrite` the old run is deleted only after these pass, so a bad option (an impossible
network, CD pairs on images, a frozen GC predictor that is missing, has no checkpoint, was trained
on data of another shape, or lives inside the very run being replaced) never costs it its files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gcflow.training.builders import build_model
from gcflow.training.config import Config, ConfigError
from gcflow.training.data_source import data_shape


def check_new_run(cfg: Config, run_dir: Path, *, overwrite: bool) -> None:
    """Raise a one-line ConfigError/CheckpointError if a new run of `cfg` in `run_dir` cannot start.

    Reads files (the frozen predictor's checkpoint) but writes nothing. `cfg` is already validated.
    """
    for key, value in (("method.teacher", cfg.method.teacher), ("method.init_from", cfg.method.init_from)):
        if value:
            _check_teacher_path(key, Path(value), Path(run_dir), overwrite=overwrite)
    shape = _configured_shape(cfg)
    if shape is not None:
        _check_network(cfg, shape)
    if cfg.method.gc_mu > 0 and cfg.method.gc_predictor == "frozen":
        _check_frozen_predictor(cfg, Path(run_dir), shape, overwrite=overwrite)


def _check_teacher_path(key: str, path: Path, run_dir: Path, *, overwrite: bool) -> None:
    """A teacher (or initialisation) file or run must exist, and must not be inside the run --overwrite replaces."""
    if not path.exists():
        raise ConfigError(f"{key}={path} does not exist; name a gcflow diffusion run or a 'gcflow import-edm' file")
    if overwrite and run_dir.exists() and path.resolve().is_relative_to(run_dir.resolve()):
        raise ConfigError(f"{key}={path} is inside {run_dir}, which --overwrite would delete; use another --out")


def _configured_shape(cfg: Config) -> tuple[int, ...] | None:
    """One sample's shape as configured, without loading data (None when only loading can tell, e.g. npz)."""
    try:
        return tuple(data_shape(cfg)[0])
    except KeyError:
        return None


def _check_network(cfg: Config, shape: tuple[int, ...]) -> None:
    """Build the network on the meta device (no memory, no compute): impossible architectures fail here."""
    classes = data_shape(cfg)[1] if cfg.network.class_conditional else 0
    with torch.device("meta"):
        build_model(cfg, shape, classes)


def _check_frozen_predictor(cfg: Config, run_dir: Path, shape: tuple[int, ...] | None, *, overwrite: bool) -> None:
    """method.gc_checkpoint must load, must not lie inside the run being replaced, and must fit the data."""
    from gcflow.training.run_state import load_run

    path = Path(cfg.method.gc_checkpoint).expanduser()
    if overwrite and run_dir.exists() and _is_inside(path, run_dir):
        raise ConfigError(
            f"method.gc_checkpoint={cfg.method.gc_checkpoint} lies inside {run_dir}, which --overwrite would delete; "
            "copy the predictor run elsewhere or choose another --out"
        )
    predictor = load_run(path, "cpu")  # CheckpointError (one line): missing, no checkpoint, corrupt
    if shape is not None and tuple(predictor.data_shape) != tuple(shape):
        raise ConfigError(
            f"the frozen GC predictor {path} was trained on data of shape {tuple(predictor.data_shape)}, "
            f"but data.name={cfg.data.name} has shape {tuple(shape)}; use a predictor trained on the same data"
        )


def _is_inside(path: Path, folder: Path) -> bool:
    """True if `path` (after resolving links) is `folder` or lies below it."""
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents
