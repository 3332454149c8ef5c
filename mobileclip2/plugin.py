"""Entry-point targets: add the MobileCLIP family to timm's and open_clip's registries.

``register`` is the ``open_clip.plugins`` entry point and ``register_timm`` the ``timm.plugins``
one (see setup.cfg); the autoload hook calls them when open_clip / timm is imported. Both are
idempotent and cheap, and both defer to upstream: a name the installed timm or open_clip
already defines is never replaced, ours only fills gaps.

Fail soft, feature by feature: ``register`` installs each entry of ``FEATURES`` (the core first: backbones,
configs, tags; then the hooks) in its own try block. One that does not fit the installed open_clip /
timm is recorded as skipped in the Registration record and warned about once (RuntimeWarning naming the
feature, the versions and what will not work); everything else keeps working, and ``mobileclip2 check``
shows each feature as a row.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
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
    # feature name -> "ok", or why it was skipped (open_clip registration only; see FEATURES)
    features: dict[str, str] = field(default_factory=dict)
    done: bool = False

    @property
    def skipped(self) -> dict[str, str]:
        """Features that did not fit the installed versions -> the reason."""
        return {name: status for name, status in self.features.items() if status != OK}


OK = "ok"


@dataclass(frozen=True)
class Feature:
    """One step of ``register``: what it is called, what stops working without it, and its installer."""

    name: str
    lost: str
    install: Callable[[bool], None]  # install(force_backfill)


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


def _install_backbones(force_backfill: bool) -> None:
    register_timm(force_backfill)


def _install_configs(force_backfill: bool) -> None:
    from .compat import registry
    from .configs import config_files

    _OPEN_CLIP_STATE.configs_backfilled = registry.add_model_config_files(
        config_files(), replace=force_backfill
    )


def _install_tags(force_backfill: bool) -> None:
    from .compat import registry
    from .pretrained import pretrained_table

    _OPEN_CLIP_STATE.tags_backfilled = registry.add_pretrained_cfgs(
        pretrained_table(), replace=force_backfill
    )


def _install_text_towers(force_backfill: bool) -> None:
    from .compat import text_tower

    for kind, target in TEXT_TOWERS.items():
        text_tower.register_text_tower(kind, _lazy_builder(target))


def _factory_wrapper(attr: str) -> Callable[[bool], None]:
    def install(force_backfill: bool) -> None:
        from .compat import factory

        factory.install_wrapper(attr)

    return install


def _install_coca_sampling(force_backfill: bool) -> None:
    from .compat import coca

    coca.enable_coca_sampling()


# Names are the ``feature`` of the compat modules' INTERNALS entries (tests/test_surface.py checks).
FEATURES = (
    Feature(
        "timm backbones",
        "MobileCLIP models whose image backbone the installed timm lacks (timm < 1.0.20) cannot be built",
        _install_backbones,
    ),
    Feature(
        "model configs",
        "MobileCLIP names the installed open_clip lacks are unknown to open_clip.create_model",
        _install_configs,
    ),
    Feature(
        "pretrained tags",
        "pretrained=<tag> is refused for MobileCLIP weights the installed open_clip lacks; "
        "local checkpoint files still load",
        _install_tags,
    ),
    Feature("MCt text tower", "MobileCLIP-S0 (MCt text tower) cannot be built", _install_text_towers),
    Feature(
        "clear errors for names and tags",
        "unknown names and tags get open_clip's terser errors, and local checkpoint files open_clip's "
        "generic preprocessing instead of the model's own",
        _factory_wrapper("create_model"),
    ),
    Feature(
        "clear errors for downloads",
        "a failed weight download gets open_clip's error, without where it looked or what to do",
        _factory_wrapper("download_pretrained"),
    ),
    Feature(
        "checkpoint reading",
        "Apple V1 checkpoints are not converted on load, unreadable files get open_clip's errors, and "
        "open_clip < 2.29 unpickles .pt files without weights_only",
        _factory_wrapper("load_state_dict"),
    ),
    Feature(
        "mismatch summaries",
        "a checkpoint that does not fit its model gets open_clip's raw load_state_dict error",
        _factory_wrapper("load_checkpoint"),
    ),
    Feature(
        "CoCa sampling",
        "CoCa.generate(generation_type='top_p' / 'top_k') needs transformers (and on open_clip >= 4 "
        "transformers' GenerationMixin), so the DR captioner may not run",
        _install_coca_sampling,
    ),
)


def _install(feature: Feature, force_backfill: bool) -> str:
    """Run one installer; "ok", or the reason it was skipped (after one warning)."""
    try:
        feature.install(force_backfill)
    except Exception as error:  # noqa: BLE001 - one feature must not take the others down
        from .compat._common import upstream_versions

        reason = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"mobileclip2 skipped the feature {feature.name!r}: it does not fit {upstream_versions()} "
            f"({reason}). What will not work: {feature.lost}. Everything else is registered; "
            "`mobileclip2 check` lists every feature.",
            RuntimeWarning,
            stacklevel=3,
        )
        return reason
    return OK


def register(force_backfill: bool = False) -> Registration:
    """Register every MobileCLIP/MobileCLIP2 config, tag and hook open_clip needs. Idempotent.

    Each feature is installed on its own (see the module docstring); a skipped one is recorded in
    ``Registration.features`` and warned about once. ``force_backfill=True`` (tests and debugging only;
    call it before anything imports open_clip with autoload off) makes our configs, tags and backbones
    replace upstream's own.
    """
    if _OPEN_CLIP_STATE.done or "open_clip" in _in_progress:
        return _OPEN_CLIP_STATE
    _in_progress.add("open_clip")
    try:
        from .compat import factory
        from .identify import explain_mismatch
        from .pretrained import preprocess_defaults

        # Our side of the hooks (no upstream code is touched here).
        factory.configure(preprocess_defaults(), explain_mismatch)
        factory.add_state_dict_converter(_convert_if_apple_v1, describe=_describe_apple_v1)
        for feature in FEATURES:
            _OPEN_CLIP_STATE.features[feature.name] = _install(feature, force_backfill)
        _OPEN_CLIP_STATE.done = True
    finally:
        _in_progress.discard("open_clip")
    return _OPEN_CLIP_STATE


def registration_state() -> tuple[Registration, Registration]:
    """(timm, open_clip) registration records, registering first if needed."""
    register()
    return _TIMM_STATE, _OPEN_CLIP_STATE
