"""Where shared data and caches live.

The data directory is resolved in this order: an explicit argument (the config's
``data.data_dir``), the ``ATTNKD_DATA_DIR`` environment variable, then ``../shared/data``
relative to the current directory (the layout used by this project's CI).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_DIR = "ATTNKD_DATA_DIR"
ENV_CACHE_DIR = "ATTNKD_CACHE_DIR"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Return the benchmark data directory (it may not exist; callers check files)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return Path("../shared/data").resolve()


def cache_dir() -> Path:
    """Directory for converted models and other derived artefacts."""
    env = os.environ.get(ENV_CACHE_DIR)
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "attnkd"
    base.mkdir(parents=True, exist_ok=True)
    return base
