"""EDM's DDPM++ network (EDMPrecond → SongUNet) onto gcflow's SongUNet, as safetensors + JSON.

Name mapping (EDM `training/networks.py` → `gcflow.networks.songunet`), under EDM's `model.`:

    map_layer0/1.*                 → map_layer0/1.*
    map_label.weight (C, n)        → map_label.weight (n, C)   (gcflow stores the table transposed)
    map_augment.weight             → dropped (augmentation labels are zero/None at sampling)
    enc.{R}x{R}_conv.*             → enc_in.*
    enc.{name}.*, dec.{name}.*     → enc.{name}.*, dec.{name}.*   (UNetBlock sub-layers share names)
    dec.{R}x{R}_aux_norm/_aux_conv → out_norm.*, out_conv.*
    *.resample_filter              → dropped (gcflow's [1,1] resampling is built in)
    *.qkv.weight/bias              → channels reordered from EDM's (heads, head_dim, 3) to gcflow's (3, heads, head_dim)

Everything else agrees: EDM swaps its positional embedding to [sin, cos] as gcflow computes it,
with the same frequencies (endpoint=True); EDM feeds c_noise = log(σ)/4 unscaled, so the imported
network uses noise_label_scale = 1; GroupNorm eps is 1e-6 in both; one attention head.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.networks.songunet import SongUNet
from gcflow.precond import ConsistencyModel
from gcflow.teacher.edm_loss import Denoiser
from gcflow.teacher.edm_pickle import EDMPickleError, PersistentObject, module_tensors, safe_load

FORMAT = "gcflow-edm-teacher/1"
# EDMPrecond is a denoiser; ECT's ECMPrecond evaluates as a consistency model with σ_min (0.003).
PRECOND_KINDS = {"EDMPrecond": "edm", "ECMPrecond": "consistency"}
PRECOND_CLASSES = tuple(PRECOND_KINDS)
# EDM SongUNet's constructor defaults (training/networks.py), for keys a pickle's init_kwargs omit.
SONGUNET_DEFAULTS: dict[str, Any] = {
    "label_dim": 0,
    "augment_dim": 0,
    "model_channels": 128,
    "channel_mult": [1, 2, 2, 2],
    "channel_mult_emb": 4,
    "num_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.10,
    "label_dropout": 0.0,
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
}
DDPMPP = {
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
}


@dataclass
class EDMNetwork:
    """The denoiser read from an EDM pickle, as data.

    Attributes:
        precond: the preconditioner's class name (EDMPrecond or ECMPrecond).
        precond_kwargs: its constructor arguments (sigma_data, sigma_min, ...).
        model_kwargs: SongUNet's constructor arguments, EDM defaults filled in.
        tensors: EDM state-dict names under `model.` -> tensors.
    """

    precond: str
    precond_kwargs: dict
    model_kwargs: dict
    tensors: dict[str, Tensor]


def _plain(value: Any) -> Any:
    """JSON-able copy of init kwargs (numbers, strings, lists, dicts); anything else becomes its repr."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def _finite_or_none(value: Any) -> float | None:
    """A JSON-safe noise level: EDM's default sigma_max = inf (and absent values) become null."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_edm_network(data: bytes, key: str = "ema") -> EDMNetwork:
    """Find the denoiser `data[key]` of an EDM network-snapshot pickle and return it as `EDMNetwork`."""
    top = safe_load(data)
    if not isinstance(top, dict) or not isinstance(top.get(key), PersistentObject):
        raise EDMPickleError(f"not an EDM network snapshot: expected a dict with a persistent network under {key!r}")
    net = top[key]
    if net.class_name not in PRECOND_CLASSES:
        raise EDMPickleError(f"the network is a {net.class_name}; only {', '.join(PRECOND_CLASSES)} can be imported")
    model = net.state.get("_modules", {}).get("model")
    if not isinstance(model, PersistentObject) or model.class_name != "SongUNet":
        found = model.class_name if isinstance(model, PersistentObject) else "nothing"
        raise EDMPickleError(f"the denoiser's model is {found}; only EDM's SongUNet (DDPM++) can be imported")
    precond_kwargs = _plain(net.state.get("_init_kwargs") or {})
    model_kwargs = dict(SONGUNET_DEFAULTS)
    model_kwargs.update(_plain(model.state.get("_init_kwargs") or {}))
    return EDMNetwork(net.class_name, precond_kwargs, model_kwargs, module_tensors(model))


def gcflow_config(edm: EDMNetwork) -> dict[str, Any]:
    """gcflow SongUNet kwargs equivalent to the EDM network; refuses non-DDPM++ variants (one line)."""
    kw = edm.model_kwargs
    absent = [k for k in ("img_resolution", "in_channels", "out_channels") if k not in kw]
    if absent:
        raise EDMPickleError(f"the SongUNet in the file records no constructor arguments {absent}; cannot rebuild it")
    other = {k: kw[k] for k in DDPMPP if kw[k] != DDPMPP[k]}
    if other:
        raise EDMPickleError(f"only the DDPM++ SongUNet can be imported; this network has {other}")
    return {
        "img_resolution": int(kw["img_resolution"]),
        "in_channels": int(kw["in_channels"]),
        "out_channels": int(kw["out_channels"]),
        "model_channels": int(kw["model_channels"]),
        "channel_mult": [int(m) for m in kw["channel_mult"]],
        "num_blocks": int(kw["num_blocks"]),
        "attn_resolutions": [int(r) for r in kw["attn_resolutions"]],
        "dropout": float(kw["dropout"]),
        "embedding_type": "positional",
        "noise_label_scale": 1.0,
        "num_classes": int(kw["label_dim"]),
        "label_dropout": float(kw["label_dropout"]),
        "channel_mult_emb": int(kw["channel_mult_emb"]),
        "channels_per_head": None,
    }


def qkv_edm_to_gcflow(t: Tensor, heads: int = 1) -> Tensor:
    """Reorder qkv output channels (dim 0, size 3C) from EDM's (heads, C/heads, 3) to gcflow's (3, heads, C/heads)."""
    d = t.shape[0] // (3 * heads)
    return t.reshape(heads, d, 3, *t.shape[1:]).movedim(2, 0).reshape(t.shape).contiguous()


_DROPPED = re.compile(r"(^map_augment\.|\.resample_filter$)")


def map_name(name: str) -> str | None:
    """gcflow's parameter name for EDM's `name` (relative to `model.`), or None if it is dropped."""
    if _DROPPED.search(name):
        return None
    m = re.fullmatch(r"enc\.\d+x\d+_conv\.(weight|bias)", name)
    if m:
        return f"enc_in.{m.group(1)}"
    m = re.fullmatch(r"dec\.\d+x\d+_aux_(norm|conv)\.(weight|bias)", name)
    if m:
        return f"out_{m.group(1)}.{m.group(2)}"
    return name


def convert_tensors(edm: EDMNetwork) -> dict[str, Tensor]:
    """EDM tensors renamed and reshaped for gcflow's SongUNet (float32, contiguous)."""
    out: dict[str, Tensor] = {}
    for name, t in edm.tensors.items():
        target = map_name(name)
        if target is None:
            continue
        t = t.to(torch.float32)
        if target.endswith((".qkv.weight", ".qkv.bias")):
            t = qkv_edm_to_gcflow(t)
        elif target == "map_label.weight":
            t = t.t()
        out[target] = t.contiguous()
    return out


