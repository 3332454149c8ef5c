"""ViT-B with a convolutional stem: the MobileCLIP-B and MobileCLIP2-B image encoder ``vit_base_mci_224``.

Papers:
    * `An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale`
      - https://arxiv.org/abs/2010.11929
    * `MobileCLIP: Fast Image-Text Models through Multi-Modal Reinforced Training`
      - https://arxiv.org/abs/2311.17049
    * `MobileCLIP2: Improving Multi-Modal Reinforced Training` - https://arxiv.org/abs/2508.20691

Source: written to be interchangeable with ``vit_base_mci_224`` of timm 1.0.31
(``timm/models/vision_transformer_hybrid.py``, Apache-2.0, Ross Wightman). The pretrained weights are
under Apple's ``apple-amlr`` licence, as each pretrained cfg's ``license`` says.

Why this file exists: timm 0.9 has no ``vit_base_mci_224``, and its ``HybridEmbed`` cannot skip the
projection conv that this model does without. The transformer is the installed timm's own
``VisionTransformer``; only the patch embedding is ours, with timm 1.0.31's module names and state_dict
keys (``patch_embed.backbone.{0,1,2}...``, no projection), so one checkpoint loads into either. Nothing is
registered on import: ``mobileclip2.plugin`` registers ``BACKBONES`` for names the installed timm lacks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, Format, nchw_to, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_checkpoint_filter_fn

from ..compat.timm_layers import vit_has_forward_intermediates
from . import APPLE_IMAGE_PREFIX, apple_release_source, rename

# A list, not a tuple: timm's ``register_model`` appends each registered name to it.
__all__ = ["ConvStemEmbed", "BACKBONES"]


class _StemOutConv(nn.Module):
    """Last stem conv, with bias and no norm/act; the empty ``bn`` keeps timm's ``ConvNormAct`` paths."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=0, bias=True)
        self.bn = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvStemEmbed(nn.Module):
    """Patch embedding by a conv stem (4x4/4, 2x2/2, 2x2/2; BN+GELU between) whose output are the tokens.

    A drop-in ``embed_layer`` for timm's ``VisionTransformer`` on timm 0.9.16 and 1.0.x alike, with the
    attributes and methods the transformer asks of its patch embedding (``num_patches``, ``grid_size``,
    ``feat_ratio()``, ``dynamic_feat_size()``, ``set_input_size()``). The stem replaces the projection,
    so ``patch_size`` must be 1 and ``proj`` is an identity (kept only so module paths match timm's).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 1,
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
        flatten: bool = True,
        output_fmt: str | None = None,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if to_2tuple(patch_size) != (1, 1):
            raise ValueError(
                "the conv stem emits the tokens itself (no projection): "
                f"patch_size must be 1, got {patch_size}"
            )
        self.in_chans = in_chans
        # "gelu" by name: timm 0.9's BatchNormAct2d passes inplace= to its act, which nn.GELU rejects.
        self.backbone = nn.Sequential(
            ConvNormAct(in_chans, embed_dim // 4, kernel_size=4, stride=4, padding=0, act_layer="gelu"),
            ConvNormAct(embed_dim // 4, embed_dim // 4, kernel_size=2, stride=2, padding=0, act_layer="gelu"),
            _StemOutConv(embed_dim // 4, embed_dim, kernel_size=2, stride=2),
        )
        self.proj = nn.Identity()
        self.patch_size = (1, 1)
        self.feature_dim = embed_dim
        self.set_input_size(img_size)
        if output_fmt is not None:
            self.flatten = False
            self.output_fmt = Format(output_fmt)
        else:
            self.flatten = flatten
            self.output_fmt = Format.NCHW
        # Stored for API parity; with one token per stem output pixel there is nothing to check or pad.
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _stem_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Output size of the stem, from its convs' geometry (no forward pass, so meta init works)."""
        h, w = img_size
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                h, w = (
                    (size + 2 * p - d * (k - 1) - 1) // s + 1
                    for size, p, d, k, s in zip((h, w), m.padding, m.dilation, m.kernel_size, m.stride)
                )
        return h, w

    def set_input_size(
        self,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | tuple[int, int] | None = None,
    ) -> None:
        """Recompute the token grid for a new image size (called by ``VisionTransformer.set_input_size``)."""
        if patch_size is not None and to_2tuple(patch_size) != (1, 1):
            raise ValueError("ConvStemEmbed has no projection to resample: patch_size must stay 1")
        if img_size is not None:
            self.img_size = to_2tuple(img_size)
        self.feature_size = self._stem_size(self.img_size)
        self.feature_ratio = tuple(s // f for s, f in zip(self.img_size, self.feature_size))
        self.grid_size = self.feature_size
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        return max(self.feature_ratio) if as_scalar else self.feature_ratio

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.feature_ratio[0], img_size[1] // self.feature_ratio[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.backbone(x))
        if self.flatten:
            return x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        if self.output_fmt != Format.NCHW:
            return nchw_to(x, self.output_fmt)
        return x


# Pretrained cfgs as data: every tag is a CLIP image tower (512-wide "classes", unnormalised input
# statistics); tags in timm 1.0.31's order, the first with weights being the default.
_TAG_BASE = dict(
    num_classes=512,
    input_size=(3, 224, 224),
    pool_size=None,
    crop_pct=0.9,
    interpolation="bicubic",
    fixed_input_size=True,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    first_conv="patch_embed.backbone.0.conv",
    classifier="head",
    license="apple-amlr",
)
default_cfgs = generate_default_cfgs(
    {
        f"vit_base_mci_224.{tag}": {**_TAG_BASE, **apple_release_source(release, hub_id)}
        for tag, release, hub_id in (
            ("apple_mclip_lt", "mobileclip_blt", "apple/mobileclip_b_lt_timm"),
            ("apple_mclip", "mobileclip_b", "apple/mobileclip_b_timm"),
            ("apple_mclip2_dfndr2b", None, "timm/"),
        )
    }
)

# Apple's original layout of the ViT-B/16 trunk (apple/ml-mobileclip, mobileclip/models/vit.py),
# applied in order to a key without APPLE_IMAGE_PREFIX.
_APPLE_RENAMES = (
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
_APPLE_POSITIONS = "pos_embed.pos_embed.pos_embed"  # stored as [1, 1, L, C]
APPLE_SENTINEL = "patch_emb.0.block.conv.weight"


def from_apple_layout(trunk: Mapping[str, torch.Tensor]) -> dict[str, tuple[str | None, torch.Tensor]]:
    """Apple's ViT-B/16 trunk (keys without APPLE_IMAGE_PREFIX) under timm's names: new key ->
    (Apple's key, or None for a tensor Apple's layout lacks, tensor). Reproduces timm 1.0.31's
    ``vision_transformer_hybrid._convert_mobileclip`` (tests/test_convert.py)."""
    out: dict[str, tuple[str | None, torch.Tensor]] = {}
    for key, value in trunk.items():
        if key == _APPLE_POSITIONS:
            out["pos_embed"] = (key, value.reshape(1, value.shape[-2], value.shape[-1]))
        elif key == "classifier.proj":  # SimpleImageProjectionHead [C, D] -> Linear, zero bias
            out["head.weight"] = (key, value.T)
            out["head.bias"] = (None, torch.zeros(value.shape[1], dtype=value.dtype))
        else:
            out[rename(key, _APPLE_RENAMES)] = (key, value)
    return out


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor],
    model: VisionTransformer,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> dict[str, torch.Tensor]:
    """timm's ViT filter (OpenCLIP trunk prefixes, position-embedding resize), after converting
    Apple's original MobileCLIP layout as timm's own filter does."""
    if APPLE_IMAGE_PREFIX + APPLE_SENTINEL in state_dict:
        trunk = {
            k[len(APPLE_IMAGE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(APPLE_IMAGE_PREFIX)
        }
        state_dict = {key: value for key, (_, value) in from_apple_layout(trunk).items()}
    return _vit_checkpoint_filter_fn(state_dict, model, interpolation=interpolation, antialias=antialias)


def _create_vit_mci(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)
    if kwargs.get("features_only") and not vit_has_forward_intermediates():
        raise RuntimeError("features_only needs a timm whose VisionTransformer has forward_intermediates")
    kwargs.setdefault("embed_layer", ConvStemEmbed)
    kwargs.setdefault("patch_size", 1)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def vit_base_mci_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """MobileCLIP-B / MobileCLIP2-B image encoder: ViT-B/16 whose patchify is a conv stem."""
    model_args = dict(embed_dim=768, depth=12, num_heads=12, no_embed_class=True)
    return _create_vit_mci("vit_base_mci_224", pretrained=pretrained, **dict(model_args, **kwargs))


# Undecorated on purpose: registering at import would shadow timm's own definition.
BACKBONES = (vit_base_mci_224,)
