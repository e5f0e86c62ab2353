"""Named presets, each written once as overrides on top of the defaults.

`gcflow presets` lists them; `gcflow train --preset NAME key=value ...` starts from one.

Toys: one-minute CPU runs. Images: the paper's four settings (method spec §10) and CPU-sized digits /
MNIST runs, each as -ic (iCT, independent coupling), -ot (minibatch OT coupling) and -gc
(generator-augmented pairs, μ = 0.5). As in the paper's released configs, IC and OT runs use the
setting's dropout and GC runs use dropout 0. LSUN Church 64² has no released config; it reuses the
CelebA 64² network and optimiser settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from gcflow.training.config import Config, ConfigError, apply_overrides


@dataclass(frozen=True)
class Preset:
    """A one-line description and the `group.field=value` overrides applied to the defaults."""

    description: str
    overrides: tuple[str, ...]


# The 2-D toy: a one-minute CPU run. Adam and a short EMA suit 3 000 steps; the curriculum runs
# over the whole run as in iCT.
_TOY = (
    "data.name=ring8",
    "network.kind=mlp",
    "network.width=128",
    "network.depth=3",
    "optim.name=adam",
    "optim.lr=1e-3",
    "optim.betas=0.9,0.999",
    "optim.ema_decay=0.995",
    "train.steps=3000",
    "train.batch_size=256",
    "train.eval_every=500",
    "train.eval_samples=1000",
    "train.checkpoint_every=1000",
    # One thread: these ops are too small to gain from intra-op threads, and on 2 cores a second
    # thread spin-waits whenever the other core is busy (measured: 8x slower wall time, 9x the CPU).
    "train.threads=1",
)

TOY_PRESETS: dict[str, Preset] = {
    "toy-gc": Preset(
        "2-D ring of 8 modes, generator-augmented pairs with mu = 0.5 (the default job, ~1 min on CPU)",
        _TOY + ("method.gc_mu=0.5",),
    ),
    "toy-ic": Preset("2-D ring of 8 modes, iCT with independent coupling", _TOY),
    "toy-ot": Preset(
        "2-D ring of 8 modes, iCT with minibatch optimal-transport coupling", _TOY + ("method.coupling=ot",)
    ),
    "toy-cd": Preset(
        "2-D ring of 8 modes, oracle consistency distillation with the exact velocity", _TOY + ("method.pairs=cd",)
    ),
}

_PAPER_COMMON = (
    "network.kind=songunet",
    "network.channels=128",
    "network.embedding=positional",
    "network.noise_label_scale=1",
    "optim.name=lion",
    "optim.betas=0.9,0.99",
    # The released code's EMA (ema-pytorch 0.2.3: beta 0.9999, update_every 5, warm-up decay, weights
    # copied until ema_start), fp32 passes (TF32 convolutions on CUDA) and no flips (method spec §10).
    "optim.ema_schedule=warmup",
    "optim.ema_decay=0.9999",
    "optim.ema_update_every=5",
    "optim.ema_start=0",
    "train.precision=fp32",
    "data.flip=false",
    "train.eval_every=5000",
    "train.eval_samples=5000",
    "train.checkpoint_every=5000",
    "train.log_every=100",
)

# CelebA 64x64 as released; LSUN Church (no released config) reuses it word for word.
_CELEBA64_SETTINGS = (
    "network.channel_mult=1,2,2,2",
    "network.num_blocks=3,3,4,5",
    "network.attn_resolutions=none",
    "train.batch_size=128",
    "train.steps=150000",
    "optim.lr=8e-5",
)
_SETTINGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": (
        "CIFAR-10 32x32",
        (
            "data.name=cifar10",
            "network.channel_mult=1,2,2",
            "network.num_blocks=3",
            "network.attn_resolutions=none",
            "train.batch_size=512",
            "train.steps=100000",
            "optim.lr=1e-4",
        ),
        "0.3",
    ),
    "imagenet32": (
        "ImageNet 32x32",
        (
            "data.name=imagenet32-full",  # full ImageNet, Resize(32) + CenterCrop(32), as the released code
            "network.channel_mult=1,1,2",
            "network.num_blocks=3,5,7",
            "network.attn_resolutions=16",
            "train.batch_size=512",
            "train.steps=150000",
            "optim.lr=8e-5",
            "optim.ema_start=10000",  # the released ImageNet config omits ema_start: its default is 10 000
        ),
        "0,0.2,0.2",
    ),
    "celeba64": (
        "CelebA 64x64",
        ("data.name=celeba64", *_CELEBA64_SETTINGS),
        "0,0,0.2,0.2",
    ),
    "lsun-church64": (
        "LSUN Church 64x64 (CelebA-64 settings; no released config)",
        ("data.name=lsun-church64", *_CELEBA64_SETTINGS),  # LSUN Church has no released config
        "0,0,0.2,0.2",
    ),
}

# CPU-sized runs on real images. digits: scikit-learn's bundled 8x8 digits (no download). A 3 000-step
# budget cannot use iCT's full curriculum: reaching N = 1280 in the last 375 steps made both IC and GC
# worse (classifier FD 28 -> 42 and 33 -> 56 measured here), so the curriculum stops at s1 = 160.
_DIGITS = (
    "data.name=digits",
    "network.kind=songunet",
    "network.channels=16",
    "network.channel_mult=1,2",
    "network.num_blocks=1",
    "network.attn_resolutions=4",
    "optim.name=adam",
    "optim.lr=5e-4",
    "optim.betas=0.9,0.999",
    "optim.ema_decay=0.995",
    "train.batch_size=128",
    "train.steps=3000",
    "method.s1=160",
    "train.eval_every=1000",
    "train.eval_samples=1000",
    "train.checkpoint_every=1000",
    "train.threads=1",
)  # small convolutions: one thread is faster on 2 cores (see _TOY above)
_MNIST = (
    "data.name=mnist",
    "network.kind=songunet",
    "network.channels=64",
    "network.channel_mult=1,2,2",
    "network.num_blocks=2",
    "network.attn_resolutions=7",
    "optim.name=lion",
    "optim.lr=1e-4",
    "optim.betas=0.9,0.99",
    "optim.ema_decay=0.999",
    "train.batch_size=256",
    "train.steps=20000",
    "train.eval_every=2000",
    "train.eval_samples=5000",
    "train.checkpoint_every=2000",
)

_KINDS = {
    "ic": ("iCT, independent coupling", ()),
    "ot": ("iCT, minibatch OT coupling", ("method.coupling=ot",)),
    "gc": ("generator-augmented pairs, mu = 0.5", ("method.gc_mu=0.5",)),
}

_SMALL = {
    "digits": ("scikit-learn 8x8 digits, {} (CPU, a few minutes)", _DIGITS),
    "mnist": ("MNIST 28x28, {} (GPU-sized; needs data.root=DIR with the idx files)", _MNIST),
}


def _image_presets() -> dict[str, Preset]:
    """NAME-ic, NAME-ot and NAME-gc for each paper setting and each CPU-sized image run."""
    out: dict[str, Preset] = {}
    for name, (title, over, dropout) in _SETTINGS.items():
        for kind, (what, extra) in _KINDS.items():
            drop = "0" if kind == "gc" else dropout
            out[f"{name}-{kind}"] = Preset(
                f"{title}, {what} (paper setting, GPU)", _PAPER_COMMON + over + (f"network.dropout={drop}",) + extra
            )
    for name, (title, base) in _SMALL.items():
        for kind, (what, extra) in _KINDS.items():
            drop = "0" if kind == "gc" else "0.1"
            out[f"{name}-{kind}"] = Preset(title.format(what), base + (f"network.dropout={drop}",) + extra)
    return out


# Training from a teacher (docs/teacher.md). digits: a diffusion teacher in minutes on the CPU, then
# CD from it or ECT tuning initialised from it; the tuned runs read the teacher from runs/digits-edm
# (train it with --out runs/digits-edm, or pass method.init_from= / method.teacher=).
_DIGITS_EDM = _DIGITS + (
    "method.pairs=edm",
    "method.p_mean=-1.2",  # EDM's lognormal σ
    "method.p_std=1.2",
    "optim.lr=1e-3",
    "network.dropout=0.1",
    "train.steps=3000",
    "method.edm_sampler_steps=18",
)
_DIGITS_ECT = _DIGITS + (
    "method.pairs=ect",
    "method.init_from=runs/digits-edm",
    "method.distance=l2_norm",  # ECT: c = 0, the loss is ‖f(x_t) − sg f(x_r)‖ / (t − r)
    "method.p_mean=-1.1",
    "method.p_std=2.0",
    "method.ect_stages=4",
    "network.dropout=0.1",  # the teacher's
    "train.steps=1000",
)
# CIFAR-10: EDM's DDPM++ network (the released edm-cifar10-32x32-uncond-vp.pkl; import it with
# 'gcflow import-edm'), EDM's Adam at lr 1e-3, batch 512, EMA half-life 500k images, no flips.
_CIFAR_DDPMPP = (
    "data.name=cifar10",
    "network.kind=songunet",
    "network.channels=128",
    "network.channel_mult=2,2,2",
    "network.num_blocks=4",
    "network.attn_resolutions=16",
    "network.embedding=positional",
    "network.noise_label_scale=1",
    "train.eval_every=5000",
    "train.eval_samples=5000",
    "train.checkpoint_every=5000",
    "train.log_every=100",
)
_CIFAR_EDM = _CIFAR_DDPMPP + (
    "method.pairs=edm",
    "method.p_mean=-1.2",
    "method.p_std=1.2",
    "network.dropout=0.13",
    "optim.name=adam",
    "optim.lr=1e-3",
    "optim.betas=0.9,0.999",
    "optim.ema_half_life=500000",
    "train.batch_size=512",
    "train.steps=390000",
)
# ECT (locuslab/ect run_ecm.sh): RAdam lr 1e-4, batch 128, dropout 0.2, constant EMA, L2-norm loss,
# Δt halving every 25k iterations. The paper's Table-2 budgets: short (~4k steps, ECT's one-hour
# settings q = 256 in one stage, EMA 0.9993) and long (100k steps = 4 stages of 25k, EMA 0.9999).
_CIFAR_ECT = _CIFAR_DDPMPP + (
    "method.pairs=ect",
    "method.init_from=teachers/edm-cifar10-32x32-uncond-vp.safetensors",
    "method.distance=l2_norm",
    "method.p_mean=-1.1",
    "method.p_std=2.0",
    "network.dropout=0.2",
    "optim.name=radam",
    "optim.lr=1e-4",
    "optim.betas=0.9,0.999",
    "train.batch_size=128",
)
_ECT_SHORT = ("train.steps=4000", "method.ect_q=256", "method.ect_stages=1", "optim.ema_decay=0.9993")
_ECT_LONG = ("train.steps=100000", "method.ect_q=2", "method.ect_stages=4", "optim.ema_decay=0.9999")

TEACHER_PRESETS: dict[str, Preset] = {
    "digits-edm": Preset("scikit-learn 8x8 digits, EDM diffusion pretraining (a CPU teacher in minutes)", _DIGITS_EDM),
    "digits-cd": Preset(
        "8x8 digits, consistency distillation from the teacher in runs/digits-edm (method.teacher)",
        _DIGITS + ("method.pairs=cd", "method.teacher=runs/digits-edm", "network.dropout=0.1"),
    ),
    "digits-cd-oracle": Preset(
        "8x8 digits, oracle CD with the exact velocity of the empirical training set",
        _DIGITS + ("method.pairs=cd", "network.dropout=0.1"),
    ),
    "digits-ect-ic": Preset("8x8 digits, ECT tuning from the teacher in runs/digits-edm", _DIGITS_ECT),
    "digits-ect-gc": Preset(
        "8x8 digits, ECT tuning from runs/digits-edm with GC pairs, mu = 0.3", _DIGITS_ECT + ("method.gc_mu=0.3",)
    ),
    "cifar10-edm": Preset(
        "CIFAR-10 32x32, EDM diffusion pretraining with DDPM++ (GPU; most users import one)", _CIFAR_EDM
    ),
    "cifar10-ect-ic": Preset(
        "CIFAR-10, ECT from an imported EDM teacher, short budget (~4k steps, GPU)", _CIFAR_ECT + _ECT_SHORT
    ),
    "cifar10-ect-gc": Preset(
        "CIFAR-10, ECT from an imported EDM teacher with GC mu = 0.3, short budget (~4k steps)",
        _CIFAR_ECT + _ECT_SHORT + ("method.gc_mu=0.3",),
    ),
    "cifar10-ect-ic-long": Preset(
        "CIFAR-10, ECT from an imported EDM teacher, long budget (100k steps, GPU)", _CIFAR_ECT + _ECT_LONG
    ),
    "cifar10-ect-gc-long": Preset(
        "CIFAR-10, ECT with GC mu = 0.3, long budget (100k steps, GPU)", _CIFAR_ECT + _ECT_LONG + ("method.gc_mu=0.3",)
    ),
}

PRESETS: dict[str, Preset] = {**TOY_PRESETS, **_image_presets(), **TEACHER_PRESETS}

DEFAULT_PRESET = "toy-gc"


def load_preset(name: str) -> Config:
    """The Config of a named preset; unknown names fail with a one-line ConfigError."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; run 'gcflow presets' to list them") from None
    return apply_overrides(Config(), list(preset.overrides))


