"""The fastest numerically faithful CPU inference model for MobileCLIP / MobileCLIP2.

``optimize(model)`` returns a copy of an open_clip CLIP model that computes the same embeddings
(within 1e-4 of the unfused fp32 model, checked in tests/test_optimize.py) faster, with the same
``encode_image`` / ``encode_text`` / ``forward`` interface. Each step below was kept because it
measured faster on CPU (see docs/benchmarks.md for the numbers and what was tried and dropped):

1. **Reparameterize** (:func:`mobileclip2.reparameterize`): the training-time multi-branch blocks
   (MobileOne, RepMixer, RepCPE, large-kernel convs, MCt's 1-D RepMixer) become single convolutions.
2. **Fold inference-only affines** (:func:`fold_affines`): what is a per-channel scale/shift at
   inference is folded into the conv or linear layer next to it, so the op disappears: the
   BatchNorm after ConvMlp's depthwise conv (image tower and MCt), the BatchNorm before an
   attention block's ``qkv`` projection, and every layer-scale vector into the projection that
   feeds it. Exact in real arithmetic; in fp32 the outputs move by ~1e-7.
3. **oneDNN with prepacked weights** (:func:`use_onednn`, CPU fp32): every conv and linear calls
   oneDNN through the ops PyTorch's own inductor backend emits (``torch.ops.mkldnn.*``), with the
   weight reordered once into oneDNN's blocked layout instead of on every call, GELU fused into
   the layer before it, and the text transformer's residual adds fused into the projections.
   Two reasons it wins: eager PyTorch re-lays out each conv weight on every call (at batch 1 that
   is a large share of the image tower's time), and on AMD CPUs PyTorch's fp32 matmul goes
   through MKL's AVX2 code path while oneDNN uses AVX-512 (2048^3 fp32 matmul on the 2-core
   benchmark machine: ~2.3x the GFLOP/s, measured in each benchmark run). Activations come out channels-last, oneDNN's native
   layout. The weight layout is chosen for the shapes one batch-1 probe forward sees: packing
   without a shape hint made the 8x8 attention-stage 1x1 convs ~60x slower.
4. **torch.compile** (``compile=True``, optional, instead of step 3): for devices where step 3
   does not apply. On this CPU it was measured and dropped as the default: with inductor's weight
   freezing the image tower ran at the same speed as step 3 (35.9 vs 35.5 ms, 1 thread), without
   freezing slower, and the text tower slower (inductor's fp32 linears use MKL again, 75 vs
   38 ms); compilation takes tens of seconds per input shape and needs a C++ compiler.

Also measured and not kept (single-thread CPU time, MobileCLIP2-S0, batch 1 unless noted):
channels-last memory format alone (1.09x; step 3's outputs are channels-last anyway); TorchScript
trace + freeze + optimize_for_inference (2.0x, deprecated in torch 2.14, below step 3); oneDNN's
blocked activation layout via ``torch.utils.mkldnn`` (slower than channels-last for every conv shape
tried); fusing the RepMixer residual add into the second 1x1 conv (within noise at batch 1 and 32);
ONNX Runtime is faster than step 3 on the image tower at batch 32 (see docs/benchmarks.md), where
the early stages' 1x1 convs are memory-bound.

The result is an inference artifact: it has no gradients, is not meant to be trained, saved or
moved to another device (the packed weights are oneDNN tensors). Keep the original model for
that, and use :func:`mobileclip2.reparameterize` for a fused model that still has a normal
``state_dict`` (e.g. for ONNX export).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["example_inputs", "fold_affines", "onednn_available", "optimize", "use_onednn"]


# ---------------------------------------------------------------------------------------------
# Step 2: fold per-channel affines into neighbouring layers.
# ---------------------------------------------------------------------------------------------


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift``."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return scale, bn.bias - bn.running_mean * scale


def _is_plain_bn(module: nn.Module) -> bool:
    """A BatchNorm2d whose forward is only the normalization (timm's BatchNormAct2d with no act/drop)."""
    if not isinstance(module, nn.BatchNorm2d) or not module.affine or module.running_var is None:
        return False
    return all(isinstance(getattr(module, attr, nn.Identity()), nn.Identity) for attr in ("act", "drop"))


@torch.no_grad()
def _conv_with_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


def _conv_bn_pair(module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    """(conv, bn) when ``module``'s forward is exactly ``bn(conv(x))``: timm's ConvNormAct without
    activation/anti-aliasing, or a two-module Sequential (MCt's ConvFFN and Apple's conv_bn)."""
    if isinstance(module, nn.Sequential):
        children = list(module.children())
        if len(children) == 2 and isinstance(children[0], nn.Conv2d) and _is_plain_bn(children[1]):
            return children[0], children[1]
        return None
    if type(module).__name__ != "ConvNormAct" or not isinstance(
        getattr(module, "aa", None) or nn.Identity(), nn.Identity
    ):
        return None
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    return (conv, bn) if isinstance(conv, nn.Conv2d) and _is_plain_bn(bn) else None


def _gamma(module: nn.Module | None) -> torch.Tensor | None:
    """The per-channel vector of a layer-scale module (timm LayerScale2d, open_clip/ours LayerScale)."""
    gamma = getattr(module, "gamma", None)
    if isinstance(gamma, torch.Tensor) and type(module).__name__.startswith("LayerScale"):
        return gamma.reshape(-1)
    return None


@torch.no_grad()
def _scale_outputs(layer: nn.Module, gamma: torch.Tensor) -> bool:
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


@torch.no_grad()
def fold_affines(model: nn.Module) -> nn.Module:
    """Fold inference-time per-channel affines into adjacent layers, in place; returns ``model``.

    Folds: conv -> BatchNorm pairs (timm ConvNormAct, MCt's conv_bn), an attention block's
    BatchNorm into its ``qkv`` projection, and layer-scale vectors into the layer producing the
    scaled branch (RepMixer / attention blocks of FastViT-MCi, MCt's RepMixer blocks, open_clip
    residual blocks with ``ls_init_value``). Only structures whose forward is known are touched;
    everything else is left as it is. Uses BatchNorm running statistics: for inference only.
    """
    for parent, name, child in list(_children_to_replace(model)):
        pair = _conv_bn_pair(child)
        if pair is not None:
            setattr(parent, name, _conv_with_bn(*pair))
    for module in model.modules():
        kind = type(module).__name__
        mlp = getattr(module, "mlp", None)
        if kind in ("RepMixerBlock", "RepMixerBlock1d"):
            gamma = _gamma(getattr(module, "layer_scale", None))
            if gamma is not None and _scale_outputs(getattr(mlp, "fc2", None), gamma):
                module.layer_scale = nn.Identity()
        elif kind == "AttentionBlock":
            mixer = module.token_mixer
            gamma = _gamma(getattr(module, "layer_scale_1", None))
            if gamma is not None and _scale_outputs(getattr(mixer, "proj", None), gamma):
                module.layer_scale_1 = nn.Identity()
            gamma = _gamma(getattr(module, "layer_scale_2", None))
            if gamma is not None and _scale_outputs(getattr(mlp, "fc2", None), gamma):
                module.layer_scale_2 = nn.Identity()
            qkv = getattr(mixer, "qkv", None)
            if _is_plain_bn(module.norm) and isinstance(qkv, nn.Linear):
                mixer.qkv = _linear_after_bn(qkv, module.norm)
                module.norm = nn.Identity()
        elif isinstance(getattr(module, "attn", None), nn.MultiheadAttention) and hasattr(module, "ls_2"):
            # open_clip ResidualAttentionBlock with layer scale (not used by MobileCLIP, but cheap).
            gamma = _gamma(module.ls_2)
            if gamma is not None and _scale_outputs(getattr(mlp, "c_proj", None), gamma):
                module.ls_2 = nn.Identity()
            gamma = _gamma(getattr(module, "ls_1", None))
            if gamma is not None and _scale_outputs(module.attn.out_proj, gamma):
                module.ls_1 = nn.Identity()
    return model


# ---------------------------------------------------------------------------------------------
# Step 3: oneDNN layers with prepacked weights and fused post-ops.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this torch build has the oneDNN ops used here (x86/ARM CPU builds with mkldnn).

    They are the ops inductor emits for CPU (``torch.ops.mkldnn._convolution_pointwise`` etc.,
    present since torch 2.0, checked up to 2.14); a build without them simply skips step 3.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    needed = (
        "_convolution_pointwise",
        "_linear_pointwise",
        "_reorder_convolution_weight",
        "_reorder_linear_weight",
    )
    try:
        if not all(hasattr(ops, name) for name in needed):
            return False
        # Smoke test: some builds register the schema but not a CPU kernel.
        conv = nn.Conv2d(2, 2, 1)
        _OneDNNConv2d(conv)(torch.zeros(1, 2, 1, 1))
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
        self.packed_weight = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), self.padding, self.stride, self.dilation, self.groups, input_size
        )
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.unary, self.algorithm = "none", None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.packed_weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.unary,
            [],
            self.algorithm,
        )

    def extra_repr(self) -> str:
        post = f", post-op={self.unary}" if self.unary != "none" else ""
        return f"out_channels={self.out_channels}, groups={self.groups}, stride={self.stride}{post}"


