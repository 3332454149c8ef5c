"""MCt, the MobileCLIP-S0 text encoder, as an open_clip text tower.

Paper: "MobileCLIP: Fast Image-Text Models through Multi-Modal Reinforced Training", Vasu et al.,
CVPR 2024, https://arxiv.org/abs/2311.17049.
Reference: apple/ml-mobileclip (MIT) at 4144bb1f, mobileclip/text_encoder.py (variant "mct") and
mobileclip/modules/text/repmixer.py. This is our own implementation of the same arithmetic.

MCt = token embedding + learned absolute positions, then a RepMixer block, N pre-norm transformer
layers and a second RepMixer block, a final LayerNorm, pooling at the end-of-text token (the
largest token id, as in CLIP) and a bias-free projection. There is no causal and no padding mask:
every position sees every other one, padding included, exactly as Apple trained it.

OpenCLIP only builds its own TextTransformer or HF models; mobileclip2.compat.register_text_tower
routes a text_cfg with ``"text_tower": "mobileclip_mct"`` to :func:`build_text_tower`. Attribute
names follow open_clip's TextTransformer (token_embedding, positional_embedding,
transformer.resblocks, ln_final, text_projection) so locking, grad checkpointing and checkpoint
tooling work the same way; RepMixer submodules follow timm's FastViT names (token_mixer.norm /
.mixer, identity, conv_kxk, layer_scale.gamma, mlp.conv / fc1 / fc2), matching the image tower.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

# The image tower's fusion primitives serve here too: a (1, k) depthwise kernel is a 2-D one.
from ..compat.text_tower import quick_gelu_layer, text_norm_layer
from ..compat.torch_ops import composable_checkpoint
from .mci import ConvMlp, LayerScale2d, fuse_bn, identity_kernel

__all__ = [
    "MCtCfg",
    "MCtTextEncoder",
    "RepMixer1d",
    "RepMixerBlock1d",
    "TransformerBlock",
    "build_text_tower",
]


# ---------------------------------------------------------------------------------------------
# RepMixer along the sequence: tensors are [B, C, 1, L] so kernels are (1, k) depthwise 2-D convs,
# the layout Apple's checkpoints store.
# ---------------------------------------------------------------------------------------------


def _dw_conv(dim: int, kernel_size: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, (1, kernel_size), padding=(0, kernel_size // 2), groups=dim, bias=bias)


def _conv_bn(dim: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=_dw_conv(dim, kernel_size, bias=False), bn=nn.BatchNorm2d(dim)))


class RepDwConv1d(nn.Module):
    """Depthwise MobileOne branches along the sequence: BatchNorm skip + ``num_conv_branches`` conv-BN.

    Apple builds these with MobileOneBlock((1, k)); its 1x1 "scale" branch is skipped there because
    MobileOne checks ``kernel_size[0] > 1``, which is 1 for a (1, k) kernel, so there is none here.
    The branches are only ever fused by the parent RepMixer1d, hence no reparameterize() of its own.
    """

    def __init__(self, dim: int, kernel_size: int, num_conv_branches: int):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.identity = nn.BatchNorm2d(dim)
        self.conv_kxk = nn.ModuleList([_conv_bn(dim, kernel_size) for _ in range(num_conv_branches)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.identity(x)
        for branch in self.conv_kxk:
            out = out + branch(x)
        return out

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One depthwise (1, k) conv equal to the sum of all branches."""
        reference = self.identity.weight
        kernel, bias = fuse_bn(
            identity_kernel(self.dim, self.dim, (1, self.kernel_size), reference), self.identity
        )
        for branch in self.conv_kxk:
            branch_kernel, branch_bias = fuse_bn(branch.conv.weight, branch.bn)
            kernel, bias = kernel + branch_kernel, bias + branch_bias
        return kernel, bias


