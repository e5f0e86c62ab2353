"""One typed configuration tree, command-line overrides with type checks, and validation.

Every field is addressable as `group.field=value` (e.g. `method.gc_mu=0.3`, `train.steps=2000`);
unknown keys and badly typed values are rejected with a one-line `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming the problem and the fix."""


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (shown by --help) and any further metadata; lists become tuples."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


_f = option  # short name for the many fields below


@dataclass
class DataConfig:
    name: str = _f("two-modes", "toy distribution (two-modes, ring8, grid25, gaussian) or image dataset name")
    root: str = _f("", "directory holding an image dataset's files (unused for toys and digits)")
    resolution: int = _f(0, "image side after resize/centre-crop for folder datasets (0 = dataset default)")
    flip: bool = _f(False, "random horizontal flips (image datasets)")


@dataclass
class NetworkConfig:
    kind: str = _f("mlp", "network: mlp (toys) or songunet (images, EDM DDPM++ U-Net)")
    width: int = _f(256, "mlp: hidden width")
    depth: int = _f(3, "mlp: residual blocks")
    channels: int = _f(128, "songunet: base channels")
    channel_mult: tuple[int, ...] = _f((1, 2, 2), "songunet: channel multiplier per level")
    num_blocks: tuple[int, ...] = _f((3,), "songunet: residual blocks per level (one number or one per level)")
    attn_resolutions: tuple[int, ...] = _f((16,), "songunet: resolutions with self-attention ('none' for no attention)")
    dropout: tuple[float, ...] = _f((0.0,), "dropout (one number or, for songunet, one per level)")
    embedding: str = _f("positional", "songunet: noise embedding, positional or fourier")
    noise_label_scale: float = _f(
        1000.0, "songunet: c_noise multiplier before the embedding (1000 as iCT; 1 as the paper's code)"
    )
    class_conditional: bool = _f(False, "condition on class labels (datasets with labels)")


@dataclass
class MethodConfig:
    pairs: str = _f(
        "ct",
        "objective: ct (consistency training), cd (distillation: method.teacher, else the exact "
        "velocity of the toy or of the empirical data), edm (diffusion pretraining), ect (ECT tuning)",
    )
    coupling: str = _f("independent", "data-noise coupling: independent (iCT) or ot (minibatch optimal transport)")
    gc_mu: float = _f(0.0, "mu: probability that a sample is a generator-augmented (GC) pair, in [0, 1]")
    gc_predictor: str = _f("ema", "GC predictor: ema (default), online, or frozen (a trained run, see gc_checkpoint)")
    gc_checkpoint: str = _f("", "run folder or checkpoint file of the frozen GC predictor")
    cd_solver: str = _f("euler", "ODE step for CD pairs: euler or heun")
    distance: str = _f(
        "pseudo_huber", "distance: pseudo_huber, l2 (squared norm) or l2_norm (Euclidean norm; old name l1)"
    )
    sigma_min: float = _f(0.002, "smallest noise level")
    sigma_max: float = _f(80.0, "largest noise level")
    sigma_data: float = _f(0.5, "data standard deviation used by the preconditioning")
    rho: float = _f(7.0, "Karras grid exponent")
    p_mean: float = _f(-1.1, "lognormal level sampling: mean of log sigma")
    p_std: float = _f(2.0, "lognormal level sampling: std of log sigma")
    s0: int = _f(10, "curriculum: initial number of grid intervals")
    s1: int = _f(1280, "curriculum: final number of grid intervals")
    teacher: str = _f("", "CD teacher: a gcflow diffusion run (method.pairs=edm) or a 'gcflow import-edm' file")
    init_from: str = _f("", "initialise the network from this diffusion run or imported file (ECT: the teacher)")
    ect_q: float = _f(2.0, "ECT: the gap t - r(t) shrinks by this factor per stage")
    ect_k: float = _f(8.0, "ECT: sigmoid mapping n(t) = 1 + k sigmoid(-b t), k")
    ect_b: float = _f(1.0, "ECT: sigmoid mapping n(t) = 1 + k sigmoid(-b t), b")
    ect_mapping: str = _f("sigmoid", "ECT: mapping r(t), sigmoid or const")
    ect_stages: int = _f(8, "ECT: number of equal stages over train.steps (200k / 8 = 25k iterations in ECT)")
    edm_sampler_steps: int = _f(18, "diffusion runs (method.pairs=edm): deterministic Heun steps when sampling")
    gc_mu_end: float = _f(-1.0, "mu at the last step, reached linearly from gc_mu over the run (-1 = constant mu)")
    gc_start: int = _f(0, "first step with GC pairs (mu = 0 before it)")