def build_teacher(config: dict[str, Any], tensors: dict[str, Tensor]) -> SongUNet:
    """gcflow's SongUNet from `config` holding exactly `tensors` (every name and shape must match)."""
    net = SongUNet(**config)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise EDMPickleError(
            f"the EDM weights do not fit gcflow's SongUNet (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise EDMPickleError(f"{name}: EDM shape {tuple(t.shape)} != gcflow shape {tuple(expected[name].shape)}")
    net.load_state_dict(tensors)
    return net


def import_edm_bytes(data: bytes, source: str = "") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Convert an EDM pickle's bytes to (gcflow tensors, JSON-able config with the preconditioning)."""
    edm = read_edm_network(data)
    config = gcflow_config(edm)
    tensors = convert_tensors(edm)
    build_teacher(config, tensors)  # validates names and shapes
    pk = edm.precond_kwargs
    meta = {
        "format": FORMAT,
        "network": config,
        "precond": {
            "kind": PRECOND_KINDS[edm.precond],
            "class": edm.precond,
            "sigma_data": float(pk.get("sigma_data", 0.5)),
            "sigma_min": float(pk.get("sigma_min", 0.0)),
            "sigma_max": _finite_or_none(pk.get("sigma_max")),
        },
        "source": {"file": source, "sha256": hashlib.sha256(data).hexdigest(), "edm_model_kwargs": edm.model_kwargs},
    }
    return tensors, meta


def write_teacher(out: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write `out` (safetensors, config in its metadata) and `out.with_suffix('.json')`; return the JSON path."""
    from safetensors.torch import save as st_save

    from gcflow.files import atomic_write_bytes, atomic_write_text

    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(out, st_save(tensors, metadata={"gcflow": text}))
    side = out.with_suffix(".json")
    atomic_write_text(side, text + "\n")
    return side


def load_teacher(path: str | Path) -> nn.Module:
    """The network from a file written by `write_teacher`, wrapped in its preconditioning, in eval mode.

    An EDM denoiser comes back as `Denoiser` D(x, σ); an ECT network as a `ConsistencyModel`
    f(x, σ) with its σ_min. Nothing from the file is executed (safetensors + JSON).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("gcflow", "{}"))
        if meta.get("format") != FORMAT:
            raise EDMPickleError(f"{path} is not a teacher written by 'gcflow import-edm'")
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
    net = build_teacher(meta["network"], tensors)
    pre = meta["precond"]
    if pre["kind"] == "consistency":
        return ConsistencyModel(net, sigma_data=pre["sigma_data"], sigma_min=pre["sigma_min"]).eval()
    return Denoiser(net, sigma_data=pre["sigma_data"]).eval()
