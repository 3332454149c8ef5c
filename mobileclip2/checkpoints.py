"""Reading checkpoints safely and explaining why one does not fit a model.

Pure helpers over state_dicts (no open_clip): format detection by sentinel keys, a reader that
never unpickles code, and a mismatch summary short enough to read. Which registered model a
state_dict fits is answered by :mod:`mobileclip2.identify`, which builds models; its answer is
passed in here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .errors import CorruptCheckpointError

# Sentinel key prefixes -> human-readable format names, checked in order.
_FORMAT_SENTINELS = (
    ("image_encoder.model.", "Apple MobileCLIP V1 (mobileclip package) state_dict"),
    ("visual.trunk.", "OpenCLIP state_dict (timm image tower)"),
    ("visual.", "OpenCLIP state_dict"),
    ("module.visual.", "OpenCLIP training checkpoint (DDP 'module.' prefix)"),
    ("stem.", "timm image backbone only"),
    ("patch_embed.", "timm image backbone only"),
)


def detect_format(keys: Iterable[str]) -> str:
    """Name the checkpoint layout from its keys, for error messages and `convert`."""
    keys = list(keys)
    for prefix, name in _FORMAT_SENTINELS:
        if any(key.startswith(prefix) for key in keys):
            return name
    return "unrecognized layout"


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: a bare state_dict or open_clip_train's {'state_dict': ...}."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise TypeError(f"expected a non-empty mapping of tensors, got {type(checkpoint).__name__}")
    state_dict = dict(checkpoint)
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise TypeError(f"entries that are not tensors: {not_tensors[:3]}")
    return state_dict


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a .safetensors or torch file as a state_dict, never executing pickled code.

    Raises FileNotFoundError for a missing path and CorruptCheckpointError for anything that
    cannot be read as a mapping of tensors (truncated download, wrong file type, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path, device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return unwrap_state_dict(checkpoint)
    except Exception as exc:  # noqa: BLE001 - every reader failure means "not a usable checkpoint"
        raise CorruptCheckpointError(path, exc) from exc


def _examples(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _by_prefix(keys: list[str], depth: int = 2) -> str:
    counts = Counter(".".join(key.split(".")[:depth]) for key in keys)
    return ", ".join(f"{prefix}.* x{count}" for prefix, count in counts.most_common(4))


def summarize_mismatch(
    model_state: Mapping[str, torch.Tensor],
    checkpoint_state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    model_name: str | None = None,
    fitting: Sequence[str] = (),
) -> str:
    """One paragraph saying which model the weights were loaded into, which keys are
    missing/unexpected/mis-shaped, which registered models they fit instead (``fitting``, from
    :func:`mobileclip2.identify.models_fitting`), and what to try."""
    missing = sorted(set(model_state) - set(checkpoint_state))
    unexpected = sorted(set(checkpoint_state) - set(model_state))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(checkpoint_state[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in set(model_state) & set(checkpoint_state)
        if tuple(model_state[key].shape) != tuple(checkpoint_state[key].shape)
    )
    target = f"the model {model_name}" if model_name else "the model"
    parts = [
        f"{source} (detected format: {detect_format(checkpoint_state)}) does not fit {target}: "
        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mis_shaped)} mis-shaped of "
        f"{len(model_state)} model tensors."
    ]
    if missing:
        parts.append(f"Missing: {_by_prefix(missing)} (e.g. {_examples(missing)}).")
    if unexpected:
        parts.append(f"Unexpected: {_by_prefix(unexpected)} (e.g. {_examples(unexpected)}).")
    if mis_shaped:
        parts.append(f"Mis-shaped: {_examples(mis_shaped, 3)}.")
    fitting = list(fitting)
    if len(fitting) == 1:
        parts.append(
            f"This looks like a {fitting[0]} checkpoint (its tensors fit that model exactly): load it as "
            f"{fitting[0]!r}."
        )
    elif fitting:
        parts.append(
            f"This looks like a {' or '.join(fitting)} checkpoint (its tensors fit each of these exactly: "
            "same architecture, different training and preprocessing): "
            "load it with the name it was trained as."
        )
    else:
        parts.append(
            "These weights most likely belong to a different model: check the model name against the "
            "checkpoint (`mobileclip2 info NAME` shows each model's towers), or convert Apple V1 "
            "checkpoints with `mobileclip2 convert`."
        )
    return " ".join(parts)
