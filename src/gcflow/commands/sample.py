"""`gcflow sample RUN_DIR --n N --steps K`: draw samples from a run's EMA model, save them and a picture.

Writes STEM.npy (float samples as the model made them, (N, *D)) and STEM.png (a scatter plot or
an image grid); for image runs also the two layouts FID tools read:

* STEM/000000.png ...: one 8-bit RGB PNG per sample (a folder for torch-fidelity's `--input1`
  and clean-fid's `compute_fid(folder, ...)`);
* STEM.npz: `arr_0`, uint8 (N, H, W, 3), as the ADM (guided-diffusion) evaluator's sample batches.

Greyscale images are repeated over three channels there, since Inception-based tools expect RGB.
Sample i uses latent seed `seed + i` alone, so any subset of samples can be regenerated exactly.
Every file is written atomically (temporary file, fsync, rename) and the PNG folder is filled
under a temporary name and renamed: a kill or a full disk never leaves a truncated output that a
rerun would take for a result.

`--sigmas 80,0.821` sets the sampler's noise levels: the first step denoises from the first level,
each further one re-noises to the next level and denoises (multistep consistency sampling).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gcflow.commands.errors import one_line_usage_errors, run_guarded
from gcflow.files import atomic_write_bytes
from gcflow.training.config import Config, ConfigError
from gcflow.training.run_dir import out_path

MAX_SEED = 2**64 - 1  # torch generators take seeds in [0, 2^64)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a gcflow run folder (its newest good checkpoint is used)")
    p.add_argument("--n", type=int, default=1000, help="number of samples (default 1000)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampler steps: 1 (one-step, the default) or more (multistep, Karras-spaced levels)",
    )
    p.add_argument(
        "--sigmas",
        default=None,
        metavar="S1,S2,...",
        help="the sampler's noise levels, decreasing, within the run's [sigma_min, sigma_max], "
        "e.g. 80,0.821 (two steps); replaces --steps",
    )
    p.add_argument("--seed", type=int, default=0, help="first per-sample seed (sample i uses seed+i)")
    p.add_argument("--batch", type=int, default=500, help="samples per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--out", type=out_path, default=None, help="output stem (default RUN_DIR/samples/n<N>-steps<K>-seed<S>)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="class-conditional runs: the class to draw (default: sample i gets class (seed+i) mod K)",
    )
    one_line_usage_errors(p)


def run(args: argparse.Namespace) -> int:
    return run_guarded(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gcflow.plotting import save_image_grid, save_scatter
    from gcflow.sampling import seeded_normal
    from gcflow.training.builders import resolve_device
    from gcflow.training.evaluate import generate
    from gcflow.training.run_state import load_run

    if args.n < 1 or (args.steps is not None and args.steps < 1) or args.batch < 1:
        raise ConfigError("--n, --steps and --batch must be positive integers")
    if not 0 <= args.seed <= MAX_SEED - (args.n - 1):
        raise ConfigError(f"--seed {args.seed} is out of range: seeds seed..seed+n-1 must lie in [0, 2^64 - 1]")
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device)
    model, cfg = run.model, run.config
    if args.sigmas is not None and cfg.method.pairs == "edm":
        raise ConfigError(
            f"--sigmas: {args.run_dir} is a diffusion model sampled with Heun's method "
            f"(method.edm_sampler_steps={cfg.method.edm_sampler_steps}); drop --sigmas"
        )
    levels = sampler_levels(cfg, args.steps, args.sigmas)
    if args.label is not None and not run.num_classes:
        raise ConfigError(
            f"--label {args.label}: {args.run_dir} is an unconditional model (no class labels); drop --label"
        )
    name = f"steps{len(levels)}" if args.sigmas is None else "sigmas" + "_".join(f"{s:g}" for s in levels)
    stem = args.out or args.run_dir / "samples" / f"n{args.n}-{name}-seed{args.seed}"
    images = len(run.data_shape) == 3
    npy, png, npz, folder = Path(f"{stem}.npy"), Path(f"{stem}.png"), Path(f"{stem}.npz"), Path(str(stem))
    outputs = [npy, png, *([npz, folder] if images else [])]
    if not args.overwrite and any(p.exists() for p in outputs):
        raise ConfigError(f"{next(p for p in outputs if p.exists())} already exists; pass --overwrite or choose --out")
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
        if args.sigmas is None:  # the evaluations' sampler (Karras levels)
            x = generate(model, z, cfg, len(levels), class_labels=labels, seed=args.seed + start)
        else:
            x = sample_at_levels(model, z, cfg, levels, labels, seed=args.seed + start)
        chunks.append(x.cpu())
    x = torch.cat(chunks)
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    atomic_write_bytes(npy, buf.getvalue())
    if x.ndim == 2 and x.shape[1] == 2:
        _atomic_picture(png, lambda p: save_scatter(p, x, title=f"{args.n} samples, {args.steps}-step"))
    elif x.ndim == 4:
        _atomic_picture(png, lambda p: save_image_grid(p, x[:256], scale=max(1, 64 // x.shape[-1])))
    if images:
        rgb = uint8_rgb(x)
        buf = io.BytesIO()
        np.savez(buf, arr_0=rgb)
        atomic_write_bytes(npz, buf.getvalue())
        write_png_folder(folder, rgb)
        print(f"gcflow: wrote {args.n} samples to {npy}, {npz} (uint8 arr_0), {folder}/ (PNGs) and a picture to {png}")
    else:
        print(f"gcflow: wrote {args.n} samples to {npy} and a picture to {png}")
    return 0


def sampler_levels(cfg: Config, steps: int | None, sigmas: str | None) -> list[float]:
    """The sampler's noise levels: --sigmas as given (checked), or σ_max and the Karras levels of --steps.

    Raises ConfigError (one line) unless the levels decrease strictly within [σ_min, σ_max] of the
    run, the ones after the first above σ_min (re-noising to σ_min would add no noise).
    """
    from gcflow.sampling import default_multistep_sigmas

    m = cfg.method
    if sigmas is None:
        return [m.sigma_max, *default_multistep_sigmas(steps or 1, m.sigma_min, m.sigma_max, m.rho)]
    try:
        levels = [float(t) for t in sigmas.split(",") if t.strip()]
    except ValueError:
        levels = []
    ok = bool(levels) and all(math.isfinite(s) and m.sigma_min <= s <= m.sigma_max for s in levels)
    ok = ok and all(a > b for a, b in zip(levels, levels[1:])) and all(s > m.sigma_min for s in levels[1:])
    if not ok:
        raise ConfigError(
            f"--sigmas {sigmas!r} must be noise levels separated by commas, strictly decreasing, within "
            f"the run's [sigma_min, sigma_max] = [{m.sigma_min:g}, {m.sigma_max:g}], e.g. "
            f"--sigmas {m.sigma_max:g},0.821"
        )
    if steps is not None and steps != len(levels):
        raise ConfigError(f"--steps {steps} and --sigmas {sigmas} ({len(levels)} levels) disagree; give one of them")
    return levels


def sample_at_levels(
    model: torch.nn.Module,
    z: torch.Tensor,
    cfg: Config,
    levels: list[float],
    class_labels: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Samples (B, *D) from standard normals z (B, *D): denoise from levels[0]·z, then re-noise to each
    further level and denoise. With levels = [σ_max, *default_multistep_sigmas(K)] this is exactly
    `training.evaluate.generate(..., steps=K)` (same re-noising generator)."""
    from gcflow.randomness import step_generator
    from gcflow.sampling import sample_multistep

    def f(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return model(x, s, class_labels) if class_labels is not None else model(x, s)

    gen = step_generator(seed, 0, "eval")
    return sample_multistep(f, z, levels[1:], levels[0], cfg.method.sigma_min, generator=gen)


def uint8_rgb(x: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, 3); one channel is repeated three times."""
    from gcflow.data import to_uint8

    u = to_uint8(x).permute(0, 2, 3, 1).numpy()
    return np.repeat(u, 3, axis=3) if u.shape[3] == 1 else u


def write_png_folder(folder: Path, rgb: np.ndarray) -> None:
    """One PNG per image of uint8 (N, H, W, 3), named 000000.png ...; filled under a temporary name, then
    renamed over `folder` (an existing folder is replaced only after the new one is complete)."""
    from PIL import Image

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    width = max(6, len(str(len(rgb) - 1)))
    for i, img in enumerate(rgb):
        Image.fromarray(img).save(tmp / f"{i:0{width}d}.png")
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _atomic_picture(path: Path, draw: Callable[[Path], None]) -> None:
    """Let `draw` write a PNG into a private temporary folder, then move its bytes to `path` atomically."""
    with tempfile.TemporaryDirectory(prefix="gcflow-") as tmp:
        scratch = Path(tmp) / path.name
        draw(scratch)
        atomic_write_bytes(path, scratch.read_bytes())
