"""open_clip's model factory: clear errors, state_dict converters, preprocessing for local files.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 and main (4.2.0.dev0). ``create_model`` /
``create_model_and_transforms`` call the module-level names ``factory.create_model``,
``factory.download_pretrained``, ``factory.load_checkpoint`` and ``factory.load_state_dict``, so replacing
those attributes covers every public entry point (including open_clip_train). ``open_clip/__init__``
re-exports ``create_model`` and ``load_checkpoint``, so those aliases are replaced too (when they are the
same object). open_clip >= 2.32 re-raises download failures as a bare RuntimeError (unwrapped here);
``factory.convert_state_dict`` exists from 2.26.1 on; ``force_preprocess_cfg`` is feature-detected from
``create_model``'s signature. Wrappers keep the wrapped function as ``__wrapped__`` and never change a
successful call's result.

Each wrapper is its own feature (``FEATURES``): one that does not fit the installed open_clip is skipped
by mobileclip2.plugin without touching the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnknownModelError,
    UnknownPretrainedTagError,
    WeightsUnavailableError,
)
from ._common import Internal, already_wrapped, mark_wrapper

NAME_ERRORS = "clear errors for names and tags"
DOWNLOAD_ERRORS = "clear errors for downloads"
CHECKPOINT_READING = "checkpoint reading"
MISMATCH_SUMMARIES = "mismatch summaries"
_ALL = "2.24.0 - main"
INTERNALS = (
    Internal(
        "open_clip.factory.create_model",
        "replaced function",
        NAME_ERRORS,
        _ALL,
        "wrapped: unknown name / tag errors, local-file preprocessing, download errors surfaced; "
        "called as (model_name, pretrained, ...)",
        hook=True,
    ),
    Internal(
        "open_clip.factory.download_pretrained",
        "replaced function",
        DOWNLOAD_ERRORS,
        _ALL,
        "wrapped: a failed download says where the weights were looked for and what to do",
        hook=True,
    ),
    Internal(
        "open_clip.factory.load_state_dict",
        "replaced function",
        CHECKPOINT_READING,
        _ALL + "; weights_only from 2.29.0",
        "wrapped: Apple V1 conversion, safe reading on open_clip < 2.29, unreadable-file errors",
        hook=True,
    ),
    Internal(
        "open_clip.factory.load_checkpoint",
        "replaced function",
        MISMATCH_SUMMARIES,
        _ALL,
        "wrapped: a checkpoint that does not fit gets a summary of what is missing / unexpected",
        hook=True,
    ),
    Internal(
        "open_clip.factory.convert_state_dict",
        "module function",
        MISMATCH_SUMMARIES,
        "2.26.1 - main",
        "the conversion open_clip applies before loading, repeated for the mismatch summary (optional)",
    ),
    *(
        Internal(
            f"open_clip.{name}",
            "replaced alias",
            feature,
            _ALL,
            f"open_clip/__init__ re-exports factory.{name}; replaced together with it",
        )
        for name, feature in (("create_model", NAME_ERRORS), ("load_checkpoint", MISMATCH_SUMMARIES))
    ),
)

# open_clip's notice for a model built without weights (2.24 - 3.3: on the root logger; 4.x: on
# "open_clip.factory"), and the loggers it is written to.
RANDOM_INIT_NOTICE = "No pretrained weights loaded for model"
_NOTICE_LOGGERS = ("", "open_clip.factory")


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RANDOM_INIT_NOTICE)


@contextlib.contextmanager
def random_init_notice_silenced() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" notice while we build a model on purpose without
    weights (parameter counts, key/shape manifests, smoke checks): right for a user's own call,
    noise when it comes from ours. Other log records pass."""
    notice_filter = _DropRandomInitNotice()
    loggers = [logging.getLogger(name) for name in _NOTICE_LOGGERS]
    for logger in loggers:
        logger.addFilter(notice_filter)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notice_filter)


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


def check_model_and_tag(model_name: str, pretrained: str | None) -> None:
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


def hub_files_of_tag(model_name: str, pretrained: str) -> tuple[str, list[str]] | None:
    """(repo_id, file names in the order open_clip tries them) of a Hub tag; None for anything else
    (a local file, a URL tag, an ``hf-hub:`` model name). open_clip >= 2.26 tries the safetensors
    file of an ``org/repo/`` entry before the pickle one."""
    from open_clip import pretrained as open_clip_pretrained

    from .registry import hub_location, hub_weight_file_names

    if not pretrained or _schema_of(model_name) or os.path.isfile(os.path.expanduser(str(pretrained))):
        return None
    cfg = open_clip_pretrained.get_pretrained_cfg(model_name.replace("/", "-"), pretrained)
    if not cfg or not cfg.get("hf_hub"):
        return None
    repo_id, filename = hub_location(cfg)
    names = [filename]
    if cfg["hf_hub"].endswith("/"):
        names.insert(0, hub_weight_file_names()[1])
    return repo_id, names


def check_weights_available(
    model_name: str, pretrained: str | None, cache_dir: str | None = None, timeout: float = 3.0
) -> None:
    """Raise WeightsUnavailableError at once when a tag's Hub file is neither cached nor downloadable
    (offline, or the Hub unreachable): huggingface_hub would retry for about a minute first."""
    from ..hub import unavailable_reason

    found = hub_files_of_tag(model_name, pretrained)
    if found is None:
        return
    repo_id, names = found
    reason = unavailable_reason(repo_id, names, cache_dir, timeout)
    if reason is not None:
        raise WeightsUnavailableError(f"hf://{repo_id}/{names[-1]}", reason)


