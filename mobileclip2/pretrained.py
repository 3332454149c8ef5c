"""The pretrained-tag table: which weights each MobileCLIP name can load, and how to preprocess.

The table itself is data (``data/pretrained.json``); this module only expands presets and
answers questions about it. It imports nothing heavy so the plugin can read it cheaply. How open_clip
turns an entry into a Hub file is open_clip's rule (``compat.registry.hub_location``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any


def _expand(entry: dict[str, Any], presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Preset values, overridden by the entry's own keys; lists become tuples like open_clip's."""
    entry = dict(entry)
    merged = dict(presets[entry.pop("preset")]) if "preset" in entry else {}
    merged.update(entry)
    return {key: tuple(value) if isinstance(value, list) else value for key, value in merged.items()}


@functools.lru_cache(maxsize=1)
def pretrained_table() -> dict[str, dict[str, dict[str, Any]]]:
    """Model name -> tag -> open_clip pretrained cfg (url, hf_hub, mean, std, interpolation, resize_mode)."""
    raw = json.loads(resources.files("mobileclip2").joinpath("data/pretrained.json").read_text("utf-8"))
    presets = raw["presets"]
    return {
        model: {tag: _expand(entry, presets) for tag, entry in tags.items()}
        for model, tags in raw["models"].items()
    }


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


@functools.cache
def preprocess_defaults() -> dict[str, dict[str, Any]]:
    """Model name -> the preprocessing all of its tags share (names whose tags disagree are left out).

    Used for checkpoints passed as file paths, which open_clip would otherwise preprocess with its
    generic OpenAI defaults.
    """
    defaults = {}
    for model, tags in pretrained_table().items():
        variants = {tuple((key, cfg[key]) for key in PREPROCESS_KEYS if key in cfg) for cfg in tags.values()}
        if len(variants) == 1:
            defaults[model] = dict(variants.pop())
    return defaults
