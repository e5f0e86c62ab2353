"""Choose the feature extractor for a dataset: the trained classifier for tiny grayscale sets, else Inception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gcflow.metrics.protocol import FeatureExtractor, MetricError

EXTRACTORS = ("auto", "inception", "classifier")


def build_extractor(
    kind: str,
    dataset: str,
    root: str | None,
    resolution: int | None,
    inception_weights: Path | None,
    device: torch.device | str = "cpu",
    log: Any = print,
) -> FeatureExtractor:
    """'classifier' (digits, MNIST, Fashion-MNIST: a CNN gcflow trains once and caches) or 'inception'.

    'auto' picks the classifier where one is defined for the dataset and Inception otherwise.
    """
    from gcflow.metrics.classifier import PRESETS

    if kind not in EXTRACTORS:
        raise MetricError(f"unknown feature extractor {kind!r}; choose one of {', '.join(EXTRACTORS)}")
    if kind == "auto":
        kind = "classifier" if dataset in PRESETS else "inception"
    if kind == "inception":
        if inception_weights is None:
            raise MetricError(
                "Inception features need --inception-weights PATH "
                "(torch-fidelity's pt_inception-2015-12-05 weights file)"
            )
        from gcflow.metrics.inception import InceptionExtractor

        return InceptionExtractor(inception_weights, device=device)
    from gcflow.data import load_image_dataset
    from gcflow.metrics.classifier import load_or_train_classifier
    from gcflow.paths import cache_dir

    train = load_image_dataset(dataset, root, split="train", resolution=resolution)
    test = load_image_dataset(dataset, root, split="test", resolution=resolution)
    path = cache_dir() / "classifiers" / f"{dataset}-{train.images.shape[-1]}px.safetensors"
    extractor, meta = load_or_train_classifier(
        path, dataset, lambda: (train.images, train.labels, test.images, test.labels), log=lambda m: log(f"gcflow: {m}")
    )
    log(f"gcflow: feature extractor {extractor.name} (test accuracy {meta.get('test_accuracy', float('nan')):.4f})")
    return extractor
