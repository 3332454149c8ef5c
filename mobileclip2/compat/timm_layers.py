"""timm's model-building conventions our backbones and the reparameterize walk rely on.

Versions handled: timm 0.9.16 - 1.0.31 and main (1.0.29.dev0, aa4b5850: nothing new needed).

* ``ClassifierHead.reset(num_classes, pool_type)``: the keyword of the second argument differs across
  versions (``global_pool`` / ``pool_type``), so it is passed positionally.
* Feature indices (``forward_intermediates(indices=...)``): timm 1.0 has ``feature_take_indices`` in a
  private module; 0.9 has none. ``take_indices`` implements the same convention (None: all, n: last n,
  list: those, negatives from the end) for every version.
* ``VisionTransformer(embed_layer=...)``: 0.9.16 and 1.0.x call the embed layer with different keyword
  sets and read different attributes; ``mobileclip2.models.vit_mci.ConvStemEmbed`` accepts the union
  (``VIT_EMBED_LAYER_KWARGS``) and provides ``num_patches``, ``grid_size``, ``feat_ratio()``,
  ``dynamic_feat_size()`` and ``set_input_size()``. ``features_only`` needs
  ``VisionTransformer.forward_intermediates`` (timm >= 1.0), see ``vit_has_forward_intermediates``.
* Reparameterization: timm's FastViT / MobileOne blocks (and ours) keep their fused conv in
  ``reparam_conv`` (None until fused), Apple's V1 ReparamLargeKernelConv in ``lkb_reparam``; blocks fuse
  through ``fuse()`` (returns a replacement), ``reparameterize()`` or ``switch_to_deploy()`` (in place).
  Several of timm 1.0.31's ``reparameterize()`` methods are not idempotent (ReparamLargeKernelConv,
  RepConditionalPosEnc and RepMixer delete their branches and fail, or silently re-fuse, when called
  twice), so ``is_fused`` must be checked first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._common import Internal

_BACKBONES = "our MCi / ViT-MCi backbones (timm < 1.0.20, or force_backfill)"
INTERNALS = (
    Internal(
        "timm.layers.ClassifierHead.reset",
        "signature",
        _BACKBONES,
        "timm 0.9.16 - main (second argument global_pool / pool_type)",
        "reset_classifier on our MCi backbones: called positionally",
        "models.mci",
    ),
    Internal(
        "timm.models.vision_transformer.VisionTransformer",
        "embed_layer calling convention",
        _BACKBONES,
        "timm 0.9.16 - main",
        "ConvStemEmbed accepts the union of the keyword sets and provides the attributes both read",
        "models.vit_mci",
    ),
    Internal(
        "timm.models.vision_transformer.checkpoint_filter_fn",
        "module function",
        _BACKBONES,
        "timm 0.9.16 - main",
        "vit_base_mci_224's checkpoint filter delegates to timm's ViT one",
        "models.vit_mci",
    ),
    Internal(
        "timm.models.fastvit.ReparamLargeKernelConv.reparameterize",
        "fusing convention",
        "reparameterize",
        "timm 0.9.16 - main",
        "blocks fuse through fuse() / reparameterize() / switch_to_deploy() into reparam_conv / "
        "lkb_reparam; several are not idempotent, so is_fused is checked first",
        "reparam, convert",
    ),
)

# Keyword arguments timm's VisionTransformer passes to its embed_layer (union of 0.9.16 and 1.0.31).
VIT_EMBED_LAYER_KWARGS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "bias",
    "flatten",
    "output_fmt",
    "strict_img_size",
    "dynamic_img_pad",
    "device",
    "dtype",
)

# Attributes that hold a block's fused conv once it has been reparameterized.
FUSED_ATTRS = ("reparam_conv", "lkb_reparam")
# Fusing methods, in the order they are tried: fuse() returns a replacement, the others fuse in place.
FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


def reset_classifier_head(head: Any, num_classes: int, global_pool: str | None) -> None:
    """``ClassifierHead.reset`` with positional arguments (their keyword names differ across timm)."""
    head.reset(num_classes, global_pool)


def take_indices(num_features: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """timm's feature-index convention: None -> all, n -> last n, list -> those; (indices, max index)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = [num_features + i if i < 0 else i for i in indices]
        if not all(0 <= i < num_features for i in take):
            raise ValueError(f"feature indices {indices} are out of range for {num_features} stages")
    return take, max(take)


def vit_has_forward_intermediates() -> bool:
    """Whether timm's VisionTransformer supports ``features_only`` (``forward_intermediates``,
    timm >= 1.0)."""
    from timm.models.vision_transformer import VisionTransformer

    return hasattr(VisionTransformer, "forward_intermediates")


def is_fused(module: Any) -> bool:
    """True once a reparameterizable block holds its fused conv."""
    return any(getattr(module, attr, None) is not None for attr in FUSED_ATTRS)


def fuse_method(module: Any) -> tuple[str, Callable] | None:
    """(name, bound method) of the first fusing method ``module`` offers, or None."""
    for name in FUSE_METHODS:
        method = getattr(module, name, None)
        if callable(method):
            return name, method
    return None
