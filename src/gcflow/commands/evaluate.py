"""`gcflow evaluate RUN_DIR --ref STATS.npz`: FID / KID / IS with the paper's protocol.

50 000 one-step samples per draw, 5 draws (mean ± std), against reference statistics of the
training set made by `gcflow fid-ref`. Sample i of draw j uses latent seed j·N + i only.

The results file is written atomically, never replaces an existing file without `--overwrite`, and
never replaces a run's own files (config.json, metrics.jsonl, summary.json, checkpoints, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.files import atomic_write_text
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import RUN_FILES, out_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a gcflow run folder (its newest good checkpoint's EMA weights)")
    p.add_argument("--ref", type=Path, required=True, help="reference statistics from 'gcflow fid-ref'")
    p.add_argument(
        "--extractor",
        default="auto",
        help="must match the one the statistics were made with (auto, inception, classifier)",
    )
    p.add_argument(
        "--inception-weights", type=Path, default=None, help="local Inception-v3 weights (Inception statistics)"
    )
    p.add_argument("--num-samples", type=int, default=50_000, help="samples per draw (paper: 50000)")
    p.add_argument("--draws", type=int, default=5, help="independent draws (paper: 5)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps (1 = one-step)")
    p.add_argument("--batch", type=int, default=250, help="samples per forward pass")
    p.add_argument(
        "--fid-protocol",
        choices=("gcflow", "released"),
        default="gcflow",
        help="how samples become 8-bit images: gcflow rounds; released clips and truncates as the paper's code",
    )
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets per draw (0 = skip KID)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=out_path, default=None, help="results JSON (default RUN_DIR/eval-<steps>step.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    one_line_usage_errors(p)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse (one-line ConfigError) an output that exists without `overwrite`, or that is a run's own file.

    A run's own files (config.json, metrics.jsonl, summary.json, results.json... in a run or
    experiment folder, anything under checkpoints/, a .safetensors file) are refused even with
    `overwrite`: they are not results.
    """
    in_a_run = any((out.parent / name).exists() for name in ("config.json", "checkpoints", "results.json"))
    if (out.name in RUN_FILES and in_a_run) or out.suffix == ".safetensors" or "checkpoints" in out.parent.parts:
        raise ConfigError(f"--out {out} would replace a run's own file; choose another name such as eval.json")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a .json file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose another --out")


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gcflow.metrics.extractors import build_extractor
    from gcflow.metrics.protocol import evaluate_generator, load_reference_stats, quantise_samples, read_reference_meta
    from gcflow.sampling import seeded_normal
    from gcflow.training.builders import resolve_device
    from gcflow.training.evaluate import generate
    from gcflow.training.run_state import load_run

    if min(args.num_samples - 1, args.draws, args.steps, args.batch) < 1 or args.kid_subsets < 0:
        raise ConfigError("--num-samples must be >= 2 and --draws, --steps, --batch >= 1")
    out = args.out or args.run_dir / f"eval-{args.steps}step.json"
    check_output(out, args.overwrite)  # before hours of sampling, not after
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    model, cfg = run.model, run.config
    if len(run.data_shape) != 3:
        raise ConfigError(
            f"gcflow evaluate measures image runs (FID/KID/IS); {args.run_dir} is a toy run with data of shape "
            f"{tuple(run.data_shape)}: its W2 metrics are in metrics.jsonl and summary.json"
        )
    meta = read_reference_meta(args.ref)
    ext = build_extractor(
        args.extractor,
        meta["dataset"],
        cfg.data.root or None,
        cfg.data.resolution or None,
        args.inception_weights,
        device,
    )
    ref = load_reference_stats(args.ref, extractor=ext.name)
    shape, k = run.data_shape, run.num_classes

    @torch.no_grad()
    def sample_fn(seed_start: int, n: int) -> torch.Tensor:
        seeds = range(seed_start, seed_start + n)
        z = seeded_normal(seeds, shape, device)
        labels = torch.tensor([s % k for s in seeds], device=device) if k else None
        images = generate(model, z, cfg, args.steps, class_labels=labels, seed=seed_start).cpu()
        return quantise_samples(images, args.fid_protocol)

    res = evaluate_generator(
        sample_fn,
        ext,
        ref,
        num_samples=args.num_samples,
        draws=args.draws,
        batch=args.batch,
        kid_subsets=args.kid_subsets,
        log=lambda m: print(f"gcflow: {m}"),
    )
    res.update(
        {
            "run_dir": str(args.run_dir),
            "sampler_steps": args.steps,
            "reference": str(args.ref),
            "fid_protocol": args.fid_protocol,
        }
    )
    check_output(out, args.overwrite)  # (again: it may have appeared while sampling)
    atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    summary = ", ".join(
        f"{m.upper()} {res[m + '_mean']:.3f} ± {res[m + '_std']:.3f}"
        for m in ("fid", "kid", "is")
        if f"{m}_mean" in res
    )
    print(f"gcflow: {summary} ({args.draws} draws of {args.num_samples}); written to {out}")
    return 0