@dataclass
class OptimConfig:
    name: str = _f("lion", "optimizer: lion (as the paper) or adam")
    lr: float = _f(1e-4, "learning rate (constant)")
    betas: tuple[float, ...] = _f((0.9, 0.99), "optimizer betas")
    weight_decay: float = _f(0.0, "decoupled weight decay")
    ema_decay: float = _f(0.9999, "EMA decay per step (used when ema_half_life is 0)")
    ema_half_life: float = _f(0.0, "EMA half-life in training images (0 = use ema_decay)")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0 = no clipping, as the paper)")
    ema_schedule: str = _f(
        "constant", "EMA decay: constant (ema_decay or ema_half_life) or warmup (ema-pytorch's, as the paper)"
    )
    ema_update_every: int = _f(1, "update the EMA every this many steps (the paper: 5)")
    ema_start: int = _f(-1, "copy the weights into the EMA until this step (-1 = never; warmup needs >= 0)")
    ema_inv_gamma: float = _f(1.0, "warmup EMA: decay = min(ema_decay, 1 - (1 + e/inv_gamma)^-power)")
    ema_power: float = _f(2.0 / 3.0, "warmup EMA: the power of the warm-up decay")


@dataclass
class TrainConfig:
    steps: int = _f(4000, "training steps K (also sets the curriculum)")
    batch_size: int = _f(512, "global batch size (split across processes)")
    seed: int = _f(0, "random seed")
    device: str = _f("auto", "device: auto, cpu, cuda or cuda:N")
    eval_every: int = _f(1000, "evaluate every this many steps (0 = only at the end)")
    eval_samples: int = _f(1000, "samples per evaluation")
    checkpoint_every: int = _f(1000, "write a checkpoint every this many steps (0 = only at the end)")
    keep_checkpoints: int = _f(3, "how many recent checkpoints to keep")
    log_every: int = _f(50, "log a training record (loss, grad norm, lr, ...) to metrics.jsonl every this many steps")
    sample_steps: int = _f(1, "sampler steps for evaluation and samples.png")
    nonfinite: str = _f("stop", "on a non-finite loss or gradient: stop, or skip the step")
    threads: int = _f(0, "CPU threads for torch (0 = torch's default)")
    precision: str = _f("fp32", "network passes: fp32, bf16 or fp16 autocast, or auto (bf16 while checked to agree)")
    channels_last: bool = _f(True, "image networks use the channels-last memory layout (faster convolutions)")
    compile: bool = _f(False, "compile the training passes with torch.compile (slow first steps, faster after)")
    tensorboard: str = _f("auto", "TensorBoard events in RUN/tb: auto (when tensorboard is installed), on or off")
    precision_check_every: int = _f(2000, "precision=auto: recheck bf16 against fp32 every this many steps")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


