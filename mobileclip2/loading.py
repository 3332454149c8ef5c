"""Load a model for inference the way the CLI commands (classify, export, bench) need it.

On top of open_clip's factory (whose hooks already fail fast when Hub weights cannot be had and give
local files the model's own preprocessing): the device is checked before anything is built, the
model is put in eval mode, and a model built without weights gets the preprocessing its pretrained
tags use, so an export made before the real weights arrive describes the right preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "LoadedModel",
    "check_device",
    "ensure_weights_available",
    "load_for_inference",
    "preprocess_source",
]


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(os.path.expanduser(pretrained))


def ensure_weights_available(model_name: str, pretrained: str | None, timeout: float = 3.0) -> None:
    """Raise the clear error for an unknown name or tag, or for Hub weights that cannot be had now
    (not cached, and offline or the Hub unreachable within ``timeout`` seconds); see mobileclip2.hub."""
    from .compat.factory import check_model_and_tag, check_weights_available

    check_model_and_tag(model_name, pretrained)
    check_weights_available(model_name, pretrained, timeout=timeout)


def preprocess_source(model_name: str, pretrained: str | None) -> str:
    """Where a model's preprocessing comes from when loaded with ``pretrained`` (for humans)."""
    from .pretrained import preprocess_defaults

    if pretrained and not _is_local_file(pretrained):
        return f"pretrained tag {pretrained!r}"
    from .compat.factory import takes_preprocess_cfg

    if model_name in preprocess_defaults() and takes_preprocess_cfg():
        what = "local checkpoint file" if pretrained else "no weights loaded"
        return f"the preprocessing of {model_name}'s pretrained tags ({what})"
    return "open_clip defaults" + (" (no weights loaded)" if not pretrained else "")


@dataclass
class LoadedModel:
    """A model in eval mode with its transform, tokenizer and the preprocessing it expects."""

    name: str
    pretrained: str | None
    model: Any
    preprocess: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    preprocess_source: str = ""


def check_device(device: str) -> str:
    """Refuse a device this machine cannot run on, before any model is built.

    torch accepts 'cuda:3' on a machine with one GPU until the first tensor moves; the error it
    then raises says nothing about the flag that caused it.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{device!r} is not a device name ({error}); use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use 'cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: Apple MPS is not available here; use 'cpu'")
    return device


def load_for_inference(
    model_name: str, pretrained: str | None, timeout: float = 3.0, device: str = "cpu"
) -> LoadedModel:
    """open_clip.create_model_and_transforms(..., pretrained) after the fast checks above, in eval
    mode on ``device`` (checked first, see check_device)."""
    import open_clip

    check_device(device)
    ensure_weights_available(model_name, pretrained, timeout=timeout)
    if pretrained and _is_local_file(pretrained):
        pretrained = os.path.expanduser(pretrained)
    from .compat.factory import takes_preprocess_cfg
    from .pretrained import preprocess_defaults

    options: dict[str, Any] = {}
    if not pretrained and model_name in preprocess_defaults() and takes_preprocess_cfg():
        # what its weights will need, not open_clip's generic defaults (OpenAI mean/std, bicubic)
        options["force_preprocess_cfg"] = dict(preprocess_defaults()[model_name])
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, **options
    )
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return LoadedModel(
        name=model_name,
        pretrained=pretrained,
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name),
        preprocess_cfg=cfg,
        preprocess_source=preprocess_source(model_name, pretrained),
    )
