"""Evaluation during and after training: sampling with the EMA model and sample-quality metrics.

Toys are scored by the exact W2 (and sliced W2) against a fixed reference sample. For 8×8 digits,
MNIST and Fashion-MNIST, Inception features are meaningless, so image samples are scored in the
feature space of a small classifier gcflow trains once on the training split (cached under
$GCFLOW_CACHE, default ~/.cache/gcflow; its test accuracy is reported next to the metric), and by
the sliced W2 in pixel space. Each metric comes with its data-to-data value on the held-out split,
the noise floor a perfect generator would reach; image samples are scored at the same sample count
as that floor (297 for digits), since both estimators are biased by 1/n.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gcflow.data import DatasetError, ImageDataset, to_uint8
from gcflow.metrics.pixels import pixel_sliced_w2
from gcflow.metrics.wasserstein import noise_floor, sliced_w2, w2_exact
from gcflow.paths import cache_dir
from gcflow.plotting import save_curves, save_image_grid, save_scatter
from gcflow.randomness import step_generator
from gcflow.sampling import default_multistep_sigmas, sample_multistep, sample_onestep
from gcflow.training.config import Config
from gcflow.training.data_source import ImageSource, image_splits, is_toy, load_split


def generate(
    model: nn.Module, z: Tensor, cfg: Config, steps: int, class_labels: Tensor | None = None, seed: int = 0
) -> Tensor:
    """Samples (B, *D) from standard normals z with the 1-step or multistep consistency sampler."""
    m = cfg.method
    if m.pairs == "edm":  # a diffusion run: EDM's deterministic Heun sampler (gcflow.teacher.edm_sampler)
        from gcflow.teacher.edm_sampler import sample_denoiser

        return sample_denoiser(model, z, m.edm_sampler_steps, m.sigma_min, m.sigma_max, m.rho, class_labels)

    def f(x: Tensor, s: Tensor) -> Tensor:
        return model(x, s, class_labels) if class_labels is not None else model(x, s)

    if steps == 1:
        return sample_onestep(f, z, m.sigma_max)
    sigmas = default_multistep_sigmas(steps, m.sigma_min, m.sigma_max, m.rho)
    return sample_multistep(f, z, sigmas, m.sigma_max, m.sigma_min, generator=step_generator(seed, 0, "eval"))


class ToyEvaluator:
    """W2 (exact OT) and sliced W2 between model samples and a fixed reference data sample.

    The latent z and the reference sample are fixed for the whole run, so successive evaluations
    differ only through the model; the noise floor is the same metric between two data samples.
    """

    def __init__(
        self, sample_data: Callable[[int, torch.Generator], Tensor], n: int, dim: int, seed: int, device: torch.device
    ) -> None:
        self.reference = sample_data(n, step_generator(seed, 0, "eval")).to(torch.float32)
        self.z = torch.randn(n, dim, generator=step_generator(seed, 1, "eval")).to(device)
        self.floor = noise_floor(sample_data, n, seed=seed + 1)
        self.seed = seed

    @torch.no_grad()
    def __call__(self, model: nn.Module, cfg: Config) -> tuple[dict[str, Any], Tensor]:
        x = generate(model, self.z, cfg, cfg.train.sample_steps, seed=self.seed).cpu()
        return {
            "w2": w2_exact(x, self.reference),
            "sliced_w2": sliced_w2(x, self.reference),
            "w2_noise_floor": self.floor["w2"],
            "sliced_w2_noise_floor": self.floor["sliced_w2"],
        }, x


class ImageEvaluator:
    """Samples a fixed set of latents with the EMA model and scores them against the data."""

    def __init__(
        self, cfg: Config, source: ImageSource, device: torch.device, log: Callable[..., None] = print
    ) -> None:
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
            self.labels = torch.randint(
                0, source.num_classes, (t.eval_samples,), generator=step_generator(t.seed, 2, "eval")
            ).to(device)
        held_out = _held_out_split(cfg, log)
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
            path,
            cfg.data.name,
            lambda: (train.images, train.labels, held_out.images, held_out.labels),
            seed=0,
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
            chunks.append(
                generate(
                    model, self.z[i : i + 500], cfg, cfg.train.sample_steps, class_labels=lab, seed=self.seed
                ).cpu()
            )
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
        save_curves(
            run_dir / "metrics.png",
            records,
            [*TRAIN_CURVES, "classifier_fd", "pixel_sliced_w2"],
            {"classifier_fd": "classifier_fd_noise_floor", "pixel_sliced_w2": "pixel_sliced_w2_noise_floor"},
        )


def _held_out_split(cfg: Config, log: Callable[..., None]) -> ImageDataset | None:
    """The held-out split for the noise floors, or None (with a warning naming the problem) if it cannot be read."""
    split = image_splits(cfg.data.name)[1]
    try:
        return load_split(cfg, split)
    except DatasetError as exc:  # no such split, or its files are missing or corrupt: evaluate without floors
        log(f"gcflow: warning: no noise floor, the {split!r} split of {cfg.data.name!r} cannot be used: {exc}")
        return None


def build_evaluator(
    cfg: Config, source: Any, device: torch.device, log: Callable[..., None] = print
) -> ToyEvaluator | ImageEvaluator:
    """The evaluator of the configured data (toys: exact W2 against a fixed reference sample and its noise floor)."""
    if is_toy(cfg.data.name):
        mix = source.mixture
        # float64 draws: the noise floor is computed from them exactly as before toy samples became float32
        return ToyEvaluator(
            lambda n, g: mix.sample(n, g, dtype=torch.float64), cfg.train.eval_samples, mix.dim, cfg.train.seed, device
        )
    return ImageEvaluator(cfg, source, device, log)


# The training curves of metrics.png (panels without data, e.g. gc_fraction of an IC run, are left out).
TRAIN_CURVES = ("loss", "grad_norm", "lr", "n_scales", "gc_fraction", "images_per_s")


def write_pictures(run_dir: Path, cfg: Config, samples: Tensor, evaluator: Any, records: list[dict]) -> None:
    """samples.png and metrics.png of the run folder (2-D samples: a scatter over the reference sample).

    records: metrics.jsonl's records of both kinds; metrics.png draws the training curves from the
    "train" records and the sample-quality metrics (with their noise floors) from the evaluations.
    """
    if samples.ndim == 2 and samples.shape[1] == 2:
        save_scatter(
            run_dir / "samples.png",
            samples[:2000],
            getattr(evaluator, "reference", None),
            title=f"{cfg.data.name}, step {records[-1]['step']}",
        )
        save_curves(
            run_dir / "metrics.png",
            records,
            [*TRAIN_CURVES, "w2", "sliced_w2"],
            {"w2": "w2_noise_floor", "sliced_w2": "sliced_w2_noise_floor"},
        )
    else:
        evaluator.write_pictures(run_dir, samples, records)
