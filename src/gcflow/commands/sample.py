"""`gcflow sample RUN_DIR --n N --steps K`: draw samples from a run's EMA model, save them and a picture.

Sample i uses latent seed `seed + i` alone, so any subset of samples can be regenerated exactly.
Both files are written atomically (temporary file, fsync, rename): a kill or a full disk never
leaves a truncated .npy that a rerun would take for a result.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.files import atomic_write_bytes
from gcflow.training.config import ConfigError
from gcflow.training.run_dir import out_path

MAX_SEED = 2**64 - 1  # torch generators take seeds in [0, 2^64)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a gcflow run folder (its newest good checkpoint is used)")
    p.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument("--steps", type=int, default=1, help="sampler steps: 1 (one-step) or more (multistep)")
    p.add_argument("--seed", type=int, default=0, help="first per-sample seed (sample i uses seed+i)")
    p.add_argument("--batch", type=int, default=500, help="samples per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=out_path, default=None, help="output stem (default RUN_DIR/samples/n<N>-steps<K>-seed<S>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--label", type=int, default=None, help="class-conditional runs: the class to draw (default: sample i gets class (seed+i) mod K)")
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gcflow.plotting import save_image_grid, save_scatter
    from gcflow.sampling import seeded_normal
    from gcflow.training.builders import resolve_device
    from gcflow.training.evaluate import generate
    from gcflow.training.run_state import load_run

    if args.n < 1 or args.steps < 1 or args.batch < 1:
        raise ConfigError("--n, --steps and --batch must be positive integers")
    if not 0 <= args.seed <= MAX_SEED - (args.n - 1):
        raise ConfigError(f"--seed {args.seed} is out of range: seeds seed..seed+n-1 must lie in [0, 2^64 - 1]")
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    model, cfg = run.model, run.config
    stem = args.out or args.run_dir / "samples" / f"n{args.n}-steps{args.steps}-seed{args.seed}"
    npy, png = Path(f"{stem}.npy"), Path(f"{stem}.png")
    if not args.overwrite and (npy.exists() or png.exists()):
        raise ConfigError(f"{npy} already exists; pass --overwrite or choose --out")
    npy.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    for start in range(0, args.n, args.batch):
        seeds = range(args.seed + start, args.seed + min(start + args.batch, args.n))
        z = seeded_normal(seeds, run.data_shape, device)
        labels = None
        if run.num_classes:
            k = run.num_classes
            if args.label is not None and not 0 <= args.label < k:
                raise ConfigError(f"--label {args.label} is outside the run's classes 0..{k - 1}")
            labels = torch.tensor([args.label if args.label is not None else s % k for s in seeds], device=device)
        chunks.append(generate(model, z, cfg, args.steps, class_labels=labels, seed=args.seed + start).cpu())
    x = torch.cat(chunks)
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    atomic_write_bytes(npy, buf.getvalue())
    if x.ndim == 2 and x.shape[1] == 2:
        _atomic_picture(png, lambda p: save_scatter(p, x, title=f"{args.n} samples, {args.steps}-step"))
    elif x.ndim == 4:
        _atomic_picture(png, lambda p: save_image_grid(p, x[:256], scale=max(1, 64 // x.shape[-1])))
    print(f"gcflow: wrote {args.n} samples to {npy} and a picture to {png}")
    return 0


def _atomic_picture(path: Path, draw: Callable[[Path], None]) -> None:
    """Let `draw` write a PNG into a private temporary folder, then move its bytes to `path` atomically."""
    with tempfile.TemporaryDirectory(prefix="gcflow-") as tmp:
        scratch = Path(tmp) / path.name
        draw(scratch)
        atomic_write_bytes(path, scratch.read_bytes())