def all_presets() -> dict[str, Preset]:
    """Every preset by name (a copy), toys first."""
    return dict(PRESETS)


# Fashion-MNIST downsampled to 14x14 (issue 15's second dataset on CPU): the digits network with one
# more level of attention-free width (14 -> 7), the digits optimiser, and its shortened curriculum.
# Needs data.root=DIR with the idx files. Evaluated with the classifier preset "fashion-mnist@14".
_FASHION14 = (
    "data.name=fashion-mnist",
    "data.resolution=14",
    "network.kind=songunet",
    "network.channels=16",
    "network.channel_mult=1,2",
    "network.num_blocks=1",
    "network.attn_resolutions=7",
    "optim.name=adam",
    "optim.lr=5e-4",
    "optim.betas=0.9,0.999",
    "optim.ema_decay=0.995",
    "train.batch_size=128",
    "train.steps=3000",
    "method.s1=160",
    "train.eval_every=500",
    "train.eval_samples=1000",
    "train.checkpoint_every=1000",
    "train.threads=1",
)


def _fashion14_presets() -> dict[str, Preset]:
    """fashion14-ic, fashion14-ot (dropout 0.1) and fashion14-gc (dropout 0), as the digits presets."""
    out = {}
    for kind, (what, extra) in _KINDS.items():
        drop = "0" if kind == "gc" else "0.1"
        out[f"fashion14-{kind}"] = Preset(
            f"Fashion-MNIST at 14x14, {what} (CPU; needs data.root=DIR with the idx files)",
            _FASHION14 + (f"network.dropout={drop}",) + extra,
        )
    return out


PRESETS.update(_fashion14_presets())
