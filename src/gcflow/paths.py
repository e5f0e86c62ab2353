"""Where gcflow keeps files it computes once and reuses (trained evaluation classifiers, reference statistics)."""

from __future__ import annotations

import os
from pathlib import Path


def portable_path(path: str | os.PathLike, root: Path) -> str:
    """`path` as results files store it: relative to `root` (a repository) when inside it, else absolute,
    so that a result written in one clone reads the same in another."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def cache_dir() -> Path:
    """The cache folder: $GCFLOW_CACHE, or ~/.cache/gcflow when it is unset."""
    return Path(os.environ.get("GCFLOW_CACHE", Path.home() / ".cache" / "gcflow"))
