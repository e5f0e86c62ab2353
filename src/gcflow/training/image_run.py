"""Image runs: the in-memory data source and the evaluator (classifier Fréchet distance, pixel sliced W2).

For 8×8 digits, MNIST and Fashion-MNIST, Inception features are meaningless, so sample quality
is measured in the feature space of a small classifier gcflow trains once on the training split
(cached under $GCFLOW_CACHE, default ~/.cache/gcflow; its test accuracy is reported next to the
metric), and by the sliced W2 in pixel space. Each metric comes with its data-to-data value on
the held-out split, the noise floor a perfect generator would reach; model samples are scored at
the same sample count as that floor (297 for digits), since both estimators are biased by 1/n.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.data import DeviceBatches, load_image_dataset, to_uint8
from gcflow.data.images import ImageDataset
from gcflow.metrics.pixels import pixel_sliced_w2
from gcflow.plotting import save_curves, save_image_grid
from gcflow.randomness import step_generator
from gcflow.training.config import Config, ConfigError
from gcflow.training.evaluate import generate


def _split_names(name: str) -> tuple[str, str]:
    return ("train", "val") if name == "imagenet32" else ("train", "test")


def _load(cfg: Config, split: str) -> ImageDataset:
    return load_image_dataset(cfg.data.name, cfg.data.root or None, split=split, resolution=cfg.data.resolution or None)


def check_image_data(cfg: Config) -> None:
    """Raise DatasetError/ConfigError now if the training split cannot be loaded or batched."""
    _check_batch(_load(cfg, _split_names(cfg.data.name)[0]), cfg)


def _check_batch(data: ImageDataset, cfg: Config) -> None:
    if len(data) < cfg.train.batch_size:
        raise ConfigError(
            f"dataset {cfg.data.name!r} has {len(data)} training images, fewer than one batch "
            f"(train.batch_size={cfg.train.batch_size}); lower train.batch_size"
        )


class ImageSource:
    """The training split held on the device; each process gets its slice of global batch `step`."""

    def __init__(self, cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = _load(cfg, _split_names(cfg.data.name)[0])
        _check_batch(self.dataset, cfg)
        self.loader = DeviceBatches(self.dataset, cfg.train.batch_size, device=device, seed=cfg.train.seed,
                                    flip=cfg.data.flip, world_size=world_size, rank=rank)
        self.shape = tuple(self.dataset.images.shape[1:])
        self.conditional = bool(cfg.network.class_conditional and self.dataset.labels is not None)
        self.num_classes = self.dataset.num_classes if self.conditional else 0

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        x, labels = self.loader.batch(step)
        return x, (labels if self.conditional else None)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.loader.load_state_dict(state)


def build_image_source(cfg: Config, device: torch.device, rank: int = 0, world_size: int = 1) -> ImageSource:
    return ImageSource(cfg, device, rank, world_size)


def cache_dir() -> Path:
    """Where trained evaluation classifiers are cached ($GCFLOW_CACHE or ~/.cache/gcflow)."""
    return Path(os.environ.get("GCFLOW_CACHE", Path.home() / ".cache" / "gcflow"))


class ImageEvaluator:
    """Samples a fixed set of latents with the EMA model and scores them against the data."""

    def __init__(self, cfg: Config, source: ImageSource, device: torch.device) -> None:
        t = cfg.train
        self.device = device
        self.seed = t.seed
        train = source.dataset
        n = min(t.eval_samples, len(train))
        perm = torch.randperm(len(train), generator=step_generator(t.seed, 0, "eval"))
        self.reference = train.images[perm[:n]]
        self.z = torch.randn((t.eval_samples, *source.shape), generator=step_generator(t.seed, 1, "eval")).to(device)
        self.labels = None
        if source.conditional:
            self.labels = torch.randint(0, source.num_classes, (t.eval_samples,), generator=step_generator(t.seed, 2, "eval")).to(device)
        try:
            held_out = _load(cfg, _split_names(cfg.data.name)[1])
        except Exception:  # a dataset without a held-out split: no floor
            held_out = None
        self.floor_images = held_out.images[: min(len(held_out), n)] if held_out is not None else None
        self.m = len(self.floor_images) if self.floor_images is not None else n
        self.floor: dict[str, float] = {}
        if self.floor_images is not None:
            self.floor["pixel_sliced_w2_noise_floor"] = pixel_sliced_w2(self.floor_images, self.reference)
        self.classifier = None
        from gcflow.metrics.classifier import PRESETS

        if cfg.data.name in PRESETS:
            self._setup_classifier(cfg, train, held_out)

    def _setup_classifier(self, cfg: Config, train: ImageDataset, held_out: ImageDataset | None) -> None:
        from gcflow.metrics.classifier import load_or_train_classifier
        from gcflow.metrics.frechet import feature_stats, frechet_distance

        if held_out is None or train.labels is None:
            return
        res = train.images.shape[-1]
        path = cache_dir() / "classifiers" / f"{cfg.data.name}-{res}px.safetensors"
        extractor, meta = load_or_train_classifier(
            path, cfg.data.name, lambda: (train.images, train.labels, held_out.images, held_out.labels), seed=0,
            log=lambda msg: print(f"gcflow: {msg}"),
        )
        self.classifier = extractor
        self.classifier_accuracy = float(meta.get("test_accuracy", float("nan")))
        feats = torch.cat([extractor.features(train.images[i : i + 2048])[0] for i in range(0, len(train), 2048)])
        self.ref_stats = feature_stats(feats)
        held = extractor.features(held_out.images)[0]
        self.floor["classifier_fd_noise_floor"] = frechet_distance(*feature_stats(held), *self.ref_stats)
        self._fd = lambda f: frechet_distance(*feature_stats(f), *self.ref_stats)

    @torch.no_grad()
    def __call__(self, model: nn.Module, cfg: Config) -> tuple[dict[str, Any], Tensor]:
        chunks = []
        for i in range(0, self.z.shape[0], 500):
            lab = self.labels[i : i + 500] if self.labels is not None else None
            chunks.append(generate(model, self.z[i : i + 500], cfg, cfg.train.sample_steps, class_labels=lab, seed=self.seed).cpu())
        x = torch.cat(chunks)
        if not bool(torch.isfinite(x).all()):
            return {"pixel_sliced_w2": float("nan")}, x.nan_to_num(0.0)
        imgs = to_uint8(x)
        metrics: dict[str, Any] = {"pixel_sliced_w2": pixel_sliced_w2(imgs[: self.m], self.reference), **self.floor}
        if self.classifier is not None:
            # Same sample count as the held-out floor: the FD estimator's bias shrinks with n.
            metrics["classifier_fd"] = self._fd(self.classifier.features(imgs[: self.m])[0])
            metrics["classifier_test_accuracy"] = self.classifier_accuracy
        return metrics, x

    def write_pictures(self, run_dir: Path, samples: Tensor, records: list[dict]) -> None:
        side = samples.shape[-1]
        save_image_grid(run_dir / "samples.png", samples[:100], nrow=10, scale=max(1, 64 // side))
        save_curves(run_dir / "metrics.png", records, ["loss", "classifier_fd", "pixel_sliced_w2"],
                    {"classifier_fd": "classifier_fd_noise_floor", "pixel_sliced_w2": "pixel_sliced_w2_noise_floor"})