def takes_preprocess_cfg() -> bool:
    """Whether the installed ``create_model`` takes ``force_preprocess_cfg`` (open_clip >= 2.26)."""
    import inspect

    from open_clip import factory

    return "force_preprocess_cfg" in inspect.signature(factory.create_model).parameters


def _wrap_create_model(original: Callable) -> Callable:
    import inspect

    signature = inspect.signature(original)

    def create_model(model_name, pretrained=None, *args, **kwargs):
        check_model_and_tag(model_name, pretrained)
        cache_dir = signature.bind_partial(model_name, pretrained, *args, **kwargs).arguments.get("cache_dir")
        check_weights_available(model_name, pretrained, cache_dir)
        args, kwargs = _with_local_file_preprocess(signature, model_name, pretrained, args, kwargs)
        try:
            return original(model_name, pretrained, *args, **kwargs)
        except RuntimeError as error:
            # open_clip >= 2.32 re-raises download failures as a bare RuntimeError; surface ours.
            weights_error = _weights_error_in_chain(error)
            if weights_error is not None and weights_error is not error:
                raise weights_error from None
            raise

    return mark_wrapper(create_model, original)


def _describe_source(cfg: Mapping[str, Any]) -> str:
    if cfg.get("hf_hub"):
        from .registry import hub_location

        return "hf://" + "/".join(hub_location(cfg))
    return cfg.get("url") or cfg.get("file") or str(dict(cfg))


def _wrap_download_pretrained(original: Callable) -> Callable:
    def download_pretrained(cfg, *args, **kwargs):
        try:
            return original(cfg, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure here means "weights not obtainable"
            reason = f"the download failed ({type(error).__name__}: {error})"
            raise WeightsUnavailableError(_describe_source(cfg or {}), reason) from error

    return mark_wrapper(download_pretrained, original)


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

    return mark_wrapper(load_state_dict, original)


def _wrap_load_checkpoint(original: Callable) -> Callable:
    def load_checkpoint(model, checkpoint_path, *args, **kwargs):
        try:
            return original(model, checkpoint_path, *args, **kwargs)
        except RuntimeError as error:
            if "Error(s) in loading state_dict" not in str(error):
                raise
            from open_clip import factory

            state_dict = factory.load_state_dict(checkpoint_path)
            convert = getattr(factory, "convert_state_dict", None)  # open_clip >= 2.26.1
            if convert is not None:
                state_dict = convert(model, state_dict)
            source = f"checkpoint {str(checkpoint_path)!r}"
            summary = _EXPLAIN_MISMATCH[0](model.state_dict(), state_dict, source)
            summary += _describe_as_read(factory.load_state_dict, checkpoint_path)
            raise CheckpointMismatchError(summary) from error

    return mark_wrapper(load_checkpoint, original)


MismatchExplainer = Callable[[Mapping[str, Any], Mapping[str, Any], str], str]
# explain(model state, checkpoint state, source) -> the message of a CheckpointMismatchError.
_EXPLAIN_MISMATCH: list[MismatchExplainer] = []


def configure(
    local_file_preprocess: Mapping[str, Mapping[str, Any]], explain_mismatch: MismatchExplainer
) -> None:
    """``local_file_preprocess`` (model name -> preprocess keys) for checkpoints given as file paths, and
    ``explain_mismatch`` for a checkpoint that does not fit its model. Touches nothing upstream."""
    _LOCAL_FILE_PREPROCESS.update({name: dict(cfg) for name, cfg in local_file_preprocess.items()})
    _EXPLAIN_MISMATCH[:] = [explain_mismatch]


# attribute of open_clip.factory -> (wrapper factory, the arguments every known version accepts)
_WRAPPERS: dict[str, tuple[Callable[[Callable], Callable], tuple]] = {
    "create_model": (_wrap_create_model, ("name", None)),
    "download_pretrained": (_wrap_download_pretrained, ({},)),
    "load_state_dict": (_wrap_load_state_dict, ("path",)),
    "load_checkpoint": (_wrap_load_checkpoint, (None, "path")),
}
FEATURES = {
    NAME_ERRORS: "create_model",
    DOWNLOAD_ERRORS: "download_pretrained",
    CHECKPOINT_READING: "load_state_dict",
    MISMATCH_SUMMARIES: "load_checkpoint",
}


def install_wrapper(attr: str) -> None:
    """Wrap ``open_clip.factory.<attr>`` (and its ``open_clip.<attr>`` alias); idempotent.

    Raises AttributeError / TypeError, before changing anything, when the installed open_clip lacks the
    function or it no longer takes the arguments the wrapper passes through.
    """
    import inspect

    import open_clip
    from open_clip import factory

    make_wrapper, probe_args = _WRAPPERS[attr]
    original = getattr(factory, attr)
    if already_wrapped(original):
        return
    try:
        inspect.signature(original).bind(*probe_args)
    except TypeError as error:
        raise TypeError(f"open_clip.factory.{attr}{inspect.signature(original)}: {error}") from None
    wrapper = make_wrapper(original)
    setattr(factory, attr, wrapper)
    if getattr(open_clip, attr, None) is original:
        setattr(open_clip, attr, wrapper)
