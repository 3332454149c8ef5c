"""Apple MobileCLIP V1 checkpoints -> OpenCLIP state_dicts.

Apple's V1 package (apple/ml-mobileclip, ``mobileclip/``) saves the un-fused model as a plain
state_dict: ``image_encoder.model.*`` (MCi / FastViT, or the ViT-B/16 of MobileCLIP-B),
``text_encoder.*`` (a pre-norm transformer, or MCt for S0) and ``logit_scale``. OpenCLIP names
the same tensors ``visual.trunk.*`` (timm's fastvit / vit_base_mci_224 layout), ``text.*`` and
``logit_scale``. The mapping is a handful of ordered rename tables plus three tensor reshapes
(positional embeddings, the image projection); nothing here builds or mutates a model.

The image trunks are mapped by their family modules (``models.mci.from_apple_layout``,
``models.vit_mci.from_apple_layout``: the same renames their timm ``checkpoint_filter_fn`` applies,
as in timm), the text towers here; the text mapping reproduces open_clip 3.3.0's
``convert_mobile_clip_state_dict``, which does not handle S0's MCt (tested; not imported, because
the oldest supported open_clip lacks it). Which model a file is comes from
:func:`mobileclip2.identify.models_fitting` on the converted tensors.

Entry points: :func:`convert_state_dict` (pure), :func:`convert_if_apple_v1` (the hook every
open_clip load passes through, see plugin.register) and :func:`convert_checkpoint` (files; also
``mobileclip2 convert``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .checkpoints import detect_format, read_state_dict
from .compat.timm_layers import FUSED_ATTRS
from .errors import CheckpointMismatchError, UsageError
from .identify import explain_mismatch, manifest, meta_state_dict, models_fitting
from .models import APPLE_IMAGE_PREFIX, mci, rename, vit_mci

__all__ = [
    "ConvertedCheckpoint",
    "V1Conversion",
    "check_output_name",
    "convert_checkpoint",
    "convert_if_apple_v1",
    "convert_state_dict",
    "describe_apple_v1",
    "is_apple_v1",
    "read_and_convert",
    "save_safetensors",
]

IMAGE_PREFIX = APPLE_IMAGE_PREFIX
TEXT_PREFIX = "text_encoder."
TOP_LEVEL_KEYS = ("logit_scale",)
_GENERATED = "(generated)"  # provenance of tensors the V1 format lacks (zero biases of the projections)
# Apple's V1 package released MobileCLIP models only; their MobileCLIP2 twins have the same tensors.
V1_FAMILY = "MobileCLIP-"

# -- text: Apple's TextTransformer ("base" and "mct") -> open_clip TextTransformer / our MCt -------
_TEXT_RENAMES = (
    ("embedding_layer.", "token_embedding."),
    ("final_layer_norm.", "ln_final."),
    ("projection_layer", "text_projection"),
    ("pre_norm_mha.0.", "ln_1."),
    ("pre_norm_mha.1.qkv_proj.weight", "attn.in_proj_weight"),
    ("pre_norm_mha.1.qkv_proj.bias", "attn.in_proj_bias"),
    ("pre_norm_mha.1.out_proj.", "attn.out_proj."),
    ("pre_norm_ffn.0.", "ln_2."),
    ("pre_norm_ffn.1.", "mlp.c_fc."),
    ("pre_norm_ffn.4.", "mlp.c_proj."),
    # MCt's RepMixer blocks use timm's FastViT names, like the image tower.
    ("rbr_conv.", "conv_kxk."),
    ("rbr_skip.", "identity."),
    ("convffn.", "mlp."),
)
# Learned positions, stored as [1, 1, L, C] by both towers.
_TEXT_POSITIONS_V1 = "positional_embedding.pos_embed.pos_embed"  # stored as [1, 1, L, C]


@dataclass
class V1Conversion:
    """An Apple V1 state_dict converted to OpenCLIP names, with the provenance of every key."""

    state_dict: dict[str, torch.Tensor]
    source_of: dict[str, str] = field(default_factory=dict)  # OpenCLIP key -> V1 key (or _GENERATED)
    model_name: str | None = None  # from the architecture fingerprint, None if unknown


def is_apple_v1(keys: Iterable[str]) -> bool:
    """True for Apple's V1 layout (sentinel prefixes of its two towers)."""
    return any(key.startswith((IMAGE_PREFIX, TEXT_PREFIX)) for key in keys)


