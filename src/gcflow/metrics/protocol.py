"""The paper's evaluation protocol: FID / KID / IS of a one-step generator as mean ± std over draws.

An *extractor* is any object with a `name: str` and a method
`features(images_uint8 (N, C, H, W)) -> (features (N, F), logits (N, K) or None)`:
`inception.InceptionExtractor` (FID/KID/IS on natural images) and
`classifier.ClassifierExtractor` (a small CNN for 8×8 digits, MNIST, Fashion-MNIST) both are.

Protocol (the paper's Table 1: 50 000 samples, mean ± std of 5 draws): `draws` independent draws
of `num_samples` images each; draw j generates image i from seed `seed_offset + j·num_samples + i`
(so draws never share a seed and sample i depends only on its seed). Each draw gets a Fréchet
distance against the reference statistics, a KID against the stored reference features (if any)
and an Inception Score of its own logits (if the extractor gives logits); the report is the mean
and the population std (ddof = 0) of the per-draw values.

Reference statistics are computed once per (dataset, extractor) and stored as an `.npz`
(`allow_pickle=False`) with a JSON sidecar `<file>.npz.json` holding the dataset name, the number of
images, the extractor name and the SHA-256 of every array; loading verifies all of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from gcflow.files import atomic_write, atomic_write_bytes
from gcflow.metrics.frechet import feature_stats, frechet_distance, inception_score, kid


class MetricError(Exception):
    """A metric cannot be computed as asked (missing optional dependency or file, bad input).

    Messages are one line and say what to do.
    """


class ReferenceStatsError(MetricError):
    """A reference-statistics file is missing, incomplete, tampered with or for another extractor."""


class FeatureExtractor(Protocol):
    """What the protocol needs from a feature network."""

    name: str

    def features(self, images: Tensor) -> tuple[Tensor | np.ndarray, Tensor | np.ndarray | None]:
        """uint8 images (N, C, H, W) → features (N, F) and class logits (N, K) or None."""
        ...


# sample_fn(seed_start, n) → uint8 images (n, C, H, W); image i must depend only on seed seed_start + i.
SampleFn = Callable[[int, int], Tensor]

SIDECAR_FORMAT = "gcflow-reference-stats/1"
REQUIRED_META = ("dataset", "num_images", "extractor")


def _to_numpy_f32(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _check_uint8_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        raise MetricError(f"expected uint8 images of shape (N, C, H, W), got {got}")


def extract(
    extractor: FeatureExtractor, images: Tensor | Iterable[Tensor], batch: int = 250
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, F) and logits (N, K) or None of uint8 images.

    `images` is one tensor (N, C, H, W), embedded `batch` images at a time, or an iterable of
    such tensors (e.g. batches streamed from disk), each embedded as given.
    """
    if isinstance(images, Tensor):
        chunks: Iterable[Tensor] = (images[i : i + batch] for i in range(0, images.shape[0], batch))
    else:
        chunks = images
    feats, logits = [], []
    for chunk in chunks:
        _check_uint8_images(chunk)
        f, lg = extractor.features(chunk)
        feats.append(_to_numpy_f32(f))
        if lg is not None:
            logits.append(_to_numpy_f32(lg))
    if not feats:
        raise MetricError("no images to extract features from")
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)


