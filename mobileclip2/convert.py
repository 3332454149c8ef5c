"""Apple MobileCLIP V1 checkpoints -> OpenCLIP state_dicts.

Apple's V1 package (apple/ml-mobileclip, ``mobileclip/``) saves the un-fused model as a plain
state_dict: ``image_encoder.model.*`` (MCi / FastViT, or the ViT-B/16 of MobileCLIP-B),
``text_encoder.*`` (a pre-norm transformer, or MCt for S0) and ``logit_scale``. OpenCLIP names
the same tensors ``visual.trunk.*`` (timm's fastvit / vit_base_mci_224 layout), ``text.*`` and
``logit_scale``. The mapping is a handful of ordered rename tables plus three tensor reshapes
(positional embeddings, the image projection); nothing here builds or mutates a model.

The image mapping reproduces timm 1.0.31's ``fastvit.checkpoint_filter_fn`` and
``vision_transformer_hybrid._convert_mobileclip`` for these checkpoints (tested), and the text
mapping open_clip 3.3.0's ``convert_mobile_clip_state_dict``, which does not handle S0's MCt;
neither is imported, because the oldest supported timm/open_clip lack them.

Entry points: :func:`convert_state_dict` (pure), :func:`convert_if_apple_v1` (the hook every
open_clip load passes through, see plugin.register) and :func:`convert_checkpoint` (files; also
``mobileclip2 convert``).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .checkpoints import detect_format, read_state_dict, summarize_mismatch
from .errors import CheckpointMismatchError
from .reparam import FUSED_ATTRS

__all__ = [
    "ConvertedCheckpoint",
    "V1Conversion",
    "check_output_name",
    "convert_checkpoint",
    "convert_if_apple_v1",
    "convert_state_dict",
    "describe_apple_v1",
    "identify_v1_model",
    "image_trunk_state_dict",
    "is_apple_v1",
    "read_and_convert",
    "save_safetensors",
]

IMAGE_PREFIX = "image_encoder.model."
TEXT_PREFIX = "text_encoder."
TOP_LEVEL_KEYS = ("logit_scale",)

# Sentinels: the first tensor of each V1 image trunk (MCi's stem, the ViT's conv stem).
_FASTVIT_SENTINEL = IMAGE_PREFIX + "patch_embed.0.rbr_conv.0.conv.weight"
_VIT_SENTINEL = IMAGE_PREFIX + "patch_emb.0.block.conv.weight"

# -- image trunk: MCi (FastViT) -> timm fastvit_mci*, applied in order to the key without prefix ---
_FASTVIT_RENAMES = (
    ("patch_embed.", "stem."),
    ("rbr_conv.", "conv_kxk."),
    ("rbr_scale.", "conv_scale."),
    ("rbr_skip.", "identity."),
    ("conv_exp.", "final_conv."),
    ("lkb_origin.", "large_conv."),
    ("convffn.", "mlp."),
    ("se.reduce.", "se.fc1."),
    ("se.expand.", "se.fc2."),
)

# -- image trunk: Apple's ViT-B/16 -> timm vit_base_mci_224 ---------------------------------------
_VIT_RENAMES = (
    ("patch_emb.", "patch_embed.backbone."),
    ("block.conv", "conv"),
    ("block.norm", "bn"),
    ("post_transformer_norm.", "norm."),
    ("pre_norm_mha.0", "norm1"),
    ("pre_norm_mha.1", "attn"),
    ("pre_norm_ffn.0", "norm2"),
    ("pre_norm_ffn.1", "mlp.fc1"),
    ("pre_norm_ffn.4", "mlp.fc2"),
    ("qkv_proj.", "qkv."),
    ("out_proj.", "proj."),
    ("transformer.", "blocks."),
)

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
_TEXT_POSITIONS_V1 = "positional_embedding.pos_embed.pos_embed"
_VIT_POSITIONS_V1 = "pos_embed.pos_embed.pos_embed"
_GENERATED = "(generated)"  # provenance of tensors the V1 format lacks (zero biases of the projections)

# Architecture fingerprints: (image trunk, stem width, image blocks, text kind, text blocks).
_V1_FINGERPRINTS = {
    ("fastvit", 64, 20, "mct", 6): "MobileCLIP-S0",
    ("fastvit", 64, 40, "base", 12): "MobileCLIP-S1",
    ("fastvit", 80, 44, "base", 12): "MobileCLIP-S2",
    ("vit", 768, 12, "base", 12): "MobileCLIP-B",  # MobileCLIP-B (LT) has the same architecture
}


@dataclass
class V1Conversion:
    """An Apple V1 state_dict converted to OpenCLIP names, with the provenance of every key."""

    state_dict: dict[str, torch.Tensor]
    source_of: dict[str, str] = field(default_factory=dict)  # OpenCLIP key -> V1 key (or _GENERATED)
    model_name: str | None = None  # from the architecture fingerprint, None if unknown


def is_apple_v1(keys: Iterable[str]) -> bool:
    """True for Apple's V1 layout (sentinel prefixes of its two towers)."""
    return any(key.startswith((IMAGE_PREFIX, TEXT_PREFIX)) for key in keys)


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        key = key.replace(old, new)
    return key


