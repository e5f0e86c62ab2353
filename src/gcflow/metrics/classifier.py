"""A small CNN classifier whose penultimate features replace Inception on tiny grayscale datasets.

Inception-v3 features of 8×8 digits or 28×28 MNIST digits (upsampled to 299×299) say little
about digit quality, so for those datasets gcflow trains its own classifier once on the
training split, reports its test accuracy, caches it (safetensors, never a pickle) and uses its
penultimate layer as the feature space of a Fréchet distance ("classifier FD"; the same idea
as the "MNIST FID" of several generative-model papers) and its logits for an Inception-style
score.

Network (`SmallCNN`): stages of two 3×3 conv + SiLU, 2×2 max-pool between stages, a 2×2
adaptive average pool, then Linear → SiLU (the feature layer) → Linear (logits). Input is the
training scale, uint8 v ↦ v / 127.5 − 1. Training: AdamW, one-cycle learning rate, cross-entropy,
everything seeded (`torch.random.fork_rng`), so the same seed, data and thread count give the
same weights.

Determinism on CPU: the weights' bits depend on the intra-op thread count (measured: 1 and 2 threads
give different SHA-256s) and on the CPU kernels torch picks, so training and the reported test
accuracy always run with `TRAIN_THREADS` threads, whatever the caller's setting. The cache file name
carries a key over everything that decides the weights (dataset, architecture, training settings,
the training data's bytes, the torch version, `RECIPE`), so a classifier cached by another version
or with other settings is never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from gcflow.data.common import to_unit_range
from gcflow.files import atomic_write_bytes, atomic_write_text
from gcflow.metrics.protocol import MetricError

METADATA_KEY = "gcflow_classifier"
# Bump when the training code changes the weights for the same settings: it is part of the cache key.
RECIPE = "gcflow-classifier-train/1"
LR = 3e-3
WEIGHT_DECAY = 1e-4
# One thread: these convolutions are too small to gain from more (on a loaded 2-core machine two threads
# were 5-10× slower), and a fixed count makes the weights the same whatever the caller's setting.
TRAIN_THREADS = 1


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of `SmallCNN`; stored with the weights so loading rebuilds the same network."""

    image_size: int
    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64)
    feature_dim: int = 128


@dataclass(frozen=True)
class ClassifierPreset:
    """Architecture and training length for one dataset."""

    config: ClassifierConfig
    epochs: int
    batch_size: int = 64


# One line per dataset; unknown names fail loudly in `preset`.
_DIGITS_8 = ClassifierConfig(image_size=8, widths=(32, 64), feature_dim=64)
_GRAY_28 = ClassifierConfig(image_size=28, widths=(16, 32, 64), feature_dim=128)
PRESETS: dict[str, ClassifierPreset] = {
    "digits": ClassifierPreset(_DIGITS_8, epochs=20),
    "mnist": ClassifierPreset(_GRAY_28, epochs=3, batch_size=128),
    "fashion-mnist": ClassifierPreset(_GRAY_28, epochs=5, batch_size=128),
}
# Other resolutions of a dataset: "<dataset>@<side>", chosen by `preset_name` from the images' side.
_GRAY_14 = ClassifierConfig(image_size=14, widths=(16, 32, 64), feature_dim=128)
PRESETS["fashion-mnist@14"] = ClassifierPreset(_GRAY_14, epochs=5, batch_size=128)


def preset_name(dataset: str, image_size: int) -> str:
    """The PRESETS key for `dataset` at `image_size`: "<dataset>@<size>" when there is one and the
    dataset's own preset has another size (e.g. fashion-mnist at 14×14), else `dataset` itself."""
    sized = f"{dataset}@{image_size}"
    if dataset in PRESETS and PRESETS[dataset].config.image_size != image_size and sized in PRESETS:
        return sized
    return dataset


