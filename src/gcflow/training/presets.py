"""Named presets, each written once as overrides on top of the defaults.

`gcflow presets` lists them; `gcflow train --preset NAME key=value ...` starts from one.
"""

from __future__ import annotations

from dataclasses import dataclass

from gcflow.training.config import Config, ConfigError, apply_overrides


@dataclass(frozen=True)
class Preset:
    description: str
    overrides: tuple[str, ...]


# The 2-D toy: a one-minute CPU run. Adam and a short EMA suit 3 000 steps; the curriculum runs
# over the whole run as in iCT.
_TOY = (
    "data.name=ring8",
    "network.kind=mlp", "network.width=128", "network.depth=3",
    "optim.name=adam", "optim.lr=1e-3", "optim.betas=0.9,0.999", "optim.ema_decay=0.995",
    "train.steps=3000", "train.batch_size=256", "train.eval_every=500", "train.eval_samples=1000",
    "train.checkpoint_every=1000",
    # One thread: these ops are too small to gain from intra-op threads, and on 2 cores a second
    # thread spin-waits whenever the other core is busy (measured: 8x slower wall time, 9x the CPU).
    "train.threads=1",
)

PRESETS: dict[str, Preset] = {
    "toy-gc": Preset("2-D ring of 8 modes, generator-augmented pairs with mu = 0.5 (the default job, ~1 min on CPU)", _TOY + ("method.gc_mu=0.5",)),
    "toy-ic": Preset("2-D ring of 8 modes, iCT with independent coupling", _TOY),
    "toy-ot": Preset("2-D ring of 8 modes, iCT with minibatch optimal-transport coupling", _TOY + ("method.coupling=ot",)),
    "toy-cd": Preset("2-D ring of 8 modes, oracle consistency distillation with the exact velocity", _TOY + ("method.pairs=cd",)),
}

DEFAULT_PRESET = "toy-gc"


def register(name: str, preset: Preset) -> None:
    """Add a preset (used by the image presets module); names must be unique."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is defined twice")
    PRESETS[name] = preset


def load_preset(name: str) -> Config:
    """The Config of a named preset; unknown names fail with a one-line ConfigError."""
    _load_extra_presets()
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; run 'gcflow presets' to list them") from None
    return apply_overrides(Config(), list(preset.overrides))


def all_presets() -> dict[str, Preset]:
    _load_extra_presets()
    return dict(PRESETS)


def _load_extra_presets() -> None:
    try:
        import gcflow.training.image_presets  # noqa: F401  (registers the image presets on import)
    except ModuleNotFoundError as exc:
        if exc.name != "gcflow.training.image_presets":
            raise
