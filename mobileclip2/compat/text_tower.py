"""open_clip's text-tower construction, and the layers our text towers borrow from it.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 and main (4.2.0.dev0) build the text tower of CLIP /
CustomTextCLIP through the module-level function model._build_text_tower(embed_dim, text_cfg,
quick_gelu, cast_dtype), which only knows its own TextTransformer and HF models, and passes text_cfg
through CLIPTextCfg(**text_cfg) (unknown keys are a TypeError). A config selects one of our towers with the
key TEXT_TOWER_KEY; the wrapper routes such configs to the registered builder. An open_clip with
patches/0002 has a public model.register_text_tower; it is used when present.

Norm layers: open_clip's own text tower uses transformer.LayerNormFp32 when a cast dtype (fp16 /
bf16) is asked for and transformer.LayerNorm otherwise (model._build_text_tower, 2.24.0 - 3.3.0).
factory._set_model_device_and_precision then casts a timm-based model to the low dtype and puts
exactly the LayerNormFp32 weights back to fp32. text_norm_layer makes the same choice, so a
model built in fp32 can be cast with model.to(torch.bfloat16) / .half() like upstream's.

What CustomTextCLIP asks of a text tower: ``lock(unlocked_layers, freeze_layer_norm)`` (main adds a third
positional ``pooler_in_head``), ``set_grad_checkpointing(enable)`` (main passes ``impl=``), and on main
``layer_groups(pooler_in_head)`` for layer-wise LR decay; mobileclip2.models.text_mct implements them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._common import Internal, already_wrapped, mark_wrapper

FEATURE = "MCt text tower"
INTERNALS = (
    Internal(
        "open_clip.model._build_text_tower",
        "replaced private function",
        FEATURE,
        "2.24.0 - main",
        "wrapped: routes text_cfg['text_tower'] to our builder (patches/0002 makes it public)",
        hook=True,
    ),
    Internal(
        "open_clip.model.CustomTextCLIP.lock_text_tower",
        "calling convention",
        FEATURE,
        "2.24.0 - 3.3.0: text.lock(n, freeze_ln); main: text.lock(n, freeze_ln, pooler_in_head)",
        "what MCt's lock accepts; main's layer-wise LR decay also asks text.layer_groups(pooler_in_head)",
        "models.text_mct",
    ),
    Internal(
        "open_clip.model.CustomTextCLIP.set_grad_checkpointing",
        "calling convention",
        FEATURE,
        "2.24.0 - 3.3.0: text.set_grad_checkpointing(enable); main: (enable, impl=)",
        "what MCt's set_grad_checkpointing accepts",
        "models.text_mct",
    ),
    *(
        Internal(
            f"open_clip.transformer.{name}",
            "module class",
            FEATURE,
            "2.24.0 - main",
            "MCt's norm / activation layers, as open_clip's own text tower picks them",
            "models.text_mct",
        )
        for name in ("LayerNorm", "LayerNormFp32", "QuickGELU")
    ),
    Internal(
        "open_clip.transformer.TextTransformer",
        "forward internals",
        "optimize (causal text prefix)",
        "2.24.0 - main",
        "re-run on a token prefix: token_embedding, positional_embedding, attn_mask, transformer.resblocks, "
        "ln_final, text_projection, pool_type, eos_id",
        "inference.causal_text",
    ),
)


def text_norm_layer(cast_dtype: Any = None) -> type:
    """open_clip's norm class for a text tower built with cast_dtype (as its own towers choose)."""
    import torch
    from open_clip.transformer import LayerNorm, LayerNormFp32

    return LayerNormFp32 if cast_dtype in (torch.float16, torch.bfloat16) else LayerNorm


def quick_gelu_layer() -> type:
    """open_clip's QuickGELU (public in open_clip.transformer since 2.0, checked 2.24 - 3.3)."""
    from open_clip.transformer import QuickGELU

    return QuickGELU


TEXT_TOWER_KEY = "text_tower"
_TEXT_TOWER_BUILDERS: dict[str, Callable[..., Any]] = {}


_BUILDER_PARAMETERS = ("embed_dim", "text_cfg", "quick_gelu", "cast_dtype")


def _check_builder_parameters(build: Callable[..., Any]) -> None:
    """Refuse (before wrapping) a ``_build_text_tower`` whose parameters are no longer the four we route."""
    import inspect

    names = tuple(inspect.signature(build).parameters)[: len(_BUILDER_PARAMETERS)]
    if names != _BUILDER_PARAMETERS:
        raise TypeError(
            f"open_clip.model._build_text_tower{inspect.signature(build)} no longer starts with "
            f"{_BUILDER_PARAMETERS}"
        )


def register_text_tower(kind: str, builder: Callable[..., Any]) -> None:
    """Make ``text_cfg = {"text_tower": kind, ...}`` build with
    ``builder(embed_dim, text_cfg, quick_gelu, cast_dtype)``."""
    from open_clip import model as open_clip_model

    upstream_registry = getattr(open_clip_model, "register_text_tower", None)
    if upstream_registry is not None:  # open_clip with patches/0002: no wrapping needed
        upstream_registry(kind, builder)
        return
    original = open_clip_model._build_text_tower
    if not already_wrapped(original):
        _check_builder_parameters(original)
    _TEXT_TOWER_BUILDERS[kind] = builder
    if already_wrapped(original):
        return

    def _build_text_tower(embed_dim, text_cfg, quick_gelu=False, cast_dtype=None):
        kind = text_cfg.get(TEXT_TOWER_KEY) if isinstance(text_cfg, Mapping) else None
        if kind is None:
            return original(embed_dim, text_cfg, quick_gelu, cast_dtype)
        if kind not in _TEXT_TOWER_BUILDERS:
            raise ValueError(
                f"text_cfg asks for text tower {kind!r}, "
                f"but only {sorted(_TEXT_TOWER_BUILDERS)} are registered"
            )
        return _TEXT_TOWER_BUILDERS[kind](embed_dim, dict(text_cfg), quick_gelu, cast_dtype)

    open_clip_model._build_text_tower = mark_wrapper(_build_text_tower, original)


# ---------------------------------------------------------------------------------------------