class _OneDNNLinear(nn.Module):
    """A Linear (+ optional fused activation) on a prepacked weight; ``add_to`` fuses a residual add."""

    def __init__(self, linear: nn.Linear, act: nn.Module | None = None):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
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
        out = torch.ops.mkldnn._linear_pointwise(
            rows, self.packed_weight, self.bias, self.unary, [], self.algorithm
        )
        return out.view(*x.shape[:-1], self.out_features)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + linear(x)`` in one oneDNN call (no activation)."""
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise.binary(
            rows, residual.reshape(-1, self.out_features), self.packed_weight, self.bias, "add"
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
    ``F.scaled_dot_product_attention`` (the kernel nn.MultiheadAttention's fast path uses too);
    GELU is fused into ``c_fc`` and both residual adds into the output projections.
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

    @staticmethod
    def supports(block: nn.Module) -> bool:
        mha = getattr(block, "attn", None)
        mlp = getattr(block, "mlp", None)
        if not isinstance(mha, nn.MultiheadAttention) or not isinstance(mlp, nn.Sequential):
            return False
        plain_mha = (
            mha.batch_first
            and mha._qkv_same_embed_dim
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

    def get_weight_dtype(
        self,
    ) -> torch.dtype:  # open_clip's Transformer.get_cast_dtype() asks the first block
        return self._dtype

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: torch.Tensor | None = None,
        v_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length, width = q_x.shape
        qkv = self.qkv(self.ln_1(q_x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=_additive_mask(attn_mask, q.dtype))
        x = self.out_proj.add_to(attn.transpose(1, 2).reshape(batch, length, width), q_x)
        return self.c_proj.add_to(self.act(self.c_fc(self.ln_2(x))), x)


def _fuse_activation(module: nn.Module) -> None:
    """Move a GELU/ReLU into the oneDNN layer that feeds it, for blocks whose forward is known.

    FastViT's MobileOneBlock / ReparamLargeKernelConv (fused) compute ``act(se(reparam_conv(x)))``;
    with no SE the activation follows the conv. ConvMlp / Mlp / MCt's ConvMlp1d compute
    ``fc2(act(fc1(...)))`` (dropout is the identity at inference).
    """
    kind = type(module).__name__
    if kind in ("MobileOneBlock", "ReparamLargeKernelConv"):
        layer_name, act = "reparam_conv", getattr(module, "act", None)
        if not isinstance(getattr(module, "se", None), nn.Identity):
            return
    elif kind in ("ConvMlp", "ConvMlp1d", "Mlp"):
        layer_name, act = "fc1", getattr(module, "act", None)
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            return
    else:
        return
    layer = getattr(module, layer_name, None)
    attr = _unary_attr(act)
    if attr is None or not isinstance(layer, (_OneDNNConv2d, _OneDNNLinear)) or layer.unary != "none":
        return
    layer.unary, layer.algorithm = attr
    module.act = nn.Identity()


def _supported_conv(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def example_inputs(model: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A batch-1 image and token tensor of the sizes an open_clip model expects (None if unknown)."""
    visual = getattr(model, "visual", None)
    size = (getattr(visual, "preprocess_cfg", None) or {}).get("size") or getattr(visual, "image_size", None)
    image = None
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        image = torch.zeros(1, 3, height, width)
    text_tower = getattr(model, "text", model)
    context = getattr(text_tower, "context_length", None) or getattr(model, "context_length", None)
    text = None if context is None else torch.zeros(1, context, dtype=torch.long)
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

    The model must be on CPU in float32 and in eval mode. One batch-1 forward of each tower
    records every conv's input shape, from which oneDNN picks the weight layout. Layers inside an
    ``nn.MultiheadAttention`` are only replaced together with their whole block (the module
    reads its projection weights directly), so unrecognised attention modules stay as they are.
    """
    sizes = _conv_input_sizes(model)
    for parent, name, child in list(_children_to_replace(model)):
        if _OneDNNSelfAttentionBlock.supports(child):
            setattr(parent, name, _OneDNNSelfAttentionBlock(child))
    for parent, name, child in list(_children_to_replace(model)):
        if isinstance(parent, nn.MultiheadAttention) or name in _KEEP_AS_IS:
            continue
        if isinstance(child, nn.Conv2d) and type(child) is nn.Conv2d and _supported_conv(child):
            setattr(parent, name, _OneDNNConv2d(child, input_size=sizes.get(child)))
        elif isinstance(child, nn.Linear) and type(child) is nn.Linear:
            setattr(parent, name, _OneDNNLinear(child))
    for module in model.modules():
        _fuse_activation(module)
    return model


# ---------------------------------------------------------------------------------------------
# The public entry point.
# ---------------------------------------------------------------------------------------------


def _parameters_on_cpu_fp32(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    return all(t.device.type == "cpu" for t in tensors) and all(t.dtype == torch.float32 for t in floats)


def optimize(
    model: nn.Module,
    *,
    onednn: bool | None = None,
    compile: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """The fastest numerically faithful inference version of an open_clip CLIP model.

    Args:
        model: a model from ``open_clip.create_model`` (MobileCLIP/MobileCLIP2 or any other CLIP),
            fused or not; it is put in eval mode.
        onednn: use oneDNN layers with prepacked weights (step 3 of the module docs). ``None``
            (default) uses them when the model is on CPU in float32 and this torch has the ops;
            ``True`` insists and raises if that is impossible; ``False`` skips them (the result
            then still runs on any device and dtype).
        compile: ``torch.compile`` each tower of the folded model instead of using oneDNN layers
            (the two do not compose). Meant for other devices (e.g. CUDA); on CPU it measured no
            faster than the oneDNN path (docs/benchmarks.md), compiles for tens of seconds per
            input shape and needs a C++ compiler.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        A model with the same ``encode_image`` / ``encode_text`` / ``forward``; embeddings match
        the unfused fp32 model within 1e-4. Run it under ``torch.inference_mode()`` or
        ``torch.no_grad()``; it cannot be trained or saved (see the module docs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() needs a torch.nn.Module, got {type(model).__name__}")
    from .reparam import reparameterize

    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    model = reparameterize(model, inplace=True)
    fold_affines(model)

    if compile:
        if onednn:
            raise ValueError(
                "optimize(compile=True) compiles the plain folded model with torch.compile; the prepacked oneDNN "
                "layers cannot be traced by it. Pass onednn=None/False with compile=True."
            )
        for attr in ("visual", "text", "transformer"):
            if isinstance(getattr(model, attr, None), nn.Module):
                setattr(model, attr, torch.compile(getattr(model, attr)))
        return model
    cpu_fp32 = _parameters_on_cpu_fp32(model)
    if onednn is None:
        onednn = cpu_fp32 and onednn_available()
    elif onednn and not (cpu_fp32 and onednn_available()):
        raise ValueError(
            "optimize(onednn=True) needs a float32 model on CPU and a torch build with oneDNN (mkldnn); "
            f"got parameters on {sorted({str(p.device) for p in model.parameters()})} of dtype "
            f"{sorted({str(p.dtype) for p in model.parameters()})}, oneDNN ops available: {onednn_available()}. "
            "Pass onednn=False to optimize for another device or dtype."
        )
    if onednn:
        use_onednn(model)
    return model