class RepMixer1d(nn.Module):
    """Token mixer ``x + gamma * (mixer(x) - norm(x))``, fusable into one depthwise (1, k) conv."""

    def __init__(self, dim: int, kernel_size: int = 11, layer_scale_init_value: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.norm = RepDwConv1d(dim, kernel_size, num_conv_branches=0)
        self.mixer = RepDwConv1d(dim, kernel_size, num_conv_branches=1)
        self.layer_scale = LayerScale2d(dim, layer_scale_init_value)
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold skip, branches and layer scale into ``reparam_conv`` (uses BN running stats). Idempotent."""
        if self.reparam_conv is not None:
            return
        mixer_kernel, mixer_bias = self.mixer.fused_kernel_bias()
        norm_kernel, norm_bias = self.norm.fused_kernel_bias()
        gamma = self.layer_scale.gamma
        kernel = identity_kernel(self.dim, self.dim, (1, self.kernel_size), gamma) + gamma.unsqueeze(-1) * (
            mixer_kernel - norm_kernel
        )
        conv = _dw_conv(self.dim, self.kernel_size, bias=True).to(device=gamma.device, dtype=gamma.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(gamma.flatten() * (mixer_bias - norm_bias))
        self.reparam_conv = conv
        del self.norm, self.mixer, self.layer_scale


class ConvMlp1d(nn.Module):
    """Depthwise (1, k) conv-BN, then a 1x1-conv MLP: Apple's ConvFFN along the sequence."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kernel_size: int,
        act_layer: Callable[[], nn.Module],
        drop: float = 0.0,
    ):
        super().__init__()
        self.conv = _conv_bn(dim, kernel_size)
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)
        self.drop = nn.Dropout(drop)
        self.apply(ConvMlp._init_weights)  # the image tower's ConvFFN init, same draw order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.conv(x)))
        return self.drop(self.fc2(self.drop(x)))


class RepMixerBlock1d(nn.Module):
    """MetaFormer block with a RepMixer token mixer, on [B, L, C] sequences."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
    ):
        super().__init__()
        self.token_mixer = RepMixer1d(dim, kernel_size, layer_scale_init_value)
        self.mlp = ConvMlp1d(dim, int(dim * mlp_ratio), kernel_size, act_layer, drop)
        self.layer_scale = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2).unsqueeze(2)  # [B, L, C] -> [B, C, 1, L]
        x = self.token_mixer(x)
        x = x + self.drop_path(self.layer_scale(self.mlp(x)))
        return x.squeeze(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Transformer layer: pre-norm, fused qkv (nn.MultiheadAttention's in_proj), GELU MLP; the names
# of open_clip's ResidualAttentionBlock, but batch-first on every open_clip version.
# ---------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = norm_layer(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = norm_layer(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=act_layer(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class MCtTransformer(nn.Module):
    """The block stack (RepMixer, transformer layers, RepMixer) under open_clip's ``resblocks`` name."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


# ---------------------------------------------------------------------------------------------
# The text tower
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MCtCfg:
    """The ``text_cfg`` keys an MCt tower understands (plus ``"text_tower": "mobileclip_mct"``)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 4  # transformer layers between the two RepMixer blocks
    mlp_ratio: float = 4.0
    repmixer_kernel_size: int = 11
    repmixer_mlp_ratio: float = 4.0
    layer_scale_init_value: float = 1e-5
    no_causal_mask: bool = True  # MCt attends over the whole sequence; only True is supported
    output_tokens: bool = False  # token outputs are not supported (CoCa-style use)

    @classmethod
    def from_text_cfg(cls, text_cfg: Mapping[str, Any]) -> MCtCfg:
        """Validate a config dict, naming unknown keys instead of raising a bare TypeError."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in text_cfg.items() if key != "text_tower"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MCt text_cfg keys {unknown}; supported: {sorted(known)}")
        cfg = cls(**values)
        if not cfg.no_causal_mask:
            raise ValueError("MCt is a bidirectional encoder: text_cfg 'no_causal_mask' must be true")
        if cfg.output_tokens:
            raise ValueError("MCt does not return token embeddings: text_cfg 'output_tokens' must be false")
        return cfg


def _set_trainable(
    group: list[nn.Module | nn.Parameter], trainable: bool, keep_layer_norm: bool = False
) -> None:
    for item in group:
        if isinstance(item, nn.Parameter):
            item.requires_grad = trainable
            continue
        for module in item.modules():
            module_trainable = trainable or (keep_layer_norm and isinstance(module, nn.LayerNorm))
            for param in module.parameters(recurse=False):
                param.requires_grad = module_trainable


