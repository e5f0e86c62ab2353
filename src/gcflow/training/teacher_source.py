"""Where a teacher comes from: a gcflow diffusion run, or a file written by `gcflow import-edm`.

Used by the bundled trainer for `method.teacher` (CD pairs from the teacher's velocity) and
`method.init_from` (ECT: the consistency model starts from the teacher's raw network). Nothing
from either kind of file is executed: run folders hold safetensors checkpoints and JSON, imported
teachers safetensors with a JSON header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.pairs.types import PointFn
from gcflow.teacher.edm_loss import Denoiser
from gcflow.teacher.velocity import denoiser_velocity
from gcflow.training.config import Config, ConfigError


def is_imported_teacher(path: Path) -> bool:
    """True for a safetensors file whose header says it was written by `gcflow import-edm`."""
    from gcflow.teacher.import_edm import FORMAT

    if not path.is_file() or path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("gcflow", "{}"))
    except Exception:  # noqa: BLE001 (any unreadable header: not an imported teacher)
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load_teacher_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The teacher network in eval mode: a `Denoiser` (diffusion) or a `ConsistencyModel`.

    `path` is a gcflow run folder or checkpoint (its EMA weights) or a 'gcflow import-edm' file.
    Raises ConfigError (one line) when it is neither.
    """
    from gcflow.teacher.import_edm import load_teacher
    from gcflow.training.checkpoint import CheckpointError
    from gcflow.training.run_state import load_run

    p = Path(path)
    if is_imported_teacher(p):
        return load_teacher(p).to(device).eval()
    try:
        return load_run(p, device).model.eval()
    except CheckpointError as exc:
        raise ConfigError(f"teacher {path}: {exc}; pass a gcflow run folder or a 'gcflow import-edm' file") from None


def teacher_velocity(path: str | Path, device: torch.device | str = "cpu") -> PointFn:
    """v(x, σ) = (x − D_φ(x, σ))/σ of a diffusion teacher; x: (B, *D), σ: (B,) -> (B, *D)."""
    teacher = load_teacher_model(path, device)
    if not isinstance(teacher, Denoiser):
        raise ConfigError(
            f"method.teacher={path} is a consistency model, not a diffusion model; "
            "train one with 'gcflow train --preset digits-edm' or import an EDM network"
        )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return denoiser_velocity(lambda x, s: teacher(x, s))


def empirical_velocity(images: Tensor) -> PointFn:
    """The exact velocity of the empirical distribution of `images` (n, *D) in [-1, 1] (oracle CD).

    D⋆(x, σ) = Σ_k softmax_k(−‖x − x_k‖²/(2σ²)) x_k, evaluated in float64 (gcflow.toy.mixture).
    """
    from gcflow.toy.mixture import GaussianMixture

    return empirical_velocity_of(GaussianMixture.empirical(images))


def training_images(source: Any) -> Tensor:
    """A data source's whole training split as floats in [-1, 1], shape (n, *D)."""
    from gcflow.data.common import to_unit_range

    images = source.dataset.images
    return to_unit_range(images) if images.dtype == torch.uint8 else images.to(torch.float32)


def cd_velocity(cfg: Config, source: Any, device: torch.device) -> PointFn:
    """The velocity of CD pairs: the teacher's (method.teacher), else the exact one of the toy or data set."""
    if cfg.method.teacher:
        return teacher_velocity(cfg.method.teacher, device)
    mixture = getattr(source, "mixture", None)
    if mixture is not None:
        return empirical_velocity_of(mixture)
    return empirical_velocity(training_images(source).to(device))


def empirical_velocity_of(mixture: Any) -> PointFn:
    """A toy mixture's exact velocity (float64 inside), in the dtype of x."""

    def velocity(x: Tensor, s: Tensor) -> Tensor:
        return mixture.velocity(x.to(torch.float64), s.to(torch.float64)).to(x.dtype)

    return velocity


def init_from_teacher(model: nn.Module, path: str | Path) -> nn.Module:
    """Copy the teacher's raw network F into `model.net` (ECT: f_θ starts from the diffusion model).

    The preconditioning differs (EDM denoiser scalings in the teacher, consistency scalings in the
    student, as ECT's ECMPrecond) but both wrap the same raw network F(c_in x, c_noise).
    """
    teacher = load_teacher_model(path, "cpu")
    try:
        model.net.load_state_dict(teacher.net.state_dict())
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"method.init_from={path}: its network does not match network.* ({first}); "
            "use the teacher's network settings"
        ) from None
    return model
