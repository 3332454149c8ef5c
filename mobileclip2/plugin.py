"""Entry-point targets: add the MobileCLIP family to timm's and open_clip's registries.

``register`` is the ``open_clip.plugins`` entry point and ``register_timm`` the ``timm.plugins``
one (see setup.cfg); the autoload hook calls them when open_clip / timm is imported. Both are
idempotent and cheap, and both defer to upstream: a name the installed timm or open_clip
already defines is never replaced, ours only fills gaps.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# timm backbone name -> module defining it (torch-free table in mobileclip2.models).
from .models import BACKBONE_MODULES

# Text towers open_clip cannot build: kind -> "module:builder".
TEXT_TOWERS = {
    "mobileclip_mct": "mobileclip2.models.text_mct:build_text_tower",
}


@dataclass
class Registration:
    """What one registration did: names we added (backfilled) versus names upstream had."""

    timm_backfilled: list[str] = field(default_factory=list)
    configs_backfilled: list[str] = field(default_factory=list)
    tags_backfilled: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


_TIMM_STATE = Registration()
_OPEN_CLIP_STATE = Registration()
_in_progress: set[str] = set()


def register_timm(force_backfill: bool = False) -> Registration:
    """Register the MCi backbones that the installed timm lacks (timm < 1.0.20 lacks some or all).

    ``force_backfill=True`` registers ours over timm's own names; it exists so the equivalence
    tests can run our definitions next to a timm that has them, never for normal use.
    """
    if _TIMM_STATE.done or "timm" in _in_progress:
        return _TIMM_STATE
    _in_progress.add("timm")
    try:
        import timm
        from timm.models import register_model

        for name, module_name in BACKBONE_MODULES.items():
            if force_backfill or not timm.is_model(name):
                register_model(getattr(importlib.import_module(module_name), name))
                _TIMM_STATE.timm_backfilled.append(name)
        _TIMM_STATE.done = True
    finally:
        _in_progress.discard("timm")
    return _TIMM_STATE


def _lazy_builder(target: str):
    """Import the builder only when a model actually needs that tower."""
    module_name, attr = target.split(":")

    def build(*args, **kwargs):
        return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    return build


# Load hooks: Apple V1 checkpoints become OpenCLIP state_dicts (mobileclip2.convert, imported on
# use). Module-level objects, so registering them twice is recognised as the same hook.
_convert_if_apple_v1 = _lazy_builder("mobileclip2.convert:convert_if_apple_v1")
_describe_apple_v1 = _lazy_builder("mobileclip2.convert:describe_apple_v1")


def register(force_backfill: bool = False) -> Registration:
    """Register every MobileCLIP/MobileCLIP2 config, tag and hook open_clip needs. Idempotent.

    ``force_backfill=True`` (tests and debugging only; call it before anything imports open_clip
    with autoload off) makes our configs, tags and backbones replace upstream's own.
    """
    if _OPEN_CLIP_STATE.done or "open_clip" in _in_progress:
        return _OPEN_CLIP_STATE
    _in_progress.add("open_clip")
    try:
        from .compat import coca, factory, registry, text_tower
        from .configs import config_files
        from .identify import explain_mismatch
        from .pretrained import preprocess_defaults, pretrained_table

        register_timm(force_backfill)
        _OPEN_CLIP_STATE.configs_backfilled = registry.add_model_config_files(
            config_files(), replace=force_backfill
        )
        _OPEN_CLIP_STATE.tags_backfilled = registry.add_pretrained_cfgs(
            pretrained_table(), replace=force_backfill
        )
        for kind, target in TEXT_TOWERS.items():
            text_tower.register_text_tower(kind, _lazy_builder(target))
        factory.install_factory_hooks(preprocess_defaults(), explain_mismatch)
        factory.add_state_dict_converter(_convert_if_apple_v1, describe=_describe_apple_v1)
        coca.enable_coca_sampling()
        _OPEN_CLIP_STATE.done = True
    finally:
        _in_progress.discard("open_clip")
    return _OPEN_CLIP_STATE


def registration_state() -> tuple[Registration, Registration]:
    """(timm, open_clip) registration records, registering first if needed."""
    register()
    return _TIMM_STATE, _OPEN_CLIP_STATE
