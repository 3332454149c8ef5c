"""The one module that touches open_clip / timm internals.

Everything else in the package goes through the functions here. Each function names the
upstream versions it was written against and checked on (open_clip_torch 2.24.0 - 3.3.0,
timm 0.9.16 - 1.0.31, see docs/compatibility.md), prefers feature detection over version
strings, and is idempotent: calling it twice changes nothing. Wrappers keep the wrapped
function reachable as ``__wrapped__`` and never change a successful call's result; they only
turn failures into errors that say what to do (mobileclip2.errors) or, for Apple V1
checkpoints, convert the state_dict on the way in.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnknownModelError,
    UnknownPretrainedTagError,
    WeightsUnavailableError,
)

_WRAPPED_MARK = "__mobileclip2_wrapper__"


def open_clip_version() -> str:
    """Installed open_clip version; `open_clip.__version__` only exists from 2.25 on."""
    from open_clip.version import __version__

    return __version__


def _already_wrapped(fn: Callable) -> bool:
    return getattr(fn, _WRAPPED_MARK, False)


def _mark_wrapper(wrapper: Callable, wrapped: Callable) -> Callable:
    functools.update_wrapper(wrapper, wrapped)
    setattr(wrapper, _WRAPPED_MARK, True)
    return wrapper


# ---------------------------------------------------------------------------------------------
# Model configs. open_clip 2.24.0-3.3.0 keep them in factory._MODEL_CONFIGS (name -> dict),
# rebuilt from factory._MODEL_CONFIG_PATHS by _rescan_model_configs(). The public
# add_model_config(path) rescans every file on each call and lets a later file override a
# native name, so we add single files for missing names only and insert them directly.
# ---------------------------------------------------------------------------------------------


def native_model_config_names() -> set[str]:
    """Names open_clip's own config directory defines (ignoring anything added at runtime)."""
    from open_clip import factory

    native_dir = Path(factory.__file__).parent / "model_configs"
    return {path.stem for path in native_dir.glob("*.json")}


def add_model_config_files(files: Iterable[Path], replace: bool = False) -> list[str]:
    """Register each JSON config whose name open_clip does not know yet; returns names added.

    ``replace=True`` overrides native names too; it exists for equivalence tests and debugging
    (``register(force_backfill=True)``), never for normal use. An open_clip carrying our upstream
    patch (patches/0001) has a public ``register_model_config``; it is used when present.
    """
    from open_clip import factory

    public = getattr(factory, "register_model_config", None)
    known = set(factory.list_models())
    added = []
    for path in files:
        path = Path(path)
        if path.stem in known and not replace:
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if public is not None:
            public(path.stem, config, overwrite=replace)
        else:
            factory._MODEL_CONFIG_PATHS.append(path)  # survives a later _rescan_model_configs()
            factory._MODEL_CONFIGS[path.stem] = config
        added.append(path.stem)
    if added and public is None:
        ordered = sorted(factory._MODEL_CONFIGS.items(), key=lambda item: factory._natural_key(item[0]))
        factory._MODEL_CONFIGS.clear()
        factory._MODEL_CONFIGS.update(ordered)
    return added


# ---------------------------------------------------------------------------------------------
# Pretrained tags. open_clip 2.24.0-3.3.0: pretrained._PRETRAINED (name -> tag -> cfg dict).
# ---------------------------------------------------------------------------------------------


def add_pretrained_cfgs(
    table: Mapping[str, Mapping[str, Mapping[str, Any]]], replace: bool = False
) -> list[tuple[str, str]]:
    """Add (model, tag) entries open_clip lacks; native entries are kept unless ``replace``.

    Uses the public ``register_pretrained_cfg`` of a patched open_clip (patches/0001) when present.
    """
    from open_clip import pretrained

    public = getattr(pretrained, "register_pretrained_cfg", None)
    added = []
    for model_name, tags in table.items():
        for tag, cfg in tags.items():
            if pretrained.is_pretrained_cfg(model_name, tag) and not replace:
                continue
            if public is not None:
                public(model_name, tag, dict(cfg), overwrite=replace)
            else:
                pretrained._PRETRAINED.setdefault(model_name, {})[tag] = dict(cfg)
            added.append((model_name, tag))
    return added


