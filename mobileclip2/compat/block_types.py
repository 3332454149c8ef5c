"""The block classes mobileclip2.optimize recognizes, gathered from timm, open_clip and our models.

Versions handled: timm 0.9.16 - 1.0.31 (``timm.models.fastvit`` defines MobileOneBlock,
ReparamLargeKernelConv, RepMixerBlock, AttentionBlock, ConvMlp, LayerScale2d; ``timm.layers``
ConvNormAct) and open_clip_torch 2.24 - 3.3 (``open_clip.transformer.LayerScale``,
``LayerNormFp32``). A class a given release lacks is simply left out of its tuple, so
``isinstance(module, BLOCKS.x)`` stays correct: an absent class cannot be instantiated.

Each tuple pairs upstream's class with ours (mobileclip2.models), which share the forward of
the structure the optimizer rewrites: dispatch is by type, never by class name.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from torch import nn

__all__ = ["BlockTypes", "block_types"]


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
def block_types() -> BlockTypes:
    """The classes, imported once (timm, open_clip and mobileclip2.models are already loaded by then)."""
    fv, ours, mct = "timm.models.fastvit", "mobileclip2.models.mci", "mobileclip2.models.text_mct"
    return BlockTypes(
        conv_norm_act=_classes("timm.layers.ConvNormAct"),
        mobileone=_classes(f"{fv}.MobileOneBlock", f"{ours}.MobileOneBlock"),
        large_kernel=_classes(f"{fv}.ReparamLargeKernelConv", f"{ours}.ReparamLargeKernelConv"),
        repmixer_block=_classes(f"{fv}.RepMixerBlock", f"{ours}.RepMixerBlock", f"{mct}.RepMixerBlock1d"),
        repmixer_block_2d=_classes(f"{fv}.RepMixerBlock", f"{ours}.RepMixerBlock"),
        attention_block=_classes(f"{fv}.AttentionBlock", f"{ours}.AttentionBlock"),
        conv_mlp=_classes(f"{fv}.ConvMlp", f"{ours}.ConvMlp", f"{mct}.ConvMlp1d", "timm.layers.Mlp"),
        layer_scale=_classes(
            f"{fv}.LayerScale2d",
            f"{ours}.LayerScale2d",
            "open_clip.transformer.LayerScale",
            "timm.layers.LayerScale",
        ),
        fp32_norm=_classes("open_clip.transformer.LayerNormFp32"),
    )
