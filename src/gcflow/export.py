"""Export a trained run's EMA model to share it, and load it back without gcflow's training state.

An export folder holds three files:

* `model.safetensors`: the EMA weights alone (no online weights, no optimizer state), as float
  tensors named exactly as in `ConsistencyModel.state_dict()`: the raw network's parameters and
  buffers under `net.` (e.g. `net.blocks.0.weight` for the toy MLP, `net.enc.32x32_conv.weight`
  for the SongUNet). The checkpoint's `ema.` prefix is removed. The safetensors header metadata
  holds one JSON document under the key `gcflow`: {"format": "gcflow-export", "version": 1,
  "step", "data_shape", "num_classes", "source"}.
* `config.json`: the run's resolved config (the same document as the run folder's config.json).
* `README.md`: what the files are and a five-line loader.

`load_exported(DIR)` rebuilds the preconditioned model from config.json and loads the weights; a
user without gcflow can read the tensors with `safetensors.torch.load_file`. Nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import Tensor

from gcflow.files import atomic_write_bytes
from gcflow.training import checkpoint as ckpt
from gcflow.training.config import ConfigError

if TYPE_CHECKING:
    from gcflow.training.run_state import LoadedRun

WEIGHTS, CONFIG, README = "model.safetensors", "config.json", "README.md"
FORMAT, VERSION = "gcflow-export", 1

_README = """# A gcflow consistency model

Exported by `gcflow export` from step {step} of `{source}`.

* `model.safetensors`: the EMA weights, named as in `gcflow.ConsistencyModel.state_dict()` (the
  network's tensors under `net.`); header metadata `gcflow` = {{format, version, step, data_shape,
  num_classes, source}}.
* `config.json`: the resolved training config (network, noise levels, preconditioning).

Load and sample (data shape {shape}):

```python
import gcflow
run = gcflow.load_run("{name}")  # model, config, data_shape, num_classes
z = gcflow.seeded_normal(range(16), run.data_shape)
x = gcflow.sample_onestep(run.model, z, sigma_max=run.config.method.sigma_max)
```

Without gcflow: `safetensors.torch.load_file("model.safetensors")` gives the tensors by name.
"""


def is_export(path: Path) -> bool:
    """Whether `path` is an export folder (has model.safetensors and config.json, no checkpoints)."""
    path = Path(path)
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file() and not (path / "checkpoints").exists()


def export_run(run: Path, out: Path, *, overwrite: bool = False) -> Path:
    """Write the EMA weights, config and loader README of `run` (a run folder or checkpoint file) to `out`.

    Args:
        run: a gcflow run folder (its newest good checkpoint is exported) or one checkpoint file.
        out: the export folder; created if missing.
        overwrite: replace the export files if `out` already holds any (otherwise a ConfigError).

    Returns:
        The path of the written model.safetensors.
    """
    run, out = Path(run), Path(out)
    chk = _newest_checkpoint(run)
    if out.resolve() == (run if run.is_dir() else run.parent).resolve():
        raise ConfigError(f"--out {out} is the run's own folder; export to a new folder")
    existing = [out / n for n in (WEIGHTS, CONFIG, README) if (out / n).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; pass --overwrite to replace it, or choose another --out")
    ema = ckpt.split_prefix(chk.tensors, "ema")
    if not ema:
        raise ckpt.CheckpointError(f"checkpoint {chk.path} holds no EMA weights (no 'ema.' tensors)")
    shape = [int(s) for s in chk.meta["data_shape"]]
    info = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(chk.meta["step"]),
        "data_shape": shape,
        "num_classes": int(chk.meta.get("num_classes", 0)),
        "source": str(chk.path),
    }
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in ema.items()}
    atomic_write_bytes(out / WEIGHTS, st_save(tensors, metadata={"gcflow": json.dumps(info)}))
    atomic_write_bytes(out / CONFIG, (json.dumps(chk.meta["config"], indent=2) + "\n").encode())
    text = _README.format(step=info["step"], source=run, shape=tuple(shape), name=out.name)
    atomic_write_bytes(out / README, text.encode())
    return out / WEIGHTS


def _newest_checkpoint(run: Path) -> ckpt.Checkpoint:
    """The newest good checkpoint of a run folder (checked against its config.json), or the given file."""
    from gcflow.training.run_state import checkpoint_to_load

    return checkpoint_to_load(run)


def load_exported(path: Path, device: torch.device | str = "cpu") -> LoadedRun:
    """The model and config of an export folder written by `export_run`.

    Args:
        path: the export folder (holding model.safetensors and config.json).
        device: where to put the model.

    Returns:
        A LoadedRun: the ConsistencyModel f(x, σ) with x (B, *data_shape) and σ (B,), in eval mode
        without gradients; the run's Config; the data shape; the number of classes (0 = unconditional).
    """
    from gcflow.training.builders import build_model
    from gcflow.training.config import from_dict
    from gcflow.training.run_state import LoadedRun

    path = Path(path)
    if not is_export(path):
        raise ckpt.CheckpointError(f"{path} is not a gcflow export folder (it needs {WEIGHTS} and {CONFIG})")
    info, weights = _read_weights(path / WEIGHTS)
    try:
        cfg = from_dict(json.loads((path / CONFIG).read_text()))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path / CONFIG}: {type(exc).__name__}; the export is damaged") from None
    model = build_model(cfg, tuple(info["data_shape"]), int(info["num_classes"]))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ckpt.CheckpointError(f"{path / WEIGHTS} does not fit the network of {path / CONFIG}: {first}") from None
    shape = tuple(int(n) for n in info["data_shape"])
    return LoadedRun(model.requires_grad_(False).to(device).eval(), cfg, shape, int(info["num_classes"]))


def _read_weights(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The `gcflow` metadata document and the tensors of an export's model.safetensors."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        weights = load_file(str(path))
        info = json.loads(meta["gcflow"])
        if info.get("format") != FORMAT:
            raise ValueError
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        raise ckpt.CheckpointError(f"{path} is not a gcflow export (unreadable, or no gcflow metadata)") from None
    if info.get("version", 0) > VERSION:
        raise ckpt.CheckpointError(f"{path} was exported by a newer gcflow (format {info['version']}); upgrade gcflow")
    return info, weights