def native_pretrained_tags(model_name: str) -> list[str]:
    from open_clip import pretrained

    return list(pretrained._PRETRAINED.get(model_name, {}))


# ---------------------------------------------------------------------------------------------
# Text towers. open_clip 2.24.0-3.3.0 build the text tower of CLIP / CustomTextCLIP through the
# module-level function model._build_text_tower(embed_dim, text_cfg, quick_gelu, cast_dtype),
# which only knows its own TextTransformer and HF models, and passes text_cfg through
# CLIPTextCfg(**text_cfg) (unknown keys are a TypeError). A config selects one of our towers with
# the key TEXT_TOWER_KEY; the wrapper routes such configs to the registered builder.
# ---------------------------------------------------------------------------------------------

TEXT_TOWER_KEY = "text_tower"
_TEXT_TOWER_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_text_tower(kind: str, builder: Callable[..., Any]) -> None:
    """Make ``text_cfg = {"text_tower": kind, ...}`` build with ``builder(embed_dim, text_cfg, quick_gelu, cast_dtype)``."""
    from open_clip import model as open_clip_model

    upstream_registry = getattr(open_clip_model, "register_text_tower", None)
    if upstream_registry is not None:  # open_clip with patches/0002: no wrapping needed
        upstream_registry(kind, builder)
        return
    _TEXT_TOWER_BUILDERS[kind] = builder
    original = open_clip_model._build_text_tower
    if _already_wrapped(original):
        return

    def _build_text_tower(embed_dim, text_cfg, quick_gelu=False, cast_dtype=None):
        kind = text_cfg.get(TEXT_TOWER_KEY) if isinstance(text_cfg, Mapping) else None
        if kind is None:
            return original(embed_dim, text_cfg, quick_gelu, cast_dtype)
        if kind not in _TEXT_TOWER_BUILDERS:
            raise ValueError(
                f"text_cfg asks for text tower {kind!r}, but only {sorted(_TEXT_TOWER_BUILDERS)} are registered"
            )
        return _TEXT_TOWER_BUILDERS[kind](embed_dim, dict(text_cfg), quick_gelu, cast_dtype)

    open_clip_model._build_text_tower = _mark_wrapper(_build_text_tower, original)


# ---------------------------------------------------------------------------------------------
# Factory hooks (open_clip 2.24.0-3.3.0). create_model/create_model_and_transforms call the
# module-level names factory.create_model, factory.download_pretrained, factory.load_checkpoint
# and factory.load_state_dict, so replacing those attributes covers every public entry point
# (including open_clip_train). open_clip/__init__ re-exports create_model, so that alias is
# replaced too.
# ---------------------------------------------------------------------------------------------

StateDictConverter = Callable[[dict], dict]
_STATE_DICT_CONVERTERS: list[StateDictConverter] = []
# describe(state_dict as read) -> a sentence for mismatch errors about files a converter changed.
_STATE_DICT_DESCRIBERS: list[Callable[[dict], str | None]] = []


def add_state_dict_converter(
    converter: StateDictConverter, describe: Callable[[dict], str | None] | None = None
) -> None:
    """Run `converter` on every state_dict open_clip reads (it returns its input when not applicable).

    ``describe``, if given, explains a file the converter handled when it then fails to fit the
    model (e.g. "an Apple V1 checkpoint of MobileCLIP-S1"); it returns None for other files.
    """
    if converter not in _STATE_DICT_CONVERTERS:
        _STATE_DICT_CONVERTERS.append(converter)
    if describe is not None and describe not in _STATE_DICT_DESCRIBERS:
        _STATE_DICT_DESCRIBERS.append(describe)


def _describe_as_read(load_state_dict: Callable, checkpoint_path) -> str:
    """What the describers say about the file before conversion ('' if nothing)."""
    if not _STATE_DICT_DESCRIBERS:
        return ""
    raw = getattr(load_state_dict, "__wrapped__", load_state_dict)(checkpoint_path)
    notes = [note for describe in _STATE_DICT_DESCRIBERS if (note := describe(raw))]
    return "".join(" " + note for note in notes)


def _schema_of(model_name: str) -> str | None:
    for prefix in ("hf-hub:", "local-dir:"):
        if model_name.startswith(prefix):
            return prefix
    return None


