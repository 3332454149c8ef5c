"""Checkpoint files read by open_clip never execute pickled code, whatever the versions.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 with torch 2.1 - 2.14 (checked on 2.24.0 and 3.3.0).
open_clip 2.24.0 to at least 2.26.1 read every checkpoint (local files and Hub downloads alike) with
``torch.load(path, map_location=...)``: no ``weights_only``. Under torch < 2.6 that default is
``weights_only=False``, so a crafted ``.pt``/``.bin`` file runs code when loaded; those releases
also cannot read ``.safetensors`` files. 2.29.0 and later take ``weights_only`` (default True) and
are left alone, so a caller's explicit ``load_weights_only=False`` is still honoured.

:func:`safe_load_state_dict` returns a reader for the installed open_clip: its own when it takes
``weights_only``, else mobileclip2.checkpoints.read_state_dict (weights_only=True torch.load or
safetensors, open_clip's unwrapping of ``state_dict`` and ``module.``). The choice is made by the
reader's signature, not by version numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

__all__ = ["reads_weights_only", "safe_load_state_dict"]


def reads_weights_only(load_state_dict: Callable) -> bool:
    """Whether open_clip's ``factory.load_state_dict`` takes ``weights_only`` (2.29.0 and later)."""
    try:
        return "weights_only" in inspect.signature(load_state_dict).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


def safe_load_state_dict(original: Callable) -> Callable:
    """``original`` if it already reads with weights_only, else a reader that never unpickles code."""
    if reads_weights_only(original):
        return original

    def load_state_dict(checkpoint_path, map_location="cpu", *args, **kwargs):
        from ..checkpoints import read_state_dict

        state_dict = read_state_dict(checkpoint_path)
        if map_location not in (None, "cpu"):
            state_dict = {key: value.to(map_location) for key, value in state_dict.items()}
        return state_dict

    load_state_dict.__wrapped__ = original
    load_state_dict.__doc__ = original.__doc__
    return load_state_dict
