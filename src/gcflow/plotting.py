"""Pictures a person looks at: toy scatter plots, image grids and metric curves (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def save_scatter(path: Path, samples: Tensor, reference: Tensor | None = None, title: str = "") -> None:
    """2-D samples (n, 2) as a scatter plot, over reference data in grey."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=3, c="0.75", label="data")
    s = samples.detach().cpu().float().numpy()
    ax.scatter(s[:, 0], s[:, 1], s=3, c="tab:blue", label="samples")
    lim = 1.6 * max(1e-3, float(np.nanmax(np.abs(r if reference is not None else s))))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [-1, 1] into one uint8 array (rows·H, cols·W, C)."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_image_grid(path: Path, images: Tensor, nrow: int | None = None, scale: int = 1) -> None:
    """Write an image grid PNG; `scale` enlarges tiny images (e.g. 8×8 digits) with nearest-neighbour."""
    from PIL import Image

    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def save_curves(path: Path, records: Sequence[dict], keys: Sequence[str], floor_keys: dict[str, str] | None = None, title: str = "") -> None:
    """Plot metrics (one panel per key) against the training step from metrics.jsonl records."""
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        floor = (floor_keys or {}).get(key)
        if floor and any(floor in r for r in records):
            ax.axhline([r[floor] for r in records if floor in r][-1], color="0.5", ls="--", label="noise floor")
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(key, fontsize=9)
        if pts and min(v for _, v in pts) > 0:
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
