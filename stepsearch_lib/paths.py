"""Where things live: the project root, the data root, the model cache, the run folder's layout.

Nothing here touches the disk beyond checking whether the offline mirror exists.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder that holds ``stepsearch_lib/``)."""

DATA_ROOT_ENV = "STEPSEARCH_DATA_ROOT"
"""Environment variable that, when set, names the data root (beats the default search)."""


def default_data_root() -> Path:
    """The data root used when ``DataConfig.data_root`` is empty.

    Order: ``$STEPSEARCH_DATA_ROOT``; the offline mirror ``../shared/data`` beside the
    project when it exists; else the project's own ``data/`` folder (where ``make data``
    puts the full official files).
    """
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    shared = PROJECT_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return PROJECT_ROOT / "data"


def default_cache_dir() -> Path:
    """Converted models and embeddings: ``$STEPSEARCH_CACHE`` or ``~/.cache/stepsearch``."""
    env = os.environ.get("STEPSEARCH_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "stepsearch"


def resolve_cache_dir(setting: str | Path = "") -> Path:
    """The cache folder a ``model.cache_dir`` setting names; empty = `default_cache_dir`."""
    return Path(setting).expanduser().resolve() if str(setting) else default_cache_dir()


RUN_LAYOUT = {
    "data": "data",
    "index": "index",
    "checkpoints": "checkpoints",
    "metrics": "metrics",
    "eval": "eval",
    "rewards": "rewards",
    "notebooks": "notebooks",
    "figures": "figures",
    "logs": "logs",
}
"""Sub-folders of `runs/<profile>/` (see DESIGN.md)."""
