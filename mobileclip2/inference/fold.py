"""Step 2 of :func:`mobileclip2.optimize`: fold inference-only per-channel affines into the layers
next to them.

BatchNorms after convs and before an attention block's ``qkv``, and layer-scale vectors, go into
the weights of the neighbouring layer. Exact in real arithmetic; in fp32 the outputs move by ~1e-7.
Exports fold too (:func:`mobileclip2.export.towers.prepared`): fewer ops, and no BatchNorm left in
the graph for int8 quantizers to pattern-match.
"""

from __future__ import annotations

import torch
from torch import nn

from ..compat import torch_ops
from ..models.mci import fuse_bn
from .common import block_types, conv_like, replaceable_children

__all__ = ["fold_affines"]


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift``, through the package's one BN-folding helper."""
    unit = torch.ones(bn.num_features, 1, 1, 1, dtype=bn.weight.dtype, device=bn.weight.device)
    scale, shift = fuse_bn(unit, bn)
    return scale.reshape(-1), shift


def _bn_activation(module: nn.Module | None) -> nn.Module | None:
    """For a BatchNorm2d whose forward is the normalization then at most an activation (timm's
    BatchNormAct2d: ``act(drop(bn(x)))`` with no dropout), that activation (``nn.Identity`` when
    none); None for anything else, which is left unfolded."""
    if not isinstance(module, nn.BatchNorm2d) or not module.affine or module.running_var is None:
        return None
    if not isinstance(getattr(module, "drop", None) or nn.Identity(), nn.Identity):
        return None
    return getattr(module, "act", None) or nn.Identity()


def _is_plain_bn(module: nn.Module | None) -> bool:
    """A BatchNorm2d whose forward is only the normalization (timm's BatchNormAct2d with no act/drop)."""
    return isinstance(_bn_activation(module), nn.Identity)


@torch.no_grad()
def _conv_with_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    return conv_like(conv, conv.weight * scale.reshape(-1, 1, 1, 1), bias * scale + shift)


def _conv_bn_act(module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d, nn.Module] | None:
    """(conv, bn, act) when ``module``'s forward is exactly ``act(bn(conv(x)))``, ``act`` being
    ``nn.Identity`` when there is none: timm's ConvNormAct without anti-aliasing (its BatchNormAct2d
    may end in an activation: see :func:`_bn_activation`), or a two-module Sequential (MCt's ConvFFN
    and Apple's conv_bn)."""
    if isinstance(module, nn.Sequential):
        children = list(module.children())
        if len(children) == 2 and isinstance(children[0], nn.Conv2d) and _is_plain_bn(children[1]):
            return children[0], children[1], nn.Identity()
        return None
    if not isinstance(module, block_types().conv_norm_act):
        return None
    if not isinstance(getattr(module, "aa", None) or nn.Identity(), nn.Identity):
        return None
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    act = _bn_activation(bn)
    return (conv, bn, act) if isinstance(conv, nn.Conv2d) and act is not None else None


def _gamma(module: nn.Module | None) -> torch.Tensor | None:
    """The per-channel vector of a layer-scale module (timm LayerScale2d, open_clip/ours LayerScale)."""
    gamma = getattr(module, "gamma", None)
    if isinstance(module, block_types().layer_scale) and isinstance(gamma, torch.Tensor):
        return gamma.reshape(-1)
    return None


@torch.no_grad()
def _scale_outputs(layer: nn.Module | None, gamma: torch.Tensor) -> bool:
    """Multiply a conv/linear's outputs by ``gamma`` through its weights. False if it cannot."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer.weight.shape[0] != gamma.numel():
        return False
    layer.weight.mul_(gamma.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    if layer.bias is not None:
        layer.bias.mul_(gamma)
    return True


@torch.no_grad()
def _linear_after_bn(linear: nn.Linear, bn: nn.BatchNorm2d) -> nn.Linear:
    """``linear(bn(x))`` over channels as one linear (the qkv projection of an MCi attention block)."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True).to(linear.weight)
    fused.weight.copy_(linear.weight * scale[None, :])
    bias = linear.bias if linear.bias is not None else torch.zeros_like(fused.bias)
    fused.bias.copy_(bias + linear.weight @ shift)
    return fused


def _fold_into(block: nn.Module, scale_attr: str, layer: nn.Module | None) -> None:
    """Fold the layer scale ``block.<scale_attr>`` into ``layer``'s outputs and drop it."""
    gamma = _gamma(getattr(block, scale_attr, None))
    if gamma is not None and _scale_outputs(layer, gamma):
        setattr(block, scale_attr, nn.Identity())


@torch.no_grad()
def fold_affines(model: nn.Module) -> nn.Module:
    """Fold inference-time per-channel affines into adjacent layers, in place; returns ``model``.

    Folds: conv -> BatchNorm pairs (timm ConvNormAct, also with an activation after the norm, as in
    MobileCLIP-B's convolutional stem; MCt's conv_bn), an attention block's
    BatchNorm into its ``qkv`` projection, and layer-scale vectors into the layer producing the
    scaled branch (RepMixer / attention blocks of FastViT-MCi, MCt's RepMixer blocks, open_clip
    residual blocks with ``ls_init_value``). Blocks are recognized by type
    (:mod:`mobileclip2.compat.block_types`); everything else is left as it is. Uses BatchNorm
    running statistics: for inference only.
    """
    types = block_types()
    for parent, name, child in list(replaceable_children(model)):
        found = _conv_bn_act(child)
        if found is not None:
            conv, bn, act = found
            fused = _conv_with_bn(conv, bn)
            setattr(parent, name, fused if isinstance(act, nn.Identity) else nn.Sequential(fused, act))
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(module, types.repmixer_block):
            _fold_into(module, "layer_scale", getattr(mlp, "fc2", None))
        elif isinstance(module, types.attention_block):
            mixer = module.token_mixer
            _fold_into(module, "layer_scale_1", getattr(mixer, "proj", None))
            _fold_into(module, "layer_scale_2", getattr(mlp, "fc2", None))
            qkv = getattr(mixer, "qkv", None)
            if _is_plain_bn(module.norm) and isinstance(qkv, nn.Linear):
                mixer.qkv = _linear_after_bn(qkv, module.norm)
                module.norm = nn.Identity()
        elif torch_ops.plain_self_attention(getattr(module, "attn", None)) and hasattr(module, "ls_2"):
            # open_clip ResidualAttentionBlock with layer scale (not used by MobileCLIP, but cheap).
            _fold_into(module, "ls_2", getattr(mlp, "c_proj", None))
            _fold_into(module, "ls_1", module.attn.out_proj)
    return model
