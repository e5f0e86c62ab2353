"""Image presets: the paper's four settings (method spec §10) and CPU-sized digits / MNIST runs.

Each setting comes as -ic (iCT, independent coupling), -ot (minibatch OT coupling) and -gc
(generator-augmented pairs, μ = 0.5). As in the paper's released configs, IC and OT runs use the
setting's dropout and GC runs use dropout 0. LSUN Church 64² has no released config; it reuses the
CelebA 64² network and optimiser settings.
"""

from __future__ import annotations

from gcflow.training.config import Config
from gcflow.training.presets import Preset, register

_PAPER_COMMON = ("network.kind=songunet", "network.channels=128", "network.embedding=positional",
                 "network.noise_label_scale=1", "optim.name=lion", "optim.betas=0.9,0.99", "optim.ema_decay=0.9999", "data.flip=true",
                 "train.eval_every=5000", "train.eval_samples=5000", "train.checkpoint_every=5000", "train.log_every=100")

_SETTINGS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("CIFAR-10 32x32", ("data.name=cifar10", "network.channel_mult=1,2,2", "network.num_blocks=3",
                                   "network.attn_resolutions=none", "train.batch_size=512", "train.steps=100000", "optim.lr=1e-4"), "0.3"),
    "imagenet32": ("ImageNet 32x32", ("data.name=imagenet32", "network.channel_mult=1,1,2", "network.num_blocks=3,5,7",
                                      "network.attn_resolutions=16", "train.batch_size=512", "train.steps=150000", "optim.lr=8e-5"), "0,0.2,0.2"),
    "celeba64": ("CelebA 64x64", ("data.name=celeba64", "network.channel_mult=1,2,2,2", "network.num_blocks=3,3,4,5",
                                  "network.attn_resolutions=none", "train.batch_size=128", "train.steps=150000", "optim.lr=8e-5"), "0,0,0.2,0.2"),
    "lsun-church64": ("LSUN Church 64x64 (CelebA-64 settings; no released config)",
                      ("data.name=lsun-church64", "network.channel_mult=1,2,2,2", "network.num_blocks=3,3,4,5",
                       "network.attn_resolutions=none", "train.batch_size=128", "train.steps=150000", "optim.lr=8e-5"), "0,0,0.2,0.2"),
}

# CPU-sized runs on real images. digits: scikit-learn's bundled 8x8 digits (no download). A 3 000-step
# budget cannot use iCT's full curriculum: reaching N = 1280 in the last 375 steps made both IC and GC
# worse (classifier FD 28 -> 42 and 33 -> 56 measured here), so the curriculum stops at s1 = 160.
_DIGITS = ("data.name=digits", "network.kind=songunet", "network.channels=16", "network.channel_mult=1,2",
           "network.num_blocks=1", "network.attn_resolutions=4", "optim.name=adam", "optim.lr=5e-4",
           "optim.betas=0.9,0.999", "optim.ema_decay=0.995", "train.batch_size=128", "train.steps=3000", "method.s1=160",
           "train.eval_every=1000", "train.eval_samples=1000", "train.checkpoint_every=1000",
           "train.threads=1")  # small convolutions: one thread is faster on 2 cores (see presets.py)
_MNIST = ("data.name=mnist", "network.kind=songunet", "network.channels=64", "network.channel_mult=1,2,2",
          "network.num_blocks=2", "network.attn_resolutions=7", "optim.name=lion", "optim.lr=1e-4",
          "optim.betas=0.9,0.99", "optim.ema_decay=0.999", "train.batch_size=256", "train.steps=20000",
          "train.eval_every=2000", "train.eval_samples=5000", "train.checkpoint_every=2000")

_KINDS = {
    "ic": ("iCT, independent coupling", ()),
    "ot": ("iCT, minibatch OT coupling", ("method.coupling=ot",)),
    "gc": ("generator-augmented pairs, mu = 0.5", ("method.gc_mu=0.5",)),
}

for _name, (_title, _over, _dropout) in _SETTINGS.items():
    for _kind, (_what, _extra) in _KINDS.items():
        _drop = "0" if _kind == "gc" else _dropout
        register(f"{_name}-{_kind}", Preset(f"{_title}, {_what} (paper setting, GPU)", _PAPER_COMMON + _over + (f"network.dropout={_drop}",) + _extra))

_SMALL = {"digits": ("scikit-learn 8x8 digits, {} (CPU, a few minutes)", _DIGITS),
          "mnist": ("MNIST 28x28, {} (GPU-sized; needs data.root=DIR with the idx files)", _MNIST)}
for _name, (_title, _base) in _SMALL.items():
    for _kind, (_what, _extra) in _KINDS.items():
        _drop = "0" if _kind == "gc" else "0.1"
        register(f"{_name}-{_kind}", Preset(_title.format(_what), _base + (f"network.dropout={_drop}",) + _extra))

_SHAPES = {"cifar10": ((3, 32, 32), 10), "imagenet32": ((3, 32, 32), 1000), "celeba64": ((3, 64, 64), 0),
           "lsun-church64": ((3, 64, 64), 0), "ffhq64": ((3, 64, 64), 0), "digits": ((1, 8, 8), 10),
           "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10)}


def dataset_shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    """(C, H, W) and the number of classes of a named image dataset, without reading its files."""
    name = cfg.data.name
    if name in _SHAPES:
        shape, classes = _SHAPES[name]
        if cfg.data.resolution:
            shape = (shape[0], cfg.data.resolution, cfg.data.resolution)
        return shape, classes
    if name == "folder":
        r = cfg.data.resolution or 64
        return (3, r, r), 0
    raise KeyError(f"unknown dataset {name!r}")