class MCtTextEncoder(nn.Module):
    """MobileCLIP-S0's text tower: tokens [B, L] -> features [B, output_dim] (not normalized)."""

    def __init__(
        self,
        output_dim: int,
        cfg: MCtCfg | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        cfg = cfg or MCtCfg()
        if norm_layer is None:
            norm_layer = text_norm_layer(None)
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.width = cfg.width
        self.output_dim = output_dim
        self.output_tokens = False

        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))

        def repmixer() -> RepMixerBlock1d:
            return RepMixerBlock1d(
                cfg.width,
                kernel_size=cfg.repmixer_kernel_size,
                mlp_ratio=cfg.repmixer_mlp_ratio,
                act_layer=act_layer,
                layer_scale_init_value=cfg.layer_scale_init_value,
            )

        attention = [
            TransformerBlock(cfg.width, cfg.heads, cfg.mlp_ratio, act_layer, norm_layer)
            for _ in range(cfg.layers)
        ]
        self.transformer = MCtTransformer([repmixer(), *attention, repmixer()])
        self.ln_final = norm_layer(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        self._bn_stats_frozen = False
        self.init_parameters()

    def init_parameters(self) -> None:
        """open_clip's token-embedding and projection init, Apple's for the positions (the rest: torch
        defaults)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.trunc_normal_(self.positional_embedding, std=self.width**-0.5)
        nn.init.normal_(self.text_projection, std=self.width**-0.5)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """Shorter inputs use the first positions, as open_clip's TextTransformer does (Apple's V1
        code would resample its 77 positions instead; tokenizers always give 77 tokens)."""
        seq_len = text.shape[1]
        if seq_len > self.context_length:
            raise ValueError(f"got {seq_len} tokens, but MCt has {self.context_length} positions")
        x = self.token_embedding(text)
        x = x + self.positional_embedding[:seq_len].to(x.dtype)
        x = self.transformer(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # end-of-text token
        return pooled @ self.text_projection

    def layer_groups(self, pooler_in_head: bool = True) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
        """open_clip's text-tower grouping, input -> output: embeddings, each block (the last one with
        ln_final), the projection. Used by ``lock`` and by open_clip_train main's layer-wise LR decay;
        ``pooler_in_head`` is accepted for open_clip's common signature: MCt has no readout pooler."""
        blocks = list(self.transformer.resblocks)
        return [
            ("embeddings", [self.token_embedding, self.positional_embedding]),
            *[(f"layer.{i}", [block]) for i, block in enumerate(blocks[:-1])],
            (f"layer.{len(blocks) - 1}", [blocks[-1], self.ln_final]),
            ("proj", [self.text_projection]),
        ]

    def lock(
        self, unlocked_layers: int = 0, freeze_layer_norm: bool = True, pooler_in_head: bool = True
    ) -> None:
        """Freeze the tower except its last ``unlocked_layers`` groups (open_clip's grouping).

        Frozen RepMixer BatchNorms also stop updating their running statistics in train mode, so a
        locked tower computes exactly what it computed before training. ``freeze_layer_norm=False``
        leaves LayerNorm weights of frozen groups trainable, as open_clip's HF towers do.
        ``pooler_in_head`` (passed by open_clip main) changes nothing: MCt has no readout pooler.
        """
        groups = [members for _, members in self.layer_groups(pooler_in_head)]
        for group in groups:
            _set_trainable(group, False, keep_layer_norm=not freeze_layer_norm)
        if unlocked_layers > 0:
            for group in groups[-unlocked_layers:]:
                _set_trainable(group, True)
        self._bn_stats_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> MCtTextEncoder:
        super().train(mode)
        if mode and self._bn_stats_frozen:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
                    module.eval()
        return self

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, impl: str = "inline") -> None:
        """``impl`` (open_clip main): 'inline' checkpoints each block inside forward, 'composable' marks
        each block for torch's composable checkpointing (FSDP2)."""
        if impl not in ("inline", "composable"):
            raise ValueError(f"impl must be 'inline' or 'composable', got {impl!r}")
        if impl == "composable" and enable:
            for block in self.transformer.resblocks:
                composable_checkpoint(block)
            return
        self.transformer.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding"}


def build_text_tower(
    embed_dim: int,
    text_cfg: Mapping[str, Any],
    quick_gelu: bool = False,
    cast_dtype: torch.dtype | None = None,
) -> MCtTextEncoder:
    """open_clip text-tower builder for ``"text_tower": "mobileclip_mct"`` (see compat.register_text_tower).

    The norm layer is chosen as open_clip chooses it for its own text towers (compat.text_norm_layer):
    ``LayerNormFp32`` when a cast dtype is asked for (``precision='fp16'/'bf16'``; open_clip then keeps
    those weights in fp32, and they normalize in fp32 as Apple's MCt does), plain ``LayerNorm`` otherwise,
    so that an fp32 model can be cast whole with ``model.to(torch.bfloat16)`` or ``.half()``. Both compute
    the same in fp32.
    """
    act_layer = quick_gelu_layer() if quick_gelu else nn.GELU
    return MCtTextEncoder(
        embed_dim, MCtCfg.from_text_cfg(text_cfg), act_layer=act_layer, norm_layer=text_norm_layer(cast_dtype)
    )