def _convert_text(text: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for key, value in text.items():
        if key == _TEXT_POSITIONS_V1:
            out["positional_embedding"] = (key, value.reshape(value.shape[-2], value.shape[-1]))
            continue
        new_key = mci.layer_scale_key(rename(key, _TEXT_RENAMES))
        if new_key.startswith("transformer."):
            new_key = "transformer.resblocks." + new_key[len("transformer.") :]
        out[new_key] = (key, value)
    return out


def _split(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _unmapped_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(
        k for k in state_dict if not k.startswith((IMAGE_PREFIX, TEXT_PREFIX)) and k not in TOP_LEVEL_KEYS
    )


def _fused_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of modules that exist only in a model reparameterized before saving."""
    return sorted(k for k in state_dict if any(marker in k.split(".") for marker in FUSED_ATTRS))


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], identify: bool = True) -> V1Conversion:
    """Map every tensor of an Apple V1 state_dict to its OpenCLIP name; raise on keys with no mapping.

    ``identify`` also names the model the result fits (builds candidates on the meta device).

    Raises CheckpointMismatchError for keys outside Apple's three groups, and for checkpoints
    saved *after* reparameterization (their fused convs have no place in a trainable model).
    """
    if not is_apple_v1(state_dict):
        raise CheckpointMismatchError(
            f"not an Apple MobileCLIP V1 state_dict (detected format: {detect_format(state_dict)}); "
            f"V1 checkpoints have keys starting with {IMAGE_PREFIX!r} and {TEXT_PREFIX!r}."
        )
    unmapped = _unmapped_keys(state_dict)
    if unmapped:
        raise CheckpointMismatchError(
            f"{len(unmapped)} keys of this Apple V1 checkpoint belong to neither tower nor the logit scale, "
            f"so they have no OpenCLIP name: {', '.join(unmapped[:6])}{' ...' if len(unmapped) > 6 else ''}."
        )
    fused = _fused_keys(state_dict)
    if fused:
        raise CheckpointMismatchError(
            f"this Apple V1 checkpoint was saved after reparameterization ({len(fused)} fused tensors, e.g. "
            f"{fused[0]}); only un-fused checkpoints (as Apple publishes them) can be converted. Convert the "
            "original file, then call mobileclip2.reparameterize(model) after loading."
        )
    image = _split(state_dict, IMAGE_PREFIX)
    family = vit_mci if vit_mci.APPLE_SENTINEL in image else mci
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    for key, (source, value) in family.from_apple_layout(image).items():
        mapped["visual.trunk." + key] = (_GENERATED if source is None else IMAGE_PREFIX + source, value)
    for key, (source, value) in _convert_text(_split(state_dict, TEXT_PREFIX)).items():
        mapped["text." + key] = (TEXT_PREFIX + source, value)
    for key in TOP_LEVEL_KEYS:
        if key in state_dict:
            mapped[key] = (key, state_dict[key])
    conversion = V1Conversion(
        state_dict={key: value for key, (_, value) in mapped.items()},
        source_of={key: source for key, (source, _) in mapped.items()},
    )
    if identify:
        fitting = [name for name in models_fitting(conversion.state_dict) if name.startswith(V1_FAMILY)]
        conversion.model_name = fitting[0] if len(fitting) == 1 else None
    return conversion


def convert_if_apple_v1(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The load hook (compat.add_state_dict_converter): V1 state_dicts are converted, others pass
    unchanged."""
    if not is_apple_v1(state_dict):
        return state_dict
    return convert_state_dict(state_dict, identify=False).state_dict


def describe_apple_v1(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence for load errors: which model an Apple V1 file (converted while loading) belongs to."""
    if not is_apple_v1(state_dict):
        return None
    try:
        name = convert_state_dict(state_dict).model_name
    except CheckpointMismatchError:  # fused or foreign keys: not one of Apple's released files
        name = None
    if name is None:
        return (
            "The file is an Apple MobileCLIP V1 checkpoint (converted while loading) "
            "of an unrecognised architecture."
        )
    return (
        f"The file is an Apple MobileCLIP V1 checkpoint of {name} (converted while loading): "
        f"load it as {name!r}."
    )


def _check_fits(model_name: str, conversion: V1Conversion | None, state_dict: dict, source: str) -> None:
    """Raise unless a strict load into ``open_clip.create_model(model_name)`` would succeed (equal
    key/shape manifests, compared on the meta device); the error names keys on both sides."""
    model_state = meta_state_dict(model_name)
    if manifest(model_state) == manifest(state_dict):
        return
    summary = explain_mismatch(model_state, state_dict, source=source, model_name=model_name)
    if conversion is not None:
        leftovers = sorted(conversion.source_of[k] for k in set(state_dict) - set(model_state))
        if leftovers:
            summary += f" Source keys with no place in {model_name}: {', '.join(leftovers[:4])}."
    raise CheckpointMismatchError(summary)


@dataclass
class ConvertedCheckpoint:
    """A checkpoint file read, converted if needed, and verified against an OpenCLIP model."""

    state_dict: dict[str, torch.Tensor]
    model_name: str
    source_format: str
    source_tensors: int


def _resolve_model_name(src: str, conversion: V1Conversion, model_name: str | None) -> str:
    if model_name is not None and conversion.model_name not in (None, model_name):
        raise CheckpointMismatchError(
            f"{src!r} is an Apple V1 checkpoint of {conversion.model_name} (its tensors fit that model), "
            f"not of {model_name}: use the model name {conversion.model_name!r}."
        )
    resolved = model_name or conversion.model_name
    if resolved is None:
        what = f"{src!r} is an Apple V1 checkpoint of an architecture this package does not recognise"
        raise UsageError(
            f"{what}; pass the OpenCLIP model name it belongs to (model_name=NAME).",
            cli_text=f"{what}; pass the OpenCLIP model name it belongs to (--model NAME).",
        )
    return resolved


def read_and_convert(src: str | os.PathLike, model_name: str | None = None) -> ConvertedCheckpoint:
    """Read ``src`` (Apple V1 or OpenCLIP format, detected by its keys), convert V1 names, and check
    the result with a strict load into ``open_clip.create_model(model_name)``.

    ``model_name`` may be omitted for Apple V1 files (the architecture is recognised); when given
    it must agree with the file. Untrusted ``.pt`` files are read with ``weights_only=True``.
    Raises FileNotFoundError, CorruptCheckpointError (truncated or not a checkpoint) or
    CheckpointMismatchError (another model's weights, keys without a mapping).
    """
    src = os.fspath(src)
    state_dict = read_state_dict(src)
    source_format, source_tensors = detect_format(state_dict), len(state_dict)
    conversion = None
    if is_apple_v1(state_dict):
        conversion = convert_state_dict(state_dict)
        model_name = _resolve_model_name(src, conversion, model_name)
        state_dict = conversion.state_dict
    elif not source_format.startswith("OpenCLIP"):
        raise CheckpointMismatchError(
            f"{src!r} is neither an Apple V1 nor an OpenCLIP checkpoint (detected format: {source_format})."
        )
    elif model_name is None:
        what = f"{src!r} is already in OpenCLIP format"
        raise UsageError(
            f"{what}; pass the model name to check it against (model_name=NAME).",
            cli_text=f"{what}; pass the model name to check it against (--model NAME).",
        )
    described = f"{source_format}, converted to OpenCLIP names" if conversion is not None else source_format
    _check_fits(model_name, conversion, state_dict, source=f"{src!r} ({described})")
    return ConvertedCheckpoint(state_dict, model_name, source_format, source_tensors)


def check_output_name(dst: str | os.PathLike) -> str:
    """Converted files are safetensors; open_clip picks its reader by suffix, so the name must say so."""
    dst = os.fspath(dst)
    if not dst.endswith(".safetensors"):
        raise ValueError(f"{dst!r}: the output is a safetensors file, so its name must end in '.safetensors'")
    return dst


def save_safetensors(state_dict: Mapping[str, torch.Tensor], dst: str | os.PathLike) -> None:
    """Write ``state_dict`` for open_clip, which picks its reader by the file suffix.

    Atomic (:func:`mobileclip2.files.atomic_output`): a killed or failed write leaves no file under ``dst``.
    """
    from safetensors.torch import save_file

    from .files import atomic_output

    with atomic_output(check_output_name(dst)) as partial:
        save_file({key: value.contiguous() for key, value in state_dict.items()}, os.fspath(partial))


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    model_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """Convert an Apple V1 (or check an OpenCLIP) checkpoint file; write it to ``dst`` as safetensors.

    See :func:`read_and_convert` for detection, verification and errors. Returns the OpenCLIP
    state_dict, which ``open_clip.create_model(model_name, pretrained=dst)`` then loads.
    """
    if dst is not None:
        check_output_name(dst)  # fail before the (slow) conversion and check
    converted = read_and_convert(src, model_name)
    if dst is not None:
        save_safetensors(converted.state_dict, dst)
    return converted.state_dict