def compute_reference_stats(
    images: Tensor | Iterable[Tensor],
    extractor: FeatureExtractor,
    batch: int = 250,
    keep_features: int = 10_000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Reference statistics of a dataset's images (uint8 (N, C, H, W), or an iterable of such batches).

    Returns {"mu": (F,) float64, "sigma": (F, F) float64, "features": (min(N, keep_features), F)
    float32}. "features" is a seeded random subset of the reference features kept for KID
    (which needs samples, not moments); `keep_features=0` stores none and disables KID.
    """
    feats, _ = extract(extractor, images, batch)
    mu, sigma = feature_stats(feats)
    stats = {"mu": mu, "sigma": sigma}
    if keep_features > 0:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.permutation(feats.shape[0])[:keep_features])
        stats["features"] = np.ascontiguousarray(feats[idx])
    return stats


def _array_sha256(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a reference-stats file: `x.npz` → `x.npz.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_reference_stats(path: str | os.PathLike, stats: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `stats` to `path` (.npz, no pickles) and the verified sidecar `<path>.json`.

    `meta` must hold "dataset" (str), "num_images" (int) and "extractor" (str, the extractor's
    `name`); any other JSON-serialisable keys (split, resolution, weights hash, …) are kept.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"reference stats path must end in .npz, got {path}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"reference stats meta lacks {missing}; required: {list(REQUIRED_META)}")
    if "format" in meta or "arrays" in meta:
        raise ValueError("reference stats meta may not use the reserved keys 'format' and 'arrays'")
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in stats.items()}
    if any(a.dtype == object for a in arrays.values()):
        raise ValueError("reference stats must be numeric arrays")
    sidecar = {
        "format": SIDECAR_FORMAT,
        **meta,
        "arrays": {
            k: {"sha256": _array_sha256(a), "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays.items()
        },
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    atomic_write_bytes(sidecar_path(path), text.encode())


def read_reference_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar metadata of a reference-stats file (not verified against the arrays)."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise ReferenceStatsError(f"reference statistics file {path} not found; make it with 'gcflow fid-ref DATASET'")
    if not side.is_file():
        raise ReferenceStatsError(
            f"reference statistics metadata (sidecar) {side} not found (it must sit beside {Path(path).name}); "
            "recompute the statistics with 'gcflow fid-ref DATASET --overwrite'"
        )
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ReferenceStatsError(f"reference stats sidecar {side} is not valid JSON: {e}") from None
    if meta.get("format") != SIDECAR_FORMAT or not isinstance(meta.get("arrays"), dict):
        raise ReferenceStatsError(f"{side} is not a gcflow reference-stats sidecar (format {meta.get('format')!r})")
    return meta


def load_reference_stats(path: str | os.PathLike, extractor: str | None = None) -> dict[str, np.ndarray]:
    """Load and verify reference stats written by `save_reference_stats`.

    Checks that the sidecar exists, lists exactly the stored arrays, and that every array's
    SHA-256 matches; if `extractor` is given, also that the stats were made with that extractor.
    Raises ReferenceStatsError with a one-line reason otherwise. Never unpickles.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceStatsError(f"reference stats {path} not found; create them with `gcflow fid-ref`")
    meta = read_reference_meta(path)
    if extractor is not None and meta.get("extractor") != extractor:
        raise ReferenceStatsError(
            f"reference stats {path} were computed with extractor {meta.get('extractor')!r}, not {extractor!r}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as e:
        raise ReferenceStatsError(f"cannot read reference stats {path}: {e}") from None
    expected = meta["arrays"]
    if set(arrays) != set(expected):
        raise ReferenceStatsError(
            f"reference stats {path} hold arrays {sorted(arrays)}, sidecar lists {sorted(expected)}"
        )
    for k, a in arrays.items():
        record = expected[k]
        if not isinstance(record, dict) or _array_sha256(a) != record.get("sha256"):
            raise ReferenceStatsError(
                f"reference stats {path}: array {k!r} does not match its SHA-256 in "
                f"{sidecar_path(path).name} (modified or mismatched files)"
            )
    return arrays


def evaluate_features(
    features: np.ndarray,
    logits: np.ndarray | None,
    reference_stats: dict[str, np.ndarray],
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of one draw: FID always; KID if reference "features" are stored and kid_subsets > 0
    (KID costs ~0.4 s per subset with 2048-d features on CPU); IS if logits are given."""
    mu, sigma = feature_stats(features)
    out = {"fid": frechet_distance(mu, sigma, reference_stats["mu"], reference_stats["sigma"])}
    if kid_subsets > 0 and "features" in reference_stats and len(reference_stats["features"]) >= 2:
        out["kid"], _ = kid(features, reference_stats["features"], kid_subsets, kid_subset_size, generator=seed)
    if logits is not None:
        out["is"], _ = inception_score(logits, splits=min(is_splits, len(logits)))
    return out


FID_PROTOCOLS = ("gcflow", "released")


def quantise_samples(images: Tensor, protocol: str = "gcflow") -> Tensor:
    """Generated images in [-1, 1] (N, C, H, W), any float dtype -> uint8 (N, C, H, W) for the feature network.

    * gcflow: round((x + 1)·127.5), clamped to 0..255 (`gcflow.data.to_uint8`; it inverts the data's
      x/127.5 − 1 exactly).
    * released: the paper's released evaluation (utils.eval_fid, then torchmetrics'
      FrechetInceptionDistance(normalize=True)): clip to [−1, 1], (x + 1)/2, then (x·255).byte() in
      float32, which truncates: on average half a grey level darker than rounding.
    """
    if protocol not in FID_PROTOCOLS:
        raise MetricError(f"unknown FID protocol {protocol!r}; choose one of {', '.join(FID_PROTOCOLS)}")
    x = images.to(torch.float32)
    if protocol == "gcflow":
        return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return (((x.clamp(-1.0, 1.0) + 1) / 2) * 255).to(torch.uint8)  # float -> uint8 truncates toward 0


def sample_batches(sample_fn: SampleFn, seed_start: int, n: int, batch: int = 250) -> Iterator[Tensor]:
    """Images of seeds seed_start … seed_start + n − 1 from `sample_fn`, `batch` at a time."""
    for i in range(0, n, batch):
        b = min(batch, n - i)
        images = sample_fn(seed_start + i, b)
        _check_uint8_images(images)
        if images.shape[0] != b:
            raise MetricError(f"sample_fn(seed_start, {b}) returned {images.shape[0]} images")
        yield images


def evaluate_generator(
    sample_fn: SampleFn,
    extractor: FeatureExtractor,
    reference_stats: dict[str, np.ndarray],
    num_samples: int = 50_000,
    draws: int = 5,
    batch: int = 250,
    seed_offset: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """FID / KID / IS of a generator as mean ± std over `draws` draws of `num_samples` images.

    Draw j uses seeds seed_offset + j·num_samples + i, i < num_samples. Returns a JSON-ready dict:
    {"fid_mean", "fid_std", "fid_draws": [...], likewise "kid_*" and "is_*" when available,
    "num_samples", "draws", "seed_offset", "extractor"}. Std is the population std (ddof = 0),
    hence 0 for a single draw. `kid_subsets=0` skips KID (for cheap in-training evaluation).
    """
    if num_samples < 2 or draws < 1:
        raise ValueError(f"need num_samples ≥ 2 and draws ≥ 1, got {num_samples}, {draws}")
    per_draw: dict[str, list[float]] = {}
    for j in range(draws):
        seed_start = seed_offset + j * num_samples
        feats, logits = extract(extractor, sample_batches(sample_fn, seed_start, num_samples, batch))
        values = evaluate_features(feats, logits, reference_stats, kid_subsets, kid_subset_size, is_splits, seed=j)
        for k, v in values.items():
            per_draw.setdefault(k, []).append(v)
        if log is not None:
            log(f"draw {j + 1}/{draws}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    out: dict[str, Any] = {
        "num_samples": num_samples,
        "draws": draws,
        "seed_offset": seed_offset,
        "extractor": extractor.name,
    }
    for k, vs in per_draw.items():
        out[f"{k}_mean"] = float(np.mean(vs))
        out[f"{k}_std"] = float(np.std(vs))
        out[f"{k}_draws"] = [float(v) for v in vs]
    return out
