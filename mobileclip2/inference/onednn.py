"""Step 4 of :func:`mobileclip2.optimize` (CPU, fp32): oneDNN layers with prepacked weights.

Convs and linears call the oneDNN ops inductor emits for CPU (:mod:`mobileclip2.compat.torch_ops`),
with weights reordered once into oneDNN's blocked layout for the shapes a batch-1 probe sees; GELU is
fused into the layer before it, residual adds into the output projections of the text transformer
and into the last 1x1 conv of each FastViT-MCi block's MLP; grouped convs with a channel multiplier
run as depthwise convs; images are taken channels-last; attention runs in SDPA.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..compat import torch_ops
from ..shapes import image_height_width, token_geometry
from .causal_text import is_causal_mask
from .common import ImageInput, block_types, conv_like, replaceable_children

__all__ = [
    "ExpandedDepthwise",
    "OneDNNConv2d",
    "OneDNNLinear",
    "OneDNNSelfAttentionBlock",
    "ResidualConvMlpBlock",
    "example_inputs",
    "expand_depthwise_multipliers",
    "onednn_available",
    "use_onednn",
]


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build has working oneDNN ops (see :mod:`mobileclip2.compat.torch_ops`)."""
    if not torch_ops.onednn_ops_present():
        return False
    try:  # some builds register the schema but not a CPU kernel
        OneDNNConv2d(nn.Conv2d(2, 2, 1))(torch.zeros(1, 2, 1, 1))
        OneDNNConv2d(nn.Conv2d(2, 2, 1)).add_to(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
        OneDNNLinear(nn.Linear(2, 2))(torch.zeros(1, 2))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return True


def _unary_attr(act: nn.Module | None) -> tuple[str, str | None] | None:
    """oneDNN post-op name and algorithm equal to ``act``, or None when it cannot be fused."""
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate  # 'none' (erf) or 'tanh', oneDNN's names too
    if isinstance(act, nn.ReLU):
        return "relu", None
    return None


class OneDNNConv2d(nn.Module):
    """A Conv2d on a prepacked weight; _fuse_activation may later give it an activation post-op."""

    def __init__(self, conv: nn.Conv2d, input_size: list[int] | None = None):
        super().__init__()
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.out_channels = conv.out_channels
        # oneDNN picks the weight layout for an input shape; without one it assumes a large
        # spatial size, a layout that is many times slower on the small (8x8) maps of MCi's
        # attention stages. A layout chosen for batch 1 runs larger batches as fast as one chosen
        # for them, so the batch-1 probe is enough.
        self.packed_weight = torch_ops.reorder_conv_weight(
            conv.weight.detach(), self.padding, self.stride, self.dilation, self.groups, input_size
        )
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.unary, self.algorithm = "none", None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch_ops.onednn_conv(
            x,
            self.packed_weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.unary,
            self.algorithm,
        )

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + conv(x)`` in one oneDNN call (no activation)."""
        return torch_ops.onednn_conv_add(
            x, residual, self.packed_weight, self.bias, self.padding, self.stride, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        post = f", post-op={self.unary}" if self.unary != "none" else ""
        return f"out_channels={self.out_channels}, groups={self.groups}, stride={self.stride}{post}"


class ExpandedDepthwise(nn.Module):
    """A grouped conv with one input channel and ``multiplier`` outputs per group (the stride-2
    downsampling convs of FastViT-MCi's PatchEmbed, e.g. 64 -> 128 channels in 64 groups) as a
    depthwise conv over the input with every channel repeated ``multiplier`` times.

    Output channel ``j`` sees input channel ``j // multiplier`` with weight ``j`` in both forms:
    the same arithmetic. oneDNN runs the depthwise form in its dedicated depthwise kernel but the
    multiplier form in a generic grouped kernel that pads each group to 16x16 channels, several
    times slower for these shapes. The repeat costs one copy of the (small) input, much less than
    the padded kernel.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.multiplier = conv.out_channels // conv.in_channels
        self.conv = conv_like(conv, conv.weight, conv.bias, groups=conv.out_channels)

    @staticmethod
    def applies_to(module: nn.Module) -> bool:
        return (
            type(module) is nn.Conv2d
            and module.groups == module.in_channels > 1
            and module.out_channels > module.in_channels
            and module.out_channels % module.in_channels == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).unsqueeze(-1)  # NHWC view of a channels-last input, + repeat axis
        repeated = pixels.expand(batch, height, width, channels, self.multiplier)
        repeated = repeated.reshape(batch, height, width, channels * self.multiplier)
        return self.conv(repeated.permute(0, 3, 1, 2))  # channels-last again, as oneDNN wants it


def expand_depthwise_multipliers(model: nn.Module) -> nn.Module:
    """Replace grouped convs with a channel multiplier by :class:`ExpandedDepthwise`, in place."""
    for parent, name, child in list(replaceable_children(model)):
        if ExpandedDepthwise.applies_to(child):
            setattr(parent, name, ExpandedDepthwise(child))
    return model


class OneDNNLinear(nn.Module):
    """A Linear (+ optional fused activation) on a prepacked weight; ``add_to`` fuses a residual add."""

    def __init__(self, linear: nn.Linear, act: nn.Module | None = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_weight = torch_ops.reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.unary, self.algorithm = _unary_attr(act) or ("none", None)

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> OneDNNLinear:
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return cls(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch_ops.onednn_linear(rows, self.packed_weight, self.bias, self.unary, self.algorithm)
        return out.view(*x.shape[:-1], self.out_features)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + linear(x)`` in one oneDNN call (no activation)."""
        rows = x.reshape(-1, self.in_features)
        out = torch_ops.onednn_linear_add(
            rows, residual.reshape(-1, self.out_features), self.packed_weight, self.bias
        )
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        post = f", post-op={self.unary}" if self.unary != "none" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}{post}"


def _additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask convention (bool: True = blocked; float: added) for SDPA."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return None if attn_mask is None else attn_mask.to(dtype)
    return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
        attn_mask, float("-inf")
    )


class OneDNNSelfAttentionBlock(nn.Module):
    """Pre-norm transformer block ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` on oneDNN linears.

    Replaces open_clip's ResidualAttentionBlock and MCt's TransformerBlock (self-attention,
    batch-first packed-qkv attention: nn.MultiheadAttention, or open_clip main's own ``Attention`` with
    the same parameters; MLP ``c_fc -> act -> c_proj``). Attention runs in
    ``F.scaled_dot_product_attention`` (the kernel nn.MultiheadAttention's fast path uses too;
    a causal mask becomes ``is_causal``); GELU is fused into ``c_fc`` and both residual adds into
    the output projections.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        mha = block.attn  # see torch_ops.plain_self_attention
        self.heads = mha.num_heads
        self.ln_1 = block.ln_1
        self.ln_2 = block.ln_2
        self.qkv = OneDNNLinear.from_weights(mha.in_proj_weight.detach(), mha.in_proj_bias)
        self.out_proj = OneDNNLinear(mha.out_proj)
        mlp = block.mlp
        act = mlp.gelu if hasattr(mlp, "gelu") else None
        self.c_fc = OneDNNLinear(mlp.c_fc, act)
        self.act = nn.Identity() if self.c_fc.unary != "none" else act
        self.c_proj = OneDNNLinear(mlp.c_proj)
        self._dtype = mha.in_proj_weight.dtype
        self._causal_cache: tuple[torch.Tensor, bool] | None = None

    @staticmethod
    def supports(block: nn.Module) -> bool:
        attn = getattr(block, "attn", None)
        mlp = getattr(block, "mlp", None)
        if attn is None or not isinstance(mlp, nn.Sequential):
            return False
        mlp_names = [name for name, _ in mlp.named_children()]
        no_layer_scale = all(
            isinstance(getattr(block, ls, nn.Identity()), nn.Identity) for ls in ("ls_1", "ls_2")
        )
        return (
            torch_ops.plain_self_attention(attn)
            and mlp_names == ["c_fc", "gelu", "c_proj"]
            and no_layer_scale
            and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ln_2"))
        )

    def _causal(self, attn_mask: torch.Tensor | None) -> bool:
        if attn_mask is None:
            return False
        cached = self._causal_cache
        if cached is not None and cached[0] is attn_mask:
            return cached[1]
        causal = is_causal_mask(attn_mask)
        self._causal_cache = (attn_mask, causal)
        return causal

    takes_is_causal = True

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        batch, length, width = q_x.shape
        qkv = self.qkv(self.ln_1(q_x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if is_causal or self._causal(attn_mask):
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=_additive_mask(attn_mask, q.dtype))
        x = self.out_proj.add_to(attn.transpose(1, 2).reshape(batch, length, width), q_x)
        return self.c_proj.add_to(self.act(self.c_fc(self.ln_2(x))), x)


def _weight_dtype(self: OneDNNSelfAttentionBlock) -> torch.dtype:
    return self._dtype


# open_clip's Transformer.get_cast_dtype() asks its first block for the weight dtype.
setattr(OneDNNSelfAttentionBlock, torch_ops.WEIGHT_DTYPE_METHOD, _weight_dtype)


def _fuse_activation(module: nn.Module) -> None:
    """Move a GELU/ReLU into the oneDNN layer that feeds it, for blocks whose forward is known.

    FastViT's MobileOneBlock / ReparamLargeKernelConv (fused) compute ``act(se(reparam_conv(x)))``;
    with no SE the activation follows the conv. ConvMlp / Mlp / MCt's ConvMlp1d compute
    ``fc2(act(fc1(...)))`` (dropout is the identity at inference).
    """
    types = block_types()
    if isinstance(module, types.mobileone + types.large_kernel):
        layer_name, act = "reparam_conv", getattr(module, "act", None)
        if not isinstance(getattr(module, "se", None), nn.Identity):
            return
    elif isinstance(module, types.conv_mlp):
        layer_name, act = "fc1", getattr(module, "act", None)
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            return
    else:
        return
    layer = getattr(module, layer_name, None)
    if isinstance(layer, ExpandedDepthwise):
        layer = layer.conv
    attr = _unary_attr(act)
    if attr is None or not isinstance(layer, (OneDNNConv2d, OneDNNLinear)) or layer.unary != "none":
        return
    layer.unary, layer.algorithm = attr
    module.act = nn.Identity()


class ResidualConvMlpBlock(nn.Module):
    """FastViT-MCi's RepMixer and attention blocks once folded, with the MLP branch's residual add
    fused into the MLP's last 1x1 conv (a oneDNN binary post-op: one pass over the activations
    fewer, the same sums).

    Computes what timm's / our ``RepMixerBlock.forward`` (``x = token_mixer(x)``; the mixer's skip
    connection is inside its fused conv) and ``AttentionBlock.forward`` (``x = x +
    token_mixer(norm(x))``) compute, then ``x + mlp(x)``, for blocks whose layer scales were
    folded and whose drop paths are the identity; ``ConvMlp``'s dropouts are the identity at
    inference.
    """

    def __init__(self, block: nn.Module, mixer_adds_input: bool):
        super().__init__()
        self.norm = getattr(block, "norm", nn.Identity())
        self.token_mixer = block.token_mixer
        self.mlp = block.mlp
        self.mixer_adds_input = mixer_adds_input

    @staticmethod
    def wrap(block: nn.Module) -> ResidualConvMlpBlock | None:
        """The fused block, or None when ``block`` is not one whose forward is known to be this."""
        types = block_types()
        if isinstance(block, types.repmixer_block_2d):
            identities, mixer_adds_input = ("layer_scale", "drop_path"), False
        elif isinstance(block, types.attention_block):
            identities = ("layer_scale_1", "layer_scale_2", "drop_path1", "drop_path2")
            mixer_adds_input = True
        else:
            return None
        mlp = getattr(block, "mlp", None)
        fc2 = getattr(mlp, "fc2", None)
        known = (
            all(isinstance(getattr(block, name, None), nn.Identity) for name in identities)
            and isinstance(mlp, types.conv_mlp)
            and all(isinstance(getattr(mlp, name, None), nn.Module) for name in ("conv", "fc1", "act"))
            and isinstance(getattr(mlp, "drop", nn.Identity()), (nn.Identity, nn.Dropout))
            and isinstance(fc2, OneDNNConv2d)
            and fc2.unary == "none"
        )
        return ResidualConvMlpBlock(block, mixer_adds_input) if known else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mixer_adds_input:
            x = x + self.token_mixer(self.norm(x))
        else:
            x = self.token_mixer(x)
        mlp = self.mlp
        return mlp.fc2.add_to(mlp.act(mlp.fc1(mlp.conv(x))), x)


def _supported_conv(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def example_inputs(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A batch-1 image and token tensor of the sizes an open_clip model expects (None if unknown)."""
    image = None
    if getattr(model, "visual", None) is not None:
        image = torch.zeros(1, 3, *image_height_width(model))
    text = None
    if hasattr(model, "encode_text"):
        text = torch.zeros(1, token_geometry(model)[0], dtype=torch.long)
        text[:, -1] = 1  # the pooled (argmax) token at the end: every position is computed
    return image, text


@torch.no_grad()
def _conv_input_sizes(model: nn.Module) -> dict[nn.Module, list[int]]:
    """Input shape seen by each Conv2d in one batch-1 forward of each tower (the packing hint)."""
    sizes: dict[nn.Module, list[int]] = {}

    def record(module, inputs, _output):
        sizes.setdefault(module, list(inputs[0].shape))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        image, text = example_inputs(model)
        if image is not None and hasattr(model, "encode_image"):
            model.encode_image(image)
        if text is not None and hasattr(model, "encode_text"):
            model.encode_text(text)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


# Layers other code inspects by type: open_clip's CLIP.encode_text applies ``text_projection``
# as a module only when ``isinstance(..., nn.Linear)`` and otherwise as a matrix.
_KEEP_AS_IS = frozenset({"text_projection"})


@torch.no_grad()
def use_onednn(model: nn.Module) -> nn.Module:
    """Swap convs, linears and self-attention blocks for oneDNN ones with prepacked weights, in place.

    The model must be on CPU in float32 and in eval mode. Grouped convs with a channel
    multiplier become depthwise ones (:class:`ExpandedDepthwise`). One batch-1 forward of each
    tower records every conv's input shape, from which oneDNN picks the weight layout. Layers
    inside an ``nn.MultiheadAttention`` are only replaced together with their whole block (the
    module reads its projection weights directly), so unrecognised attention modules stay as they
    are. Activations are fused into the layer before them, FastViT-MCi blocks get their MLP's
    residual add fused (:class:`ResidualConvMlpBlock`), and the image tower takes its input in
    channels-last layout, the one oneDNN's convs run in (an NCHW image made the first conv
    reorder it on every call).
    """
    expand_depthwise_multipliers(model)
    sizes = _conv_input_sizes(model)
    for parent, name, child in list(replaceable_children(model)):
        if OneDNNSelfAttentionBlock.supports(child):
            setattr(parent, name, OneDNNSelfAttentionBlock(child))
    for parent, name, child in list(replaceable_children(model)):
        if isinstance(parent, nn.MultiheadAttention) or name in _KEEP_AS_IS:
            continue
        if type(child) is nn.Conv2d and _supported_conv(child):
            setattr(parent, name, OneDNNConv2d(child, input_size=sizes.get(child)))
        elif type(child) is nn.Linear:
            setattr(parent, name, OneDNNLinear(child))
    for module in model.modules():
        _fuse_activation(module)
    for parent, name, child in list(replaceable_children(model)):
        fused = ResidualConvMlpBlock.wrap(child)
        if fused is not None:
            setattr(parent, name, fused)
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module) and not isinstance(visual, ImageInput):
        model.visual = ImageInput(visual, None, channels_last=True)
    return model