def _layer_scale_to_gamma(key: str) -> str:
    """timm keeps layer scales in LayerScale2d modules: ``layer_scale`` -> ``layer_scale.gamma``."""
    key = re.sub(r"layer_scale_([0-9])$", r"layer_scale_\1.gamma", key)
    return key + ".gamma" if key.endswith("layer_scale") else key


def _stage_ends(image_keys: Iterable[str]) -> list[int]:
    """Indices of the downsampling PatchEmbeds in MCi's flat ``network`` list: the stage boundaries."""
    ends = {int(match.group(1)) for key in image_keys if (match := re.match(r"network\.(\d+)\.proj\.", key))}
    return sorted(ends)


def _fastvit_stage_key(key: str, stage_ends: list[int]) -> str:
    """``network.N.*`` (one flat list) -> ``stages.S.{downsample,pos_emb,blocks}.*`` (timm)."""
    match = re.match(r"network\.(\d+)\.(.*)$", key)
    if match is None:
        return key
    index, rest = int(match.group(1)), match.group(2)
    stage = f"stages.{bisect.bisect_right(stage_ends, index)}"
    if rest.startswith("proj."):
        return f"{stage}.downsample.{rest}"
    if rest.startswith("pe."):
        return f"{stage}.pos_emb.pos_enc.{rest[len('pe.') :]}"
    return f"{stage}.blocks.{rest}"


def _positions(value: torch.Tensor, keep_batch: bool) -> torch.Tensor:
    """Apple stores learned positions as [1, 1, L, C]; timm's ViT wants [1, L, C], open_clip text [L, C]."""
    table = value.reshape(value.shape[-2], value.shape[-1])
    return table.unsqueeze(0) if keep_batch else table


