"""Pictures a person looks at: toy scatter plots, image grids and metric curves (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor


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
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = (
            x[i].permute(1, 2, 0).numpy()
        )
    return grid


def save_image_grid(path: Path, images: Tensor, nrow: int | None = None, scale: int = 1) -> None:
    """Write an image grid PNG; `scale` enlarges tiny images (e.g. 8×8 digits) with nearest-neighbour."""
    from PIL import Image

    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


# y-axis label (with unit) of each metric gcflow records; other keys are labelled with their name.
METRIC_LABELS: dict[str, str] = {
    "loss": "consistency loss (λ-weighted distance)",
    "grad_norm": "gradient norm (L2, before clipping)",
    "lr": "learning rate",
    "n_scales": "N(k): noise-grid intervals",
    "mu": "μ(k): GC probability",
    "gc_fraction": "GC fraction of the batch",
    "images_per_s": "throughput (images/s)",
    "step_time_ms": "step time (ms)",
    "w2": "exact W2 (data units)",
    "sliced_w2": "sliced W2 (data units)",
    "classifier_fd": "classifier Fréchet distance",
    "pixel_sliced_w2": "pixel sliced W2 (pixel units, [-1, 1])",
    "fid": "FID",
    "kid": "KID",
    "is": "Inception score",
}
STEP_LABEL = "training step"


def metric_label(key: str) -> str:
    """The y-axis label, with its unit, of a metric recorded in metrics.jsonl."""
    return METRIC_LABELS.get(key, key)


def _points(records: Sequence[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of every record holding a finite number under `key`.

    A key that both record kinds hold (loss, n_scales) is drawn from the "train" records, every
    train.log_every steps, when the run has them; the evaluation records' value is then a coarser copy.
    """
    train = [r for r in records if r.get("kind") == "train" and key in r]
    pts = []
    for r in train or records:
        v = r.get(key)
        if "event" in r:  # an event record (e.g. a precision switch), not an evaluation
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            pts.append((r["step"], v))
    return pts


def _style_axis(ax: plt.Axes, key: str, values: Sequence[float]) -> None:
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(metric_label(key), fontsize=8)
    ax.set_title(key, fontsize=9)
    # Log scale for positive quantities spanning more than a decade (loss, W2, lr); linear otherwise.
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")


def save_curves(
    path: Path, records: Sequence[dict], keys: Sequence[str], floor_keys: dict[str, str] | None = None, title: str = ""
) -> None:
    """Plot metrics (one panel per key) against the training step from metrics.jsonl records."""
    save_overlaid_curves(path, {"": records}, keys, floor_keys, title)


def save_overlaid_curves(
    path: Path,
    runs: Mapping[str, Sequence[dict]],
    keys: Sequence[str],
    floor_keys: dict[str, str] | None = None,
    title: str = "",
) -> list[str]:
    """One panel per metric key with one curve per run, against the training step; returns the keys drawn.

    Args:
        path: the PNG to write.
        runs: label -> that run's metrics.jsonl records (dicts with "step" and metric values); an
            empty label draws no legend entry.
        keys: the metrics to draw, in panel order; keys no run records are left out.
        floor_keys: metric -> key of its noise floor, drawn as a dashed line (the last recorded value).
        title: the figure's title.
    """
    keys = [k for k in keys if any(_points(recs, k) for recs in runs.values())]
    if not keys:
        return []
    ncol = min(len(keys), 4)
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        values: list[float] = []
        for i, (label, recs) in enumerate(runs.items()):
            pts = _points(recs, key)
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 50 else None, ms=3, label=label or None, color=f"C{i}")
                values += [v for _, v in pts]
            floor = (floor_keys or {}).get(key)
            floors = _points(recs, floor) if floor else []
            if floors:
                ax.axhline(floors[-1][1], color=f"C{i}", ls="--", lw=0.8, label="noise floor" if i == 0 else None)
        _style_axis(ax, key, values)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return keys
