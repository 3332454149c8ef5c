"""Our architecture JSONs (open_clip's config schema), one file per open_clip model name.

They ship as the data package ``mobileclip2.model_configs`` (built from the checkout's top-level
``model_configs/``, see setup.py); a checkout used through ``PYTHONPATH`` has no such package, so
the folder is read directly there.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

__all__ = ["config_files", "model_names"]


@functools.cache
def config_files() -> tuple[Path, ...]:
    """Every config file, sorted by name."""
    checkout = Path(__file__).resolve().parent.parent / "model_configs"
    root = checkout if checkout.is_dir() else resources.files("mobileclip2.model_configs")
    return tuple(sorted(Path(str(entry)) for entry in root.iterdir() if entry.name.endswith(".json")))


def model_names() -> list[str]:
    """The open_clip names our configs define (registered where open_clip lacks them)."""
    return [path.stem for path in config_files()]
