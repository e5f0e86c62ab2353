"""`gcflow fid-ref DATASET`: compute a dataset's reference feature statistics once and cache them.

The statistics (mean, covariance and a feature subset for KID) come from the training split, as
in the paper's protocol, and are written as .npz (no pickles) with a JSON sidecar of checksums.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import out_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dataset",
        help="dataset name (cifar10, imagenet32, imagenet32-full, celeba64, celeba64-crop140, lsun-church64, ffhq64, "
        "folder, digits, mnist, fashion-mnist)",
    )
    p.add_argument("--root", default=None, help="the dataset's directory (see the dataset's expected layout)")
    p.add_argument("--split", default="train", help="split to describe (default train, as the paper)")
    p.add_argument("--resolution", type=int, default=None, help="resize/centre-crop to this side (folder datasets)")
    p.add_argument(
        "--extractor",
        default="auto",
        help="auto (classifier for digits/MNIST/Fashion-MNIST, else inception), inception or classifier",
    )
    p.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="local Inception-v3 weights file for torch-fidelity's extractor",
    )
    p.add_argument("--batch", type=int, default=250, help="images per feature pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="output .npz (default $GCFLOW_CACHE/fid-refs/<dataset>-<split>-<extractor>.npz)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing statistics file")
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gcflow.data import load_image_dataset
    from gcflow.metrics.extractors import build_extractor
    from gcflow.metrics.protocol import compute_reference_stats, save_reference_stats
    from gcflow.paths import cache_dir
    from gcflow.training.builders import resolve_device

    if args.batch < 1:
        raise ConfigError("--batch must be a positive integer")
    device = resolve_device(args.device)
    ext = build_extractor(args.extractor, args.dataset, args.root, args.resolution, args.inception_weights, device)
    out = args.out or cache_dir() / "fid-refs" / f"{args.dataset}-{args.split}-{ext.name}.npz"
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to recompute it")
    data = load_image_dataset(args.dataset, args.root, split=args.split, resolution=args.resolution)
    stats = compute_reference_stats(data.images, ext, batch=args.batch)
    meta = {
        "dataset": args.dataset,
        "split": args.split,
        "num_images": len(data),
        "extractor": ext.name,
        "resolution": int(data.images.shape[-1]),
    }
    if hasattr(ext, "weights_sha256"):
        meta["weights_sha256"] = ext.weights_sha256
    out.parent.mkdir(parents=True, exist_ok=True)
    save_reference_stats(out, stats, meta)
    print(f"gcflow: wrote reference statistics of {len(data)} {args.dataset} {args.split} images ({ext.name}) to {out}")
    return 0
