"""The block classes mobileclip2.optimize recognizes, gathered from timm, open_clip and our models.

Versions handled: timm 0.9.16 - 1.0.31 and main (1.0.29.dev0) (``timm.models.fastvit`` defines
MobileOneBlock, ReparamLargeKernelConv, RepMixerBlock, AttentionBlock, ConvMlp, LayerScale2d;
``timm.layers`` ConvNormAct) and open_clip_torch 2.24 - 3.3 and main (``open_clip.transformer.LayerScale``,
``LayerNormFp32``). A class a given release lacks is simply left out of its tuple, so
``isinstance(module, BLOCKS.x)`` stays correct: an absent class cannot be instantiated.

The inference package adds our own classes (mobileclip2.models) to these tuples: they share the
forward of the structure the optimizer rewrites, and dispatch is by type, never by class name.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from torch import nn

from ._common import Internal

_FASTVIT = "timm.models.fastvit"
INTERNALS = (
    *(
        Internal(
            f"{_FASTVIT}.{name}",
            "module class (and its forward's structure)",
            "optimize / reparameterize of FastViT-MCi towers (plain torch otherwise)",
            "timm 0.9.16 - main",
            "the blocks the inference rewrites recognise by type; a missing class is left out of the tuple",
            "inference",
        )
        for name in (
            "MobileOneBlock",
            "ReparamLargeKernelConv",
            "RepMixerBlock",
            "AttentionBlock",
            "ConvMlp",
            "LayerScale2d",
        )
    ),
    Internal(
        "open_clip.transformer.LayerScale",
        "module class",
        "optimize (layer scales folded)",
        "2.24.0 - main",
        "folded into the projection before it",
        "inference.fold",
    ),
)

__all__ = ["BlockTypes", "upstream_block_types"]


@dataclass(frozen=True)
class BlockTypes:
    conv_norm_act: tuple[type[nn.Module], ...]  # conv -> BN (-> act) (timm ConvNormAct)
    mobileone: tuple[type[nn.Module], ...]  # act(se(reparam_conv(x))) once fused
    large_kernel: tuple[type[nn.Module], ...]  # act(se(reparam_conv(x))) once fused
    repmixer_block: tuple[type[nn.Module], ...]  # x = mixer(x); x + layer_scale(mlp(x))
    repmixer_block_2d: tuple[type[nn.Module], ...]  # the same on NCHW images (not MCt's [B, L, C])
    attention_block: tuple[type[nn.Module], ...]  # x + ls1(attn(norm(x))); x + ls2(mlp(x))
    conv_mlp: tuple[type[nn.Module], ...]  # fc2(act(fc1(conv(x))))
    layer_scale: tuple[type[nn.Module], ...]  # x * gamma
    fp32_norm: tuple[type[nn.Module], ...]  # computes in fp32 whatever the input: weights stay fp32


def _classes(*paths: str) -> tuple[type[nn.Module], ...]:
    found = []
    for path in paths:
        module_name, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


@functools.lru_cache(maxsize=1)
def upstream_block_types() -> BlockTypes:
    """timm's and open_clip's classes, imported once."""
    fv = "timm.models.fastvit"
    return BlockTypes(
        conv_norm_act=_classes("timm.layers.ConvNormAct"),
        mobileone=_classes(f"{fv}.MobileOneBlock"),
        large_kernel=_classes(f"{fv}.ReparamLargeKernelConv"),
        repmixer_block=_classes(f"{fv}.RepMixerBlock"),
        repmixer_block_2d=_classes(f"{fv}.RepMixerBlock"),
        attention_block=_classes(f"{fv}.AttentionBlock"),
        conv_mlp=_classes(f"{fv}.ConvMlp", "timm.layers.Mlp"),
        layer_scale=_classes(
            f"{fv}.LayerScale2d", "open_clip.transformer.LayerScale", "timm.layers.LayerScale"
        ),
        fp32_norm=_classes("open_clip.transformer.LayerNormFp32"),
    )
