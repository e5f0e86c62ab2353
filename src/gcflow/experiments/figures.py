"""Small matplotlib helpers shared by the experiments (Agg backend, PNG files of a few tens of kB)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gcflow.files import atomic_write  # noqa: E402


def new_figure(panels: int, width: float = 4.2, height: float = 3.3):
    """A row of `panels` axes."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), dpi=100, squeeze=False)
    return fig, list(axes[0])


def save(fig, path: Path) -> None:
    """Write `fig` as a PNG to `path` atomically (gcflow.files) and close it."""
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    plt.close(fig)


def line(ax, x: Sequence[float], y: Sequence[float], label: str, **kw) -> None:
    """A line with markers, skipping missing (None / non-positive on log axes) points."""
    pts = [(a, b) for a, b in zip(x, y) if b is not None]
    if pts:
        ax.plot(*zip(*pts), marker=kw.pop("marker", "o"), ms=kw.pop("ms", 3), label=label, **kw)