def preset(dataset: str) -> ClassifierPreset:
    """The classifier preset for a dataset name (see PRESETS)."""
    if dataset not in PRESETS:
        raise MetricError(f"no classifier preset for dataset {dataset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[dataset]


class SmallCNN(nn.Module):
    """Conv stages → 2×2 average pool → feature layer (`embed`) → logits (`forward`)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for k, width in enumerate(config.widths):
            if k > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.SiLU()]
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
            c_in = width
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c_in, config.feature_dim), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim) of images scaled to [−1, 1]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (N, num_classes) of images scaled to [−1, 1]."""
        return self.head(self.body(x))


@dataclass
class TrainReport:
    """What `train_classifier` measured: held-out accuracy and wall-clock time."""

    test_accuracy: float
    train_seconds: float
    epochs: int
    seed: int
    train_size: int
    test_size: int
    final_train_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def _check_images(images: Tensor, config: ClassifierConfig) -> None:
    expected = (config.in_channels, config.image_size, config.image_size)
    ok = isinstance(images, Tensor) and images.dtype == torch.uint8 and tuple(images.shape[1:]) == expected
    if not ok:
        got = f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
        raise MetricError(f"classifier expects uint8 images (N, {', '.join(map(str, expected))}), got {got}")


@torch.no_grad()
def accuracy(model: SmallCNN, images: Tensor, labels: Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of `model` on uint8 images and integer labels."""
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch):
        pred = model(to_unit_range(images[i : i + batch])).argmax(dim=1)
        correct += int((pred == labels[i : i + batch]).sum())
    return correct / images.shape[0]


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op CPU threads (None: leave torch's setting), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    config: ClassifierConfig,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    seed: int = 0,
    num_threads: int | None = TRAIN_THREADS,
    log: Callable[[str], None] | None = None,
) -> tuple[SmallCNN, TrainReport]:
    """Train a `SmallCNN` on uint8 images (N, C, H, W) with integer labels; report test accuracy.

    Deterministic given `seed` (initialisation and batch order come from it; the global RNG is
    left untouched). Training and the test accuracy run on CPU with `num_threads` intra-op threads
    (restored afterwards; see the module docstring for why one). None keeps torch's setting, and
    then the weights depend on it.
    """
    _check_images(train_images, config)
    _check_images(test_images, config)
    train_labels, test_labels = train_labels.long(), test_labels.long()
    if train_images.shape[0] != train_labels.shape[0] or test_images.shape[0] != test_labels.shape[0]:
        raise MetricError("images and labels differ in number")
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got {epochs}")
    start = time.perf_counter()
    with intra_op_threads(num_threads):
        model, history = _fit(train_images, train_labels, config, epochs, batch_size, lr, weight_decay, seed, log)
        model.eval().requires_grad_(False)
        test_accuracy = accuracy(model, test_images, test_labels)
    report = TrainReport(
        test_accuracy=test_accuracy,
        train_seconds=time.perf_counter() - start,
        epochs=epochs,
        seed=seed,
        train_size=int(train_images.shape[0]),
        test_size=int(test_images.shape[0]),
        final_train_loss=history[-1]["train_loss"],
        history=history,
    )
    return model, report


def _fit(
    train_images: Tensor,
    train_labels: Tensor,
    config: ClassifierConfig,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    log: Callable[[str], None] | None,
) -> tuple[SmallCNN, list[dict[str, float]]]:
    """The seeded training loop of `train_classifier`: AdamW, one-cycle lr, cross-entropy."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(config)
        g = torch.Generator().manual_seed(seed)
        x_train = to_unit_range(train_images)
        n = x_train.shape[0]
        steps_per_epoch = math.ceil(n / batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
        history: list[dict[str, float]] = []
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=g)
            loss_sum = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(model(x_train[idx]), train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * idx.numel()
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / n})
            if log is not None:
                log(f"classifier epoch {epoch + 1}/{epochs}: train loss {loss_sum / n:.4f}")
    return model, history


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class ClassifierExtractor:
    """Extractor (see `protocol.FeatureExtractor`): penultimate features and logits of a `SmallCNN`.

    Its `name` is `classifier-<dataset>-<first 12 hex digits of the weights' SHA-256>`, so
    reference statistics made with one trained classifier are refused for another (the protocol
    checks the name stored beside the statistics).
    """

    def __init__(self, model: SmallCNN, dataset: str, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.config = model.config
        self.dataset = dataset
        self.device = torch.device(device)
        self.fingerprint = weights_fingerprint(model)
        self.name = f"classifier-{dataset}-{self.fingerprint[:12]}"

    @torch.no_grad()
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images (N, C, H, W) of the trained shape → features (N, feature_dim) and logits (N, K),
        float32 on CPU."""
        _check_images(images, self.config)
        feats = self.model.embed(to_unit_range(images.to(self.device)))
        return feats.cpu(), self.model.head(feats).cpu()


def metadata_path(path: str | os.PathLike) -> Path:
    """The human-readable JSON copy of the metadata: `x.safetensors` → `x.safetensors.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_classifier(
    path: str | os.PathLike,
    model: SmallCNN,
    dataset: str,
    report: TrainReport | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write weights to `path` (.safetensors) with metadata (config, dataset, input shape, test
    accuracy, and `extra`, e.g. the cache key) in the safetensors header, and a JSON copy of the
    metadata beside it. Both files are written atomically (a crash leaves no torn cache file)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"classifier path must end in .safetensors, got {path}")
    cfg = model.config
    fingerprint = weights_fingerprint(model)
    meta: dict[str, Any] = {
        "format": "gcflow-classifier/1",
        "dataset": dataset,
        "extractor": f"classifier-{dataset}-{fingerprint[:12]}",
        "weights_sha256": fingerprint,
        "input_shape": [cfg.in_channels, cfg.image_size, cfg.image_size],
        "config": asdict(cfg),
    }
    if report is not None:
        meta.update({k: v for k, v in asdict(report).items() if k != "history"})
    meta.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)}))
    atomic_write_text(metadata_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_classifier(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[ClassifierExtractor, dict[str, Any]]:
    """Load a classifier saved by `save_classifier` (tensors only, nothing unpickled or executed).

    Metadata is read from the safetensors header (the JSON file beside it is a copy for humans).
    Returns the extractor and the metadata (including "test_accuracy").
    """
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"classifier weights {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise MetricError(f"cannot read classifier weights {path}: {e}") from None
    if METADATA_KEY not in header:
        raise MetricError(f"{path} is not a gcflow classifier (no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
        cfg = meta["config"]
        config = ClassifierConfig(**{**cfg, "widths": tuple(cfg["widths"])})
        dataset = str(meta["dataset"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MetricError(f"{path} has malformed classifier metadata: {e!r}") from None
    model = SmallCNN(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise MetricError(f"classifier weights {path} do not match their config: {str(e).splitlines()[0]}") from None
    return ClassifierExtractor(model, dataset, device), meta


def data_fingerprint(*tensors: Tensor) -> str:
    """SHA-256 over the dtypes, shapes and bytes of tensors (the training and test splits)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def training_settings(dataset: str, seed: int = 0, **train_kwargs: Any) -> dict[str, Any]:
    """The settings `load_or_train_classifier` trains with: the dataset's preset, overridden by
    `train_kwargs` (epochs, batch_size, lr, weight_decay, num_threads), with the thread count resolved."""
    p = preset(dataset)
    settings = {
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "seed": seed,
        "num_threads": TRAIN_THREADS,
        **train_kwargs,
    }
    if settings["num_threads"] is None:  # torch's setting decides the weights: key on its value
        settings["num_threads"] = torch.get_num_threads()
    return settings


def cache_key(dataset: str, settings: dict[str, Any], data_sha256: str) -> str:
    """SHA-256 (hex) of everything that decides a cached classifier's weights."""
    what = {
        "recipe": RECIPE,
        "dataset": dataset,
        "config": asdict(preset(dataset).config),
        "training": settings,
        "data_sha256": data_sha256,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def keyed_path(path: str | os.PathLike, key: str) -> Path:
    """`dir/name.safetensors` → `dir/name-<first 16 hex digits of key>.safetensors`."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{key[:16]}{path.suffix}")


def load_or_train_classifier(
    path: str | os.PathLike,
    dataset: str,
    load_splits: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]],
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    **train_kwargs: Any,
) -> tuple[ClassifierExtractor, dict[str, Any]]:
    """The cached classifier for `dataset` and these settings, else train and cache one.

    `path` names the cache (`dir/<dataset>-<res>px.safetensors`); the file actually used is
    `keyed_path(path, cache_key(...))`, so other settings, data or torch versions train their own.
    `load_splits()` returns (train_images, train_labels, test_images, test_labels) as uint8
    (N, C, H, W) images and integer labels; it is called every time (the data are part of the key),
    so it should return tensors already in memory. `train_kwargs` override the preset (see
    `training_settings`). The metadata gains "cache_key", "training", "data_sha256" and "torch".
    """
    splits = load_splits()
    dataset = preset_name(dataset, int(splits[0].shape[-1]))  # e.g. fashion-mnist@14 for 14×14 images
    settings = training_settings(dataset, seed, **train_kwargs)
    data_sha256 = data_fingerprint(*splits)
    key = cache_key(dataset, settings, data_sha256)
    path = keyed_path(path, key)
    if path.is_file():
        extractor, meta = load_classifier(path)
        if meta["dataset"] != dataset or meta.get("cache_key") != key:
            raise MetricError(
                f"classifier cache {path} does not hold the classifier its name says; delete it to retrain"
            )
        return extractor, meta
    model, report = train_classifier(*splits, config=preset(dataset).config, log=log, **settings)
    if log is not None:
        log(f"classifier-{dataset}: test accuracy {report.test_accuracy:.4f} after {report.train_seconds:.1f} s")
    extra = {"cache_key": key, "training": settings, "data_sha256": data_sha256, "torch": torch.__version__}
    save_classifier(path, model, dataset, report, extra)
    return load_classifier(path)