def _check_model_and_tag(model_name: str, pretrained: str | None) -> None:
    """Raise the clear error open_clip would otherwise raise in a less helpful form."""
    from open_clip import factory
    from open_clip import pretrained as open_clip_pretrained

    if _schema_of(model_name):
        return
    name = model_name.replace("/", "-")
    if factory.get_model_config(name) is None:
        known = factory.list_models()
        raise UnknownModelError(model_name, known, hint=_tag_in_name_hint(name, known))
    if not pretrained or pretrained.lower() == "openai" or os.path.isfile(pretrained):
        return
    if not open_clip_pretrained.is_pretrained_cfg(name, pretrained):
        raise UnknownPretrainedTagError(
            name, pretrained, open_clip_pretrained.list_pretrained_tags_by_model(name)
        )


def _tag_in_name_hint(name: str, known: Iterable[str]) -> str:
    """'MobileCLIP-B-LT' is 'MobileCLIP-B' with tag 'datacompdr_lt': Hub repo names mix the two."""
    from open_clip.pretrained import list_pretrained_tags_by_model

    for model in known:
        if not name.lower().startswith(model.lower() + "-"):
            continue
        suffix = name[len(model) + 1 :].lower().replace("-", "_")
        for tag in list_pretrained_tags_by_model(model):
            if tag == suffix or tag.endswith("_" + suffix):
                return f"{name!r} is open_clip model {model!r} with pretrained={tag!r}."
    return ""


def _weights_error_in_chain(error: BaseException) -> WeightsUnavailableError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, WeightsUnavailableError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# Preprocessing a model's weights were trained with, by model name (see install_factory_hooks).
_LOCAL_FILE_PREPROCESS: dict[str, dict[str, Any]] = {}


def _with_local_file_preprocess(signature, model_name, pretrained, args, kwargs) -> tuple[tuple, dict]:
    """For a local checkpoint file, start from the model's own preprocessing instead of open_clip's
    generic defaults (OpenAI mean/std, bicubic), which are wrong for most MobileCLIP weights.

    open_clip 2.24-3.3 merge preprocessing only from a *tag*'s cfg; a file path gets the generic
    defaults. Values the caller passes (image_mean=..., force_preprocess_cfg=...) still win.
    """
    defaults = _LOCAL_FILE_PREPROCESS.get(str(model_name).replace("/", "-"))
    if "force_preprocess_cfg" not in signature.parameters:
        return args, kwargs
    if not defaults or not pretrained or not os.path.isfile(str(pretrained)):
        return args, kwargs
    bound = signature.bind_partial(model_name, pretrained, *args, **kwargs)
    bound.arguments["force_preprocess_cfg"] = {
        **defaults,
        **(bound.arguments.get("force_preprocess_cfg") or {}),
    }
    return bound.args[2:], bound.kwargs


def _wrap_create_model(original: Callable) -> Callable:
    import inspect

    signature = inspect.signature(original)

    def create_model(model_name, pretrained=None, *args, **kwargs):
        _check_model_and_tag(model_name, pretrained)
        args, kwargs = _with_local_file_preprocess(signature, model_name, pretrained, args, kwargs)
        try:
            return original(model_name, pretrained, *args, **kwargs)
        except RuntimeError as error:
            # open_clip >= 2.32 re-raises download failures as a bare RuntimeError; surface ours.
            weights_error = _weights_error_in_chain(error)
            if weights_error is not None and weights_error is not error:
                raise weights_error from None
            raise

    return _mark_wrapper(create_model, original)