GROUPS = tuple(f.name for f in dataclasses.fields(Config))
CHOICES: dict[str, tuple[str, ...]] = {
    "network.kind": ("mlp", "songunet"),
    "network.embedding": ("positional", "fourier"),
    "method.pairs": ("ct", "cd", "edm", "ect"),
    "method.ect_mapping": ("sigmoid", "const"),
    "method.coupling": ("independent", "ot"),
    "method.gc_predictor": ("ema", "online", "frozen"),
    "method.cd_solver": ("euler", "heun"),
    "method.distance": ("pseudo_huber", "l2", "l2_norm", "l1"),  # "l1": old name of l2_norm, still accepted
    "optim.name": ("lion", "adam", "radam"),
    "train.nonfinite": ("stop", "skip"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.tensorboard": ("auto", "on", "off"),
    "optim.ema_schedule": ("constant", "warmup"),
}


def iter_fields(cfg: Config | None = None) -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """Yield (dotted key, field, current value) for every leaf of the tree."""
    cfg = cfg or Config()
    for group in GROUPS:
        sub = getattr(cfg, group)
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            f.type = hints[f.name]  # resolve the annotation string once
            yield f"{group}.{f.name}", f, getattr(sub, f.name)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return tp.__name__


def parse_value(key: str, tp: Any, text: str) -> Any:
    """Parse `text` as the field type `tp`; raises ConfigError naming the key and the expected type."""
    text = text.strip()
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            if text.lower() in ("none", "[]", "()", ""):
                return ()
            parts = [p for p in text.strip("[]()").split(",") if p.strip()]
            if not parts:
                raise ValueError
            return tuple(parse_value(key, elem, p) for p in parts)
    except (ValueError, ConfigError):
        raise ConfigError(f"{key}={text!r} is not a valid {_type_name(tp)}; e.g. {key}={_example(tp)}") from None
    raise ConfigError(f"{key} has an unsupported type {tp}")


def _example(tp: Any) -> str:
    return {bool: "true", int: "100", float: "0.5", str: "name"}.get(tp, "1,2,2")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy of `cfg` with `group.field=value` overrides applied (type-checked)."""
    cfg = from_dict(to_dict(cfg))
    known = {key: f for key, f, _ in iter_fields(cfg)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form group.field=value; e.g. train.steps=2000")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("--")
        if key not in known:
            raise ConfigError(f"unknown option {key!r}; run 'gcflow train --help' for the list of options")
        group, name = key.split(".")
        setattr(getattr(cfg, group), name, parse_value(key, known[key].type, text))
    return cfg


def check_overrides_agree(items: list[tuple[str, str]]) -> None:
    """Refuse a setting given twice with different values (ConfigError, one line).

    Args:
        items: (how the user spelled it, "group.field=value") pairs, e.g. ("--mu 0.3", "method.gc_mu=0.3")
            and ("method.gc_mu=0.7", "method.gc_mu=0.7"). Values are compared after parsing, so
            `0.3` and `.30` agree; unknown keys and bad values are left to `apply_overrides`.
    """
    known = {key: f for key, f, _ in iter_fields()}
    seen: dict[str, tuple[str, Any]] = {}
    for spelling, item in items:
        key, _, text = item.partition("=")
        key = key.strip().removeprefix("--")
        if key not in known or not _:
            continue
        try:
            value = parse_value(key, known[key].type, text)
        except ConfigError:
            continue
        if key in seen and seen[key][1] != value:
            raise ConfigError(
                f"{key} is given twice with different values ({seen[key][0]} and {spelling}); keep one of them"
            )
        seen.setdefault(key, (spelling, value))


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config as plain JSON-able dicts (tuples become lists)."""
    return {
        g: {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(getattr(cfg, g)).items()}
        for g in GROUPS
    }


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError("a configuration must be a JSON object of groups")
    cfg = Config()
    known = {key: f for key, f, _ in iter_fields(cfg)}
    for group, values in data.items():
        if group not in GROUPS or not isinstance(values, dict):
            raise ConfigError(f"unknown configuration group {group!r}; groups are {', '.join(GROUPS)}")
        for name, value in values.items():
            key = f"{group}.{name}"
            if key not in known:
                raise ConfigError(f"unknown option {key!r}; run 'gcflow train --help' for the list of options")
            setattr(getattr(cfg, group), name, _coerce(key, known[key].type, value))
    return cfg


def _coerce(key: str, tp: Any, value: Any) -> Any:
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(key, typing.get_args(tp)[0], v) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} is not a valid {_type_name(tp)}")
    return value


def save_config(cfg: Config, path: Any) -> None:
    """Write the resolved config as JSON."""
    with open(path, "w") as fh:
        json.dump(to_dict(cfg), fh, indent=2)
        fh.write("\n")


def load_config(path: Any) -> Config:
    """Read a config.json written by `save_config`."""
    with open(path) as fh:
        return from_dict(json.load(fh))


