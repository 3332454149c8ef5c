"""Which of our models a state_dict belongs to: its key/shape manifest against each model's.

A strict load compares exactly the (key, shape) pairs, so two state_dicts with equal manifests load
into the same model. Each candidate is built once per process on the meta device (no memory, no
initialisation); candidates whose text-tower sizes disagree with the state_dict's are skipped
without building. This is the one answer to "which model is this checkpoint" in the package: load
errors name the model a file fits, and ``mobileclip2 convert`` recognises Apple's V1 files by it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch

from .checkpoints import summarize_mismatch
from .configs import model_names

__all__ = ["explain_mismatch", "manifest", "meta_state_dict", "models_fitting"]

Manifest = frozenset


def manifest(state: Mapping[str, torch.Tensor]) -> Manifest:
    """The (key, shape) pairs of a state_dict: what a strict load compares."""
    return frozenset((key, tuple(value.shape)) for key, value in state.items())


def _text_sizes(state: Mapping[str, Any]) -> dict[str, int]:
    """Text-tower sizes readable from a state_dict (embed_dim, width, vocab, context)."""
    found: dict[str, int] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            continue
        shape = tuple(value.shape)
        if key.endswith("token_embedding.weight") and len(shape) == 2:
            found["vocab_size"], found["width"] = shape
        elif re.search(r"(^|\.)positional_embedding$", key) and len(shape) == 2:
            found["context_length"] = shape[0]
        elif re.search(r"(^|\.)text_projection(\.weight)?$", key) and len(shape) == 2:
            found["embed_dim"] = shape[1] if key.endswith("text_projection") else shape[0]
    return found


def _config_text_sizes(name: str) -> dict[str, int]:
    """The same sizes from the model's open_clip config (open_clip's defaults where it names none)."""
    from open_clip import factory

    from .compat.registry import text_cfg_default

    cfg = factory.get_model_config(name) or {}
    text = cfg.get("text_cfg", {})
    sizes = {key: text.get(key, text_cfg_default(key)) for key in ("width", "vocab_size", "context_length")}
    return {**sizes, "embed_dim": cfg.get("embed_dim")}


@functools.cache
def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The state_dict of ``open_clip.create_model(name)`` on the meta device: keys and shapes, no data."""
    import open_clip

    from .compat.factory import random_init_notice_silenced

    with torch.device("meta"), random_init_notice_silenced():
        return open_clip.create_model(name, device="meta").state_dict()


def models_fitting(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of our models whose key/shape manifest equals ``state``'s (empty when none does)."""
    if "logit_scale" not in state:  # every CLIP/CoCa model has one: a partial or foreign state fits none
        return []
    wanted, sizes = manifest(state), _text_sizes(state)
    fitting = []
    for name in model_names():
        known = _config_text_sizes(name)
        if any(known.get(key) is not None and known[key] != value for key, value in sizes.items()):
            continue
        try:
            if manifest(meta_state_dict(name)) == wanted:
                fitting.append(name)
        except Exception:  # noqa: BLE001 - a model this environment cannot build fits nothing
            continue
    return fitting


def explain_mismatch(
    model_state: Mapping[str, torch.Tensor],
    checkpoint_state: Mapping[str, torch.Tensor],
    source: str,
    model_name: str | None = None,
) -> str:
    """:func:`mobileclip2.checkpoints.summarize_mismatch`, naming the model loaded into (identified
    from ``model_state`` unless ``model_name`` says it) and the models the checkpoint fits."""
    if model_name is None:
        model_name = " / ".join(models_fitting(model_state)) or None
    return summarize_mismatch(
        model_state,
        checkpoint_state,
        source=source,
        model_name=model_name,
        fitting=models_fitting(checkpoint_state),
    )
