"""The fastest numerically faithful inference model for MobileCLIP / MobileCLIP2, on CPU and CUDA.

``optimize(model)`` returns a copy of an open_clip CLIP model that computes the same embeddings
(within 1e-4 of the unfused fp32 model in fp32, checked in tests/test_optimize.py) faster, with
the same ``encode_image`` / ``encode_text`` / ``forward`` interface. The steps, each kept because
it measured faster (docs/benchmarks.md holds the numbers and what was tried and dropped):

1. **Reparameterize** (:func:`mobileclip2.reparameterize`): the training-time multi-branch blocks
   become single convolutions.
2. **Fold inference-only affines** (:func:`fold_affines`): BatchNorms after convs and before an
   attention block's ``qkv``, and layer-scale vectors, go into the weights of the layer next to
   them. Exact in real arithmetic; in fp32 the outputs move by ~1e-7.
3. **End causal text at the end-of-text token** (:func:`truncate_causal_text`): in a causal text
   transformer pooled at the end-of-text token (open_clip's TextTransformer with its causal mask:
   MobileCLIP-B, MobileCLIP2-B), no
   position attends to later ones, so the tokens after the last end-of-text token of a batch
   cannot change the embedding; they are not computed. A typical caption is 10-20 of the 77
   tokens. Not applied to bidirectional towers (``no_causal_mask``: MobileCLIP2-S0/S2/S3/S4/L-14;
   MobileCLIP-S0's MCt).
4. **CPU, fp32: oneDNN with prepacked weights** (:func:`use_onednn`): convs and linears call the
   oneDNN ops inductor emits for CPU with weights reordered once into oneDNN's blocked layout
   (chosen for the shapes a batch-1 probe sees), GELU fused into the layer before it, residual
   adds fused into the output projections of the text transformer and the last 1x1 conv of each
   FastViT-MCi block's MLP, grouped convs with a channel multiplier run as depthwise convs
   (oneDNN's generic grouped kernel was ~5x slower on them), images taken channels-last,
   attention in SDPA.
5. **Other devices / dtypes** (``dtype=``, ``channels_last=``, ``compile=``): cast to bf16/fp16
   (open_clip's ``LayerNormFp32`` keeps fp32 weights, as it computes in fp32), channels-last
   image tower, and ``torch.compile`` of each tower (``compile="reduce-overhead"`` adds CUDA
   graphs, which pay off for small batches).

The result is an inference artifact: no gradients, not meant to be trained or saved (the oneDNN
weights are opaque tensors). Keep the original model for that, and use
:func:`mobileclip2.reparameterize` for a fused model with a normal ``state_dict``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .catalog import image_height_width
from .compat import torch_ops
from .compat.block_types import block_types
from .models.mci import fuse_bn

__all__ = [
    "example_inputs",
    "expand_depthwise_multipliers",
    "fold_affines",
    "onednn_available",
    "optimize",
    "truncate_causal_text",
    "use_onednn",
]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ---------------------------------------------------------------------------------------------
# Step 2: fold per-channel affines into neighbouring layers.
# ---------------------------------------------------------------------------------------------


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
def _conv_like(
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


@torch.no_grad()
def _conv_with_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_scale_shift(bn)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    return _conv_like(conv, conv.weight * scale.reshape(-1, 1, 1, 1), bias * scale + shift)


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


def _children_to_replace(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every submodule, parents before children."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            yield parent, name, child


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
    for parent, name, child in list(_children_to_replace(model)):
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
        elif isinstance(getattr(module, "attn", None), nn.MultiheadAttention) and hasattr(module, "ls_2"):
            # open_clip ResidualAttentionBlock with layer scale (not used by MobileCLIP, but cheap).
            _fold_into(module, "ls_2", getattr(mlp, "c_proj", None))
            _fold_into(module, "ls_1", module.attn.out_proj)
    return model


# ---------------------------------------------------------------------------------------------
# Step 3: causal text towers stop at the end-of-text token.
# ---------------------------------------------------------------------------------------------


def _prefix_length(length: int, limit: int, multiple: int) -> int:
    """``length`` rounded up to a multiple (fewer distinct shapes for compiled code), at most ``limit``."""
    return min(limit, -(-length // multiple) * multiple)


class _PrefixEncoder(nn.Module):
    """open_clip's TextTransformer.forward (open_clip_torch 2.24 - 3.3, causal mask, no CLS token,
    pooled at the end-of-text token) on a token prefix: written from open_clip's
    ``TextTransformer._embeds`` / ``forward`` / ``text_global_pool``, equal outputs checked in
    tests/test_optimize.py. The blocks get the causal mask cut to the prefix, the way ``_embeds``
    cuts the positional embedding. A module of its own so that ``torch.compile`` sees it whole.
    """

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        length = tokens.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length]
        for block in tower.transformer.resblocks:
            # Our oneDNN blocks take the causal flag directly (SDPA's is_causal, no mask check).
            x = (
                block(x, is_causal=True)
                if getattr(block, "takes_is_causal", False)
                else block(x, attn_mask=mask)
            )
        x = tower.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), index]
        projection = tower.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


class _CausalPrefixText(nn.Module):
    """A causal text tower run on the shortest prefix (rounded up to ``multiple``) holding every
    row's pooled token; the tokens after it cannot reach the pooled position."""

    def __init__(self, tower: nn.Module, multiple: int = 8):
        super().__init__()
        self.encoder = _PrefixEncoder(tower)
        self.multiple = multiple
        self.pool_type = tower.pool_type
        self.eos_id = getattr(tower, "eos_id", None)
        self.context_length = tower.context_length
        self.vocab_size = getattr(tower, "vocab_size", None)
        self.output_dim = getattr(tower, "output_dim", None)
        self.output_tokens = False

    @staticmethod
    def supports(tower: nn.Module) -> bool:
        needed = (
            "token_embedding",
            "positional_embedding",
            "transformer",
            "ln_final",
            "attn_mask",
            "pool_type",
        )
        if not all(hasattr(tower, name) for name in needed) or not isinstance(tower.attn_mask, torch.Tensor):
            return False
        return (
            tower.pool_type in ("argmax", "eos")
            and getattr(tower, "cls_emb", None) is None
            and not getattr(tower, "output_tokens", False)
            and not getattr(tower, "use_pad_mask", False)
            and isinstance(getattr(tower.transformer, "resblocks", None), nn.ModuleList)
            and getattr(tower.transformer, "batch_first", True)
            and _is_causal_mask(tower.attn_mask)
        )

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            index = text.argmax(dim=-1)
        else:
            index = (text == self.eos_id).int().argmax(dim=-1)
        length = _prefix_length(int(index.max()) + 1, text.shape[1], self.multiple)
        return self.encoder(text[:, :length], index)