def validate(cfg: Config) -> None:
    """Check ranges and choices; raises ConfigError with a one-line message and the fix."""
    for key, choices in CHOICES.items():
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    m, o, t = cfg.method, cfg.optim, cfg.train
    for key, _f, value in iter_fields(cfg):
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{key}={value} is not a finite number")
    if not (m.sigma_min > 0 and m.sigma_max > 0):
        raise ConfigError(
            f"noise levels must be positive, got method.sigma_min={m.sigma_min}, method.sigma_max={m.sigma_max}"
        )
    if m.sigma_min >= m.sigma_max:
        raise ConfigError(f"method.sigma_min={m.sigma_min} must be smaller than method.sigma_max={m.sigma_max}")
    _check_float32_range(cfg)
    if m.sigma_data <= 0 or m.rho <= 0 or m.p_std <= 0:
        raise ConfigError("method.sigma_data, method.rho and method.p_std must be positive")
    if not 0.0 <= m.gc_mu <= 1.0:
        raise ConfigError(f"method.gc_mu={m.gc_mu} is outside [0, 1]; it is the probability of a GC pair")
    if m.pairs == "cd" and m.gc_mu > 0:
        raise ConfigError("method.pairs=cd cannot be combined with method.gc_mu>0; GC builds CT pairs")
    if m.gc_predictor == "frozen" and m.gc_mu > 0 and not m.gc_checkpoint:
        raise ConfigError("method.gc_predictor=frozen needs method.gc_checkpoint=RUN_DIR_OR_FILE")
    check_teacher_options(cfg)
    if not (1 <= m.s0 <= m.s1):
        raise ConfigError(f"need 1 <= method.s0 <= method.s1, got {m.s0} and {m.s1}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive")
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay={o.ema_decay} must be in [0, 1)")
    if o.ema_half_life < 0 or o.grad_clip < 0 or o.weight_decay < 0:
        raise ConfigError("optim.ema_half_life, optim.grad_clip and optim.weight_decay must be >= 0")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas={list(o.betas)} must be two numbers in [0, 1)")
    if t.steps < 1 or t.batch_size < 1 or t.eval_samples < 2:
        raise ConfigError("train.steps and train.batch_size must be >= 1 and train.eval_samples >= 2")
    if t.threads < 0:
        raise ConfigError(f"train.threads={t.threads} must be >= 0 (0 = torch's default)")
    if min(t.eval_every, t.checkpoint_every, t.log_every) < 0 or t.keep_checkpoints < 1 or t.sample_steps < 1:
        raise ConfigError(
            "train.eval_every, checkpoint_every, log_every must be >= 0; keep_checkpoints, sample_steps >= 1"
        )
    _validate_schedules(cfg)
    if any(not 0.0 <= p < 1.0 for p in cfg.network.dropout):
        raise ConfigError(f"network.dropout={list(cfg.network.dropout)} must be in [0, 1)")
    if cfg.network.width < 1 or cfg.network.depth < 1 or cfg.network.channels < 1:
        raise ConfigError("network.width, network.depth and network.channels must be >= 1")
    if t.tensorboard == "on":
        from gcflow.sinks import TB_EXTRA_HINT, tensorboard_available

        if not tensorboard_available():
            raise ConfigError(
                f"train.tensorboard=on needs the tensorboard package: {TB_EXTRA_HINT}; or train.tensorboard=off"
            )
    _check_data_name(cfg.data.name)
    _check_device(t.device)


# Training runs in float32: the preconditioning squares sigma (c_skip, c_out, c_in need sigma^2 +
# sigma_data^2) and the loss squares differences of size ~sigma, so sigma^2 times a safety factor for
# noise draws and batch sums must stay far below float32's largest value (3.4e38).
SIGMA_RANGE = (1e-30, 1e15)  # allowed [sigma_min, sigma_max]; 1e-30 is far above float32's smallest normal, 1.2e-38


def _check_float32_range(cfg: Config) -> None:
    """Noise levels whose float32 arithmetic would overflow or underflow are refused (e.g. sigma_max=1e39)."""
    m, (lo, hi) = cfg.method, SIGMA_RANGE
    if m.sigma_max > hi or m.sigma_min < lo:
        raise ConfigError(
            f"method.sigma_min={m.sigma_min:g} and method.sigma_max={m.sigma_max:g} must lie in "
            f"[{lo:g}, {hi:g}]: training computes sigma^2 in float32, which would overflow"
        )