def _convert_fastvit(image: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    stage_ends = _stage_ends(image)
    out = {}
    for key, value in image.items():
        if key == "head.proj":  # GlobalPool2D projection [C, D] -> the timm head's Linear, zero bias
            out["head.fc.weight"] = (key, value.T)
            out["head.fc.bias"] = (_GENERATED, torch.zeros(value.shape[1], dtype=value.dtype))
            continue
        new_key = _fastvit_stage_key(_layer_scale_to_gamma(_rename(key, _FASTVIT_RENAMES)), stage_ends)
        out[new_key] = (key, value)
    return out


def _convert_vit(image: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for key, value in image.items():
        if key == _VIT_POSITIONS_V1:
            out["pos_embed"] = (key, _positions(value, keep_batch=True))
        elif key == "classifier.proj":  # SimpleImageProjectionHead [C, D] -> Linear, zero bias
            out["head.weight"] = (key, value.T)
            out["head.bias"] = (_GENERATED, torch.zeros(value.shape[1], dtype=value.dtype))
        else:
            out[_rename(key, _VIT_RENAMES)] = (key, value)
    return out


def _convert_text(text: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for key, value in text.items():
        if key == _TEXT_POSITIONS_V1:
            out["positional_embedding"] = (key, _positions(value, keep_batch=False))
            continue
        new_key = _layer_scale_to_gamma(_rename(key, _TEXT_RENAMES))
        if new_key.startswith("transformer."):
            new_key = "transformer.resblocks." + new_key[len("transformer.") :]
        out[new_key] = (key, value)
    return out


def _split(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _count_blocks(keys: Iterable[str], pattern: str) -> int:
    return len({match.groups() for key in keys if (match := re.match(pattern, key))})


def identify_v1_model(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The OpenCLIP name whose architecture this V1 state_dict has (by block counts and widths)."""
    image = _split(state_dict, IMAGE_PREFIX)
    text = _split(state_dict, TEXT_PREFIX)
    if _FASTVIT_SENTINEL in state_dict:
        trunk = (
            "fastvit",
            state_dict[_FASTVIT_SENTINEL].shape[0],
            _count_blocks(image, r"network\.(\d+)\.(\d+)\."),
        )
    elif _VIT_SENTINEL in state_dict and _VIT_POSITIONS_V1 in image:
        trunk = (
            "vit",
            image[_VIT_POSITIONS_V1].shape[-1],
            _count_blocks(image, r"transformer\.(\d+)\."),
        )
    else:
        return None
    text_kind = "mct" if any(".token_mixer." in key for key in text) else "base"
    return _V1_FINGERPRINTS.get((*trunk, text_kind, _count_blocks(text, r"transformer\.(\d+)\.")))


def _unmapped_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted(
        k for k in state_dict if not k.startswith((IMAGE_PREFIX, TEXT_PREFIX)) and k not in TOP_LEVEL_KEYS
    )


def _fused_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of modules that exist only in a model reparameterized before saving."""
    return sorted(k for k in state_dict if any(marker in k.split(".") for marker in FUSED_ATTRS))


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> V1Conversion:
    """Map every tensor of an Apple V1 state_dict to its OpenCLIP name; raise on keys with no mapping.

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
    image_out = _convert_vit(image) if _VIT_SENTINEL in state_dict else _convert_fastvit(image)
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    for key, (source, value) in image_out.items():
        mapped["visual.trunk." + key] = (source if source == _GENERATED else IMAGE_PREFIX + source, value)
    for key, (source, value) in _convert_text(_split(state_dict, TEXT_PREFIX)).items():
        mapped["text." + key] = (TEXT_PREFIX + source, value)
    for key in TOP_LEVEL_KEYS:
        if key in state_dict:
            mapped[key] = (key, state_dict[key])
    return V1Conversion(
        state_dict={key: value for key, (_, value) in mapped.items()},
        source_of={key: source for key, (source, _) in mapped.items()},
        model_name=identify_v1_model(state_dict),
    )


def image_trunk_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image trunk of an Apple V1 checkpoint, in timm's layout (no ``visual.trunk.`` prefix).

    The backfilled timm models' ``checkpoint_filter_fn`` use it so ``timm.create_model(
    'fastvit_mci0.apple_mclip', pretrained=True)`` loads Apple's file as timm >= 1.0.7 does.
    """
    image_only = {key: value for key, value in state_dict.items() if key.startswith(IMAGE_PREFIX)}
    trunk = "visual.trunk."
    converted = convert_state_dict(image_only).state_dict
    return {key[len(trunk) :]: value for key, value in converted.items() if key.startswith(trunk)}


def convert_if_apple_v1(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The load hook (compat.add_state_dict_converter): V1 state_dicts are converted, others pass unchanged."""
    if not is_apple_v1(state_dict):
        return state_dict
    return convert_state_dict(state_dict).state_dict


def describe_apple_v1(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A sentence for load errors: which model an Apple V1 file (converted while loading) belongs to."""
    if not is_apple_v1(state_dict):
        return None
    name = identify_v1_model(state_dict)
    if name is None:
        return "The file is an Apple MobileCLIP V1 checkpoint (converted while loading) of an unrecognised architecture."
    return (
        f"The file is an Apple MobileCLIP V1 checkpoint of {name} (converted while loading): "
        f"load it with open_clip.create_model({name!r}, pretrained=...)."
    )


def _check_fits(model_name: str, conversion: V1Conversion | None, state_dict: dict, source: str) -> None:
    """Strict load into ``open_clip.create_model(model_name)``; a mismatch names keys on both sides."""
    import open_clip

    model = open_clip.create_model(model_name)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        summary = summarize_mismatch(model.state_dict(), state_dict, source=source, model_name=model_name)
        if conversion is not None:
            leftovers = sorted(conversion.source_of[k] for k in set(state_dict) - set(model.state_dict()))
            if leftovers:
                summary += f" Source keys with no place in {model_name}: {', '.join(leftovers[:4])}."
        raise CheckpointMismatchError(summary) from error


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
            f"{src!r} is an Apple V1 checkpoint of {conversion.model_name} (recognised by its block counts and "
            f"widths), not of {model_name}: use the model name {conversion.model_name!r}."
        )
    resolved = model_name or conversion.model_name
    if resolved is None:
        raise CheckpointMismatchError(
            f"{src!r} is an Apple V1 checkpoint of an architecture this package does not recognise; "
            "pass the OpenCLIP model name it belongs to (--model NAME)."
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
        raise ValueError(f"{src!r} is already in OpenCLIP format; pass a model name to check it against")
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

    Atomic (checkpoints.atomic_output): a killed or failed write leaves no file under ``dst``.
    """
    from safetensors.torch import save_file

    from .checkpoints import atomic_output

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