def truncate_causal_text(model: nn.Module, multiple: int = 8) -> nn.Module:
    """Step 3 in place: a causal ``model.text`` computes only the tokens up to the pooled one.

    ``multiple`` rounds the prefix length up (16: five shapes for 77 tokens, which keeps
    ``torch.compile`` and CUDA graphs from seeing a new shape per caption). Returns ``model``.
    """
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module) and _CausalPrefixText.supports(text):
        model.text = _CausalPrefixText(text, multiple)
    return model


def _is_causal_mask(attn_mask: torch.Tensor | None) -> bool:
    """An additive (L, L) mask that blocks exactly the future: SDPA's ``is_causal`` does the same."""
    if attn_mask is None or attn_mask.dim() != 2 or attn_mask.dtype == torch.bool:
        return False
    future = torch.ones(attn_mask.shape, dtype=torch.bool, device=attn_mask.device).triu(1)
    return bool(torch.equal(torch.isinf(attn_mask) & (attn_mask < 0), future)) and bool(
        (attn_mask.masked_fill(future, 0) == 0).all()
    )


# ---------------------------------------------------------------------------------------------
# Step 4: oneDNN layers with prepacked weights and fused post-ops (CPU, fp32).
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build has working oneDNN ops (see :mod:`mobileclip2.compat.torch_ops`)."""
    if not torch_ops.onednn_ops_present():
        return False
    try:  # some builds register the schema but not a CPU kernel
        _OneDNNConv2d(nn.Conv2d(2, 2, 1))(torch.zeros(1, 2, 1, 1))
        _OneDNNConv2d(nn.Conv2d(2, 2, 1)).add_to(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
        _OneDNNLinear(nn.Linear(2, 2))(torch.zeros(1, 2))
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


class _OneDNNConv2d(nn.Module):
    """A Conv2d on a prepacked weight; _fuse_activation may later give it an activation post-op."""

    def __init__(self, conv: nn.Conv2d, input_size: list[int] | None = None):
        super().__init__()
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.out_channels = conv.out_channels
        # oneDNN picks the weight layout for an input shape; without one it assumes a large
        # spatial size, which is ~60x slower on MCi's 8x8 attention stages. Layouts chosen for
        # batch 1 measured as fast as batch-specific ones at batch 32.
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


class _ExpandedDepthwise(nn.Module):
    """A grouped conv with one input channel and ``multiplier`` outputs per group (the stride-2
    downsampling convs of FastViT-MCi's PatchEmbed, e.g. 64 -> 128 channels in 64 groups) as a
    depthwise conv over the input with every channel repeated ``multiplier`` times.

    Output channel ``j`` sees input channel ``j // multiplier`` with weight ``j`` in both forms:
    the same arithmetic. oneDNN runs the depthwise form in its depthwise kernel but the
    multiplier form in a generic grouped kernel that pads each group to 16x16 channels (on
    MobileCLIP2-S0 the four such convs took 4.6 ms of a ~45 ms image forward, oneDNN verbose);
    the whole tower measured 1.04x faster with this at 2 threads, 1.31x at 1 thread
    (docs/benchmarks.md). The repeat is one copy of the (small) input.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.multiplier = conv.out_channels // conv.in_channels
        self.conv = _conv_like(conv, conv.weight, conv.bias, groups=conv.out_channels)

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
    """Replace grouped convs with a channel multiplier by :class:`_ExpandedDepthwise`, in place."""
    for parent, name, child in list(_children_to_replace(model)):
        if _ExpandedDepthwise.applies_to(child):
            setattr(parent, name, _ExpandedDepthwise(child))
    return model


class _OneDNNLinear(nn.Module):
    """A Linear (+ optional fused activation) on a prepacked weight; ``add_to`` fuses a residual add."""

    def __init__(self, linear: nn.Linear, act: nn.Module | None = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_weight = torch_ops.reorder_linear_weight(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.unary, self.algorithm = _unary_attr(act) or ("none", None)

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> _OneDNNLinear:
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


class _OneDNNSelfAttentionBlock(nn.Module):
    """Pre-norm transformer block ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` on oneDNN linears.

    Replaces open_clip's ResidualAttentionBlock and MCt's TransformerBlock (self-attention,
    batch-first nn.MultiheadAttention, MLP ``c_fc -> act -> c_proj``). Attention runs in
    ``F.scaled_dot_product_attention`` (the kernel nn.MultiheadAttention's fast path uses too;
    a causal mask becomes ``is_causal``); GELU is fused into ``c_fc`` and both residual adds into
    the output projections.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        mha: nn.MultiheadAttention = block.attn
        self.heads = mha.num_heads
        self.ln_1 = block.ln_1
        self.ln_2 = block.ln_2
        self.qkv = _OneDNNLinear.from_weights(mha.in_proj_weight.detach(), mha.in_proj_bias)
        self.out_proj = _OneDNNLinear(mha.out_proj)
        mlp = block.mlp
        act = mlp.gelu if hasattr(mlp, "gelu") else None
        self.c_fc = _OneDNNLinear(mlp.c_fc, act)
        self.act = nn.Identity() if self.c_fc.unary != "none" else act
        self.c_proj = _OneDNNLinear(mlp.c_proj)
        self._dtype = mha.in_proj_weight.dtype
        self._causal_cache: tuple[torch.Tensor, bool] | None = None

    @staticmethod
    def supports(block: nn.Module) -> bool:
        mha = getattr(block, "attn", None)
        mlp = getattr(block, "mlp", None)
        if not isinstance(mha, nn.MultiheadAttention) or not isinstance(mlp, nn.Sequential):
            return False
        plain_mha = (
            mha.batch_first
            and torch_ops.mha_packed_qkv(mha)
            and mha.bias_k is None
            and not mha.add_zero_attn
            and isinstance(getattr(mha, "out_proj", None), nn.Linear)
        )
        mlp_names = [name for name, _ in mlp.named_children()]
        no_layer_scale = all(
            isinstance(getattr(block, ls, nn.Identity()), nn.Identity) for ls in ("ls_1", "ls_2")
        )
        return (
            plain_mha
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
        causal = _is_causal_mask(attn_mask)
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


def _weight_dtype(self: _OneDNNSelfAttentionBlock) -> torch.dtype:
    return self._dtype


# open_clip's Transformer.get_cast_dtype() asks its first block for the weight dtype.
setattr(_OneDNNSelfAttentionBlock, torch_ops.WEIGHT_DTYPE_METHOD, _weight_dtype)


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
    if isinstance(layer, _ExpandedDepthwise):
        layer = layer.conv
    attr = _unary_attr(act)
    if attr is None or not isinstance(layer, (_OneDNNConv2d, _OneDNNLinear)) or layer.unary != "none":
        return
    layer.unary, layer.algorithm = attr
    module.act = nn.Identity()


class _ResidualConvMlpBlock(nn.Module):
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
    def wrap(block: nn.Module) -> _ResidualConvMlpBlock | None:
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
            and isinstance(fc2, _OneDNNConv2d)
            and fc2.unary == "none"
        )
        return _ResidualConvMlpBlock(block, mixer_adds_input) if known else None

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
    text_tower = getattr(model, "text", model)
    context = getattr(text_tower, "context_length", None) or getattr(model, "context_length", None)
    text = None if context is None else torch.zeros(1, context, dtype=torch.long)
    if text is not None:
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
    multiplier become depthwise ones (:class:`_ExpandedDepthwise`). One batch-1 forward of each
    tower records every conv's input shape, from which oneDNN picks the weight layout. Layers
    inside an ``nn.MultiheadAttention`` are only replaced together with their whole block (the
    module reads its projection weights directly), so unrecognised attention modules stay as they
    are. Activations are fused into the layer before them, FastViT-MCi blocks get their MLP's
    residual add fused (:class:`_ResidualConvMlpBlock`), and the image tower takes its input in
    channels-last layout, the one oneDNN's convs run in (an NCHW image made the first conv
    reorder it on every call).
    """
    expand_depthwise_multipliers(model)
    sizes = _conv_input_sizes(model)
    for parent, name, child in list(_children_to_replace(model)):
        if _OneDNNSelfAttentionBlock.supports(child):
            setattr(parent, name, _OneDNNSelfAttentionBlock(child))
    for parent, name, child in list(_children_to_replace(model)):
        if isinstance(parent, nn.MultiheadAttention) or name in _KEEP_AS_IS:
            continue
        if type(child) is nn.Conv2d and _supported_conv(child):
            setattr(parent, name, _OneDNNConv2d(child, input_size=sizes.get(child)))
        elif type(child) is nn.Linear:
            setattr(parent, name, _OneDNNLinear(child))
    for module in model.modules():
        _fuse_activation(module)
    for parent, name, child in list(_children_to_replace(model)):
        fused = _ResidualConvMlpBlock.wrap(child)
        if fused is not None:
            setattr(parent, name, fused)
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module) and not isinstance(visual, _ImageInput):
        model.visual = _ImageInput(visual, None, channels_last=True)
    return model


# ---------------------------------------------------------------------------------------------
# Step 5: dtype, memory format, torch.compile (CUDA and other devices).
# ---------------------------------------------------------------------------------------------


class _ImageInput(nn.Module):
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


def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)``, except norms that compute in fp32 (open_clip's LayerNormFp32) keep fp32
    weights: their forward upcasts the input and would otherwise meet low-precision weights."""
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, block_types().fp32_norm):
            module.float()


def _compile_mode(compile: bool | str) -> str | None:
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"optimize(compile={compile!r}): use True/False or one of {', '.join(COMPILE_MODES)}"
        )
    return mode


def _compile_towers(model: nn.Module, mode: str) -> None:
    """torch.compile each tower (``torch.compile(model)`` would compile only ``forward``, which
    ``encode_image`` / ``encode_text`` never call)."""
    for attr in ("visual", "text", "transformer"):
        tower = getattr(model, attr, None)
        if isinstance(tower, _CausalPrefixText):  # the prefix length is decided outside the graph
            tower.encoder = torch.compile(tower.encoder, mode=mode, dynamic=False)
        elif isinstance(tower, nn.Module):
            setattr(model, attr, torch.compile(tower, mode=mode, dynamic=False))


def _parameter_devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def _parameters_on_cpu_fp32(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    return all(t.device.type == "cpu" for t in tensors) and all(t.dtype == torch.float32 for t in floats)


def optimize(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    onednn: bool | None = None,
    compile: bool | str = False,
    truncate_text: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """The fastest numerically faithful inference version of an open_clip CLIP model.

    Args:
        model: a model from ``open_clip.create_model`` (MobileCLIP/MobileCLIP2 or any other CLIP),
            fused or not, on the device it should run on; it is put in eval mode.
        dtype: cast to this dtype (``torch.bfloat16`` / ``torch.float16`` on GPUs); ``None`` keeps
            the model's. Images may still be passed in fp32: they are cast on the way in.
        channels_last: image tower in channels-last memory format; ``None`` (default) means yes
            on CUDA (the oneDNN path on CPU is channels-last anyway).
        onednn: use oneDNN layers with prepacked weights (step 4 of the module docs). ``None``
            (default) uses them when the model is on CPU in float32, not compiled, and this torch
            has the ops; ``True`` insists and raises if that is impossible; ``False`` skips them.
        compile: ``torch.compile`` each tower: ``True`` (mode ``"default"``) or a mode name;
            ``"reduce-overhead"`` adds CUDA graphs (small batches on CUDA). Does not compose with
            oneDNN layers; on CPU it measured no faster than them (docs/benchmarks.md).
        truncate_text: step 3 (causal text towers stop at the end-of-text token).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        A model with the same ``encode_image`` / ``encode_text`` / ``forward``; in fp32 its
        embeddings match the unfused model within 1e-4. Run it under ``torch.inference_mode()``;
        it cannot be trained or saved (see the module docs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() needs a torch.nn.Module, got {type(model).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"optimize(dtype={dtype!r}): pass a floating torch.dtype such as torch.bfloat16")
    mode = _compile_mode(compile)
    if mode is not None and onednn:
        raise ValueError(
            "optimize(compile=...) compiles the plain folded model with torch.compile; the prepacked oneDNN "
            "layers cannot be traced by it. Pass onednn=None/False with compile."
        )
    from .reparam import reparameterize

    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    model = reparameterize(model, inplace=True)
    fold_affines(model)
    if truncate_text:
        truncate_causal_text(model, multiple=16 if mode else 8)
    if dtype is not None and dtype != torch.float32:
        _cast(model, dtype)

    cpu_fp32 = _parameters_on_cpu_fp32(model)
    if onednn is None:
        onednn = mode is None and cpu_fp32 and onednn_available()
    elif onednn and not (cpu_fp32 and onednn_available()):
        raise ValueError(
            "optimize(onednn=True) needs a float32 model on CPU and a torch build with oneDNN (mkldnn); "
            f"got parameters on {sorted({str(p.device) for p in model.parameters()})} of dtype "
            f"{sorted({str(p.dtype) for p in model.parameters()})}, oneDNN ops available: {onednn_available()}. "
            "Pass onednn=False to optimize for another device or dtype."
        )
    if onednn:
        return use_onednn(model)

    if channels_last is None:
        channels_last = "cuda" in _parameter_devices(model)
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module) and (channels_last or dtype is not None):
        if channels_last:
            visual.to(memory_format=torch.channels_last)
        model.visual = _ImageInput(visual, dtype, channels_last)
    if mode is not None:
        _compile_towers(model, mode)
    return model