def _check_data_name(name: str) -> None:
    """data.name must be a toy distribution or an image dataset gcflow can read."""
    from gcflow.data.images import IMAGE_DATASETS
    from gcflow.toy.mixture import TOY_PRESETS

    if name not in TOY_PRESETS and name not in IMAGE_DATASETS:
        raise ConfigError(
            f"data.name={name!r} is not a dataset gcflow knows; choose a toy ({', '.join(TOY_PRESETS)}) "
            f"or an image dataset ({', '.join(IMAGE_DATASETS)})"
        )


# Devices the trainer supports; others (xpu, meta, ...) are refused before any folder is made.
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def _check_device(name: str) -> None:
    """train.device must be auto, cpu, cuda[:N] or mps, and available on this machine."""
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in _DEVICE_TYPES:
        raise ConfigError(f"train.device={name!r}: gcflow trains on cpu, cuda or mps only; use train.device=auto")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(f"train.device={name!r} but this machine has no MPS (Apple GPU) device; use train.device=cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use train.device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA devices")


def check_teacher_options(cfg: Config) -> None:
    """The options of the teacher modes (method.pairs edm/ect, method.teacher, method.init_from)."""
    m = cfg.method
    if m.pairs == "edm" and (m.gc_mu > 0 or m.teacher):
        raise ConfigError("method.pairs=edm trains a diffusion model; drop method.gc_mu and method.teacher")
    if m.teacher and m.pairs != "cd":
        raise ConfigError(
            f"method.teacher is used by method.pairs=cd only (got method.pairs={m.pairs}); use method.init_from"
        )
    if m.ect_q <= 1 or m.ect_k < 0 or m.ect_b < 0 or m.ect_stages < 1 or m.edm_sampler_steps < 1:
        raise ConfigError("need method.ect_q > 1, method.ect_k, ect_b >= 0, method.ect_stages, edm_sampler_steps >= 1")


def _validate_schedules(cfg: Config) -> None:
    """The EMA and μ schedules and the precision check (issue 11)."""
    m, o, t = cfg.method, cfg.optim, cfg.train
    if o.ema_update_every < 1 or o.ema_start < -1:
        raise ConfigError(
            f"need optim.ema_update_every >= 1 and optim.ema_start >= -1, got {o.ema_update_every}, {o.ema_start}"
        )
    if o.ema_inv_gamma <= 0 or o.ema_power <= 0:
        raise ConfigError(f"optim.ema_inv_gamma={o.ema_inv_gamma} and optim.ema_power={o.ema_power} must be > 0")
    if o.ema_schedule == "warmup" and (o.ema_half_life > 0 or o.ema_start < 0):
        raise ConfigError("optim.ema_schedule=warmup needs optim.ema_half_life=0 and optim.ema_start>=0 (e.g. 0)")
    if m.gc_mu_end != -1.0 and not 0.0 <= m.gc_mu_end <= 1.0:
        raise ConfigError(f"method.gc_mu_end={m.gc_mu_end} must be in [0, 1] (or -1 for a constant mu)")
    if m.gc_start < 0:
        raise ConfigError(f"method.gc_start={m.gc_start} must be >= 0")
    if m.pairs == "cd" and m.gc_mu_end > 0:
        raise ConfigError("method.pairs=cd cannot be combined with method.gc_mu_end>0; GC builds CT pairs")
    if m.gc_predictor == "frozen" and m.gc_mu_end > 0 and not m.gc_checkpoint:
        raise ConfigError("method.gc_predictor=frozen needs method.gc_checkpoint=RUN_DIR_OR_FILE")
    if t.precision_check_every < 1:
        raise ConfigError(f"train.precision_check_every={t.precision_check_every} must be >= 1")


def describe_options(cfg: Config | None = None) -> str:
    """One line per option: key, type, value and help (for --help); values are `cfg`'s (default: the library's)."""
    lines = []
    for key, f, value in iter_fields(cfg):
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  {key:<26} {_type_name(f.type):<14} {str(shown):<14} {f.metadata['help']}")
    return "\n".join(lines)
