"""Where gcflow keeps files it computes once and reuses (trained evaluation classifiers, reference statistics)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: $GCFLOW_CACHE, or ~/.cache/gcflow when it is unset."""
    return Path(os.environ.get("GCFLOW_CACHE", Path.home() / ".cache" / "gcflow"))