def _describe_source(cfg: Mapping[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from ..pretrained import hub_location

        return "hf://" + "/".join(hub_location(cfg))
    return cfg.get("url") or cfg.get("file") or str(dict(cfg))


def _wrap_download_pretrained(original: Callable) -> Callable:
    def download_pretrained(cfg, *args, **kwargs):
        try:
            return original(cfg, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure here means "weights not obtainable"
            from ..pretrained import hub_offline

            raise WeightsUnavailableError(
                _describe_source(cfg or {}), error, offline=hub_offline()
            ) from error

    return _mark_wrapper(download_pretrained, original)


def _wrap_load_state_dict(original: Callable) -> Callable:
    from .safe_load import safe_load_state_dict

    original = safe_load_state_dict(original)  # open_clip <= 2.26: no torch.load without weights_only

    def load_state_dict(checkpoint_path, *args, **kwargs):
        if not os.path.isfile(checkpoint_path):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint_path!r}")
        try:
            state_dict = original(checkpoint_path, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a reader failure means the file is unusable
            raise CorruptCheckpointError(str(checkpoint_path), error) from error
        if not isinstance(state_dict, dict) or not state_dict:
            raise CorruptCheckpointError(str(checkpoint_path), TypeError("no tensors found in the file"))
        for converter in _STATE_DICT_CONVERTERS:
            state_dict = converter(state_dict)
        return state_dict

    return _mark_wrapper(load_state_dict, original)


def _wrap_load_checkpoint(original: Callable) -> Callable:
    def load_checkpoint(model, checkpoint_path, *args, **kwargs):
        try:
            return original(model, checkpoint_path, *args, **kwargs)
        except RuntimeError as error:
            if "Error(s) in loading state_dict" not in str(error):
                raise
            from open_clip import factory

            from ..checkpoints import summarize_mismatch

            state_dict = factory.load_state_dict(checkpoint_path)
            convert = getattr(factory, "convert_state_dict", None)  # open_clip >= 2.26.1
            if convert is not None:
                state_dict = convert(model, state_dict)
            summary = summarize_mismatch(
                model.state_dict(), state_dict, source=f"checkpoint {str(checkpoint_path)!r}"
            )
            summary += _describe_as_read(factory.load_state_dict, checkpoint_path)
            raise CheckpointMismatchError(summary) from error

    return _mark_wrapper(load_checkpoint, original)


def install_factory_hooks(local_file_preprocess: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Clear errors for bad names/tags/files/downloads, state_dict conversion on load, and
    ``local_file_preprocess`` (model name -> preprocess keys) for checkpoints given as file paths."""
    import open_clip
    from open_clip import factory

    _LOCAL_FILE_PREPROCESS.update({name: dict(cfg) for name, cfg in (local_file_preprocess or {}).items()})
    wrappers = {
        "create_model": _wrap_create_model,
        "download_pretrained": _wrap_download_pretrained,
        "load_state_dict": _wrap_load_state_dict,
        "load_checkpoint": _wrap_load_checkpoint,
    }
    for attr, make_wrapper in wrappers.items():
        original = getattr(factory, attr)
        if not _already_wrapped(original):
            setattr(factory, attr, make_wrapper(original))
    for attr in ("create_model", "load_checkpoint"):
        if hasattr(open_clip, attr):
            setattr(open_clip, attr, getattr(factory, attr))


# =============================================================================================
# open_clip_train hooks for `python -m mobileclip2.train` (dataset reinforcement, distillation).
# Self-contained: nothing above uses it, it imports nothing at module load.
#
# Written against open_clip_train 3.3.0 (the package ships inside the open_clip_torch wheel;
# older releases call it `training` and are not supported). open_clip_train.main.main() calls
# three module-level names it imported at load time -- parse_args, get_data, create_loss -- so
# replacing those attributes of open_clip_train.main for the duration of one main() call swaps
# exactly those steps and leaves the loop, logging, resuming and checkpointing untouched. The
# originals are put back on exit, errors included. Feature detection: the three names and main
# must exist and be callable, else a clear error names what is missing.
#
# main() also wraps the model as DistributedDataParallel(model, device_ids=[device]), which torch
# rejects for CPU devices (2-process gloo runs). While the hooks are active, DDP given only CPU
# device_ids is built without them -- a call that would otherwise raise, so no working call changes.
# =============================================================================================

OPEN_CLIP_TRAIN_HOOKS = ("parse_args", "get_data", "create_loss")


def open_clip_train_main_module():
    """open_clip_train.main, checked for the names mobileclip2.train hooks."""
    try:
        from open_clip_train import main as train_main
    except ImportError as error:
        raise ImportError(
            "mobileclip2.train runs open_clip_train's loop, which ships with open_clip_torch (checked with 3.3.0); "
            f"`import open_clip_train` failed: {error}"
        ) from error
    missing = [
        name for name in (*OPEN_CLIP_TRAIN_HOOKS, "main") if not callable(getattr(train_main, name, None))
    ]
    if missing:
        raise RuntimeError(
            f"open_clip_train.main lacks {missing}; mobileclip2.train was written against open_clip_train 3.3.0, "
            f"installed open_clip is {open_clip_version()}"
        )
    return train_main


class open_clip_train_hooks:  # noqa: N801 - used like a function: `with open_clip_train_hooks(...) as m:`
    """Context manager: ``{name: make_wrapper(original) -> replacement}`` for OPEN_CLIP_TRAIN_HOOKS."""

    def __init__(self, wrappers: Mapping[str, Callable[[Callable], Callable]]):
        unknown = sorted(set(wrappers) - set(OPEN_CLIP_TRAIN_HOOKS))
        if unknown:
            raise ValueError(f"cannot hook {unknown}; hookable: {OPEN_CLIP_TRAIN_HOOKS}")
        self.wrappers = dict(wrappers)
        self.originals: dict[str, Callable] = {}
        self.ddp_original = None

    def __enter__(self):
        import torch

        train_main = open_clip_train_main_module()
        self.module = train_main
        self.originals = {name: getattr(train_main, name) for name in self.wrappers}
        for name, make in self.wrappers.items():
            setattr(train_main, name, make(self.originals[name]))
        self.ddp_original = torch.nn.parallel.DistributedDataParallel
        torch.nn.parallel.DistributedDataParallel = _cpu_safe_ddp_class(self.ddp_original)
        return train_main

    def __exit__(self, *exc_info):
        import torch

        for name, original in self.originals.items():
            setattr(self.module, name, original)
        if self.ddp_original is not None:
            torch.nn.parallel.DistributedDataParallel = self.ddp_original
        return False


def _cpu_safe_ddp_class(ddp_class):
    import torch

    class CpuSafeDistributedDataParallel(ddp_class):
        """DDP that ignores ``device_ids`` naming only CPU devices (torch raises for them)."""

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(
                isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu" for d in device_ids
            ):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    return CpuSafeDistributedDataParallel


# ---------------------------------------------------------------------------------------------
# CoCa generation. open_clip 2.24.0-3.3.0 import transformers' sampling helpers *and*
# BeamSearchScorer in one try-block of coca_model.py (module globals LogitsProcessorList,
# TopPLogitsWarper, TopKLogitsWarper, RepetitionPenaltyLogitsProcessor, MinLengthLogitsProcessor,
# MaxLengthCriteria, StoppingCriteriaList, GENERATION_TYPES, _has_transformers). Without
# transformers, or with transformers >= 5 (no BeamSearchScorer), that import fails and every kind
# of generation is off, although top_p / top_k sampling - what Apple's captioner README uses -
# needs none of it. When (and only when) open_clip's own import failed, we hand it the small
# equivalents in mobileclip2.generation; beam search then fails with an error that says what to do.
# ---------------------------------------------------------------------------------------------


def enable_coca_sampling() -> bool:
    """Make CoCa.generate's top_p/top_k sampling work without transformers; True if it now works."""
    from open_clip import coca_model

    if coca_model._has_transformers:
        return True
    from .. import generation

    for name in generation.__all__:
        setattr(coca_model, name, getattr(generation, name))
    coca_model.GENERATION_TYPES.update(top_k=generation.TopKLogitsWarper, top_p=generation.TopPLogitsWarper)
    coca_model._has_transformers = True  # the flag guards sampling; beam search is guarded below
    original = coca_model.CoCa.generate
    if _already_wrapped(original):
        return True
    import inspect

    signature = inspect.signature(original)

    def generate(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("generation_type") == "beam_search" and not hasattr(
            coca_model, "BeamSearchScorer"
        ):
            from ..errors import GenerationUnavailableError

            raise GenerationUnavailableError(
                "CoCa beam search needs transformers' BeamSearchScorer, which this environment lacks "
                "(transformers is not installed, or is >= 5 where it was removed). Pass "
                "generation_type='top_p' or 'top_k' (sampling works without transformers), or install "
                "transformers<5 for beam search."
            )
        return original(self, *args, **kwargs)

    coca_model.CoCa.generate = _mark_wrapper(generate, original)
    return True
