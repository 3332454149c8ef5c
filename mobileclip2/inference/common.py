"""What the inference steps share: the block classes they recognize, walking and rebuilding layers.

Block classes: upstream's (timm's FastViT blocks, open_clip's layers; :mod:`mobileclip2.compat.block_types`)
together with ours (:mod:`mobileclip2.models`), which share the forward of each structure a step
rewrites. Dispatch is by type, never by class name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ..compat.block_types import BlockTypes, upstream_block_types
from ..models import mci, text_mct

__all__ = ["ImageInput", "block_types", "conv_like", "replaceable_children"]


@functools.lru_cache(maxsize=1)
def block_types() -> BlockTypes:
    """Upstream's block classes with ours added to each kind."""
    ours = {
        "mobileone": (mci.MobileOneBlock,),
        "large_kernel": (mci.ReparamLargeKernelConv,),
        "repmixer_block": (mci.RepMixerBlock, text_mct.RepMixerBlock1d),
        "repmixer_block_2d": (mci.RepMixerBlock,),
        "attention_block": (mci.AttentionBlock,),
        "conv_mlp": (mci.ConvMlp, text_mct.ConvMlp1d),
        "layer_scale": (mci.LayerScale2d,),
    }
    upstream = upstream_block_types()
    return dataclasses.replace(
        upstream, **{kind: getattr(upstream, kind) + classes for kind, classes in ours.items()}
    )


@torch.no_grad()
def conv_like(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, groups: int | None = None
) -> nn.Conv2d:
    """A Conv2d with ``conv``'s geometry (kernel, stride, padding, dilation, padding mode) holding
    ``weight`` and ``bias`` (None: no bias), on their device and dtype; ``groups`` replaces
    ``conv.groups`` (the channel counts follow from ``weight``'s shape)."""
    groups = groups or conv.groups
    rebuilt = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    rebuilt.weight.copy_(weight)
    if bias is not None:
        rebuilt.bias.copy_(bias)
    return rebuilt


def replaceable_children(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every submodule, parents before children."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            yield parent, name, child


class ImageInput(nn.Module):
    """Casts images to the tower's dtype and memory format on the way in (callers pass fp32 NCHW)."""

    def __init__(self, visual: nn.Module, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.visual = visual
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for attr in ("preprocess_cfg", "image_size", "output_dim"):
            if hasattr(visual, attr):
                setattr(self, attr, getattr(visual, attr))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(dtype=self.dtype or image.dtype, memory_format=self.memory_format))
