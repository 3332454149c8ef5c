"""FastViT-MCi: the MobileCLIP and MobileCLIP2 image encoders ``fastvit_mci0`` .. ``fastvit_mci4``.

Papers:
    * `FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization`
      - https://arxiv.org/abs/2303.14189
    * `MobileCLIP: Fast Image-Text Models through Multi-Modal Reinforced Training`
      - https://arxiv.org/abs/2311.17049
    * `MobileCLIP2: Improving Multi-Modal Reinforced Training` - https://arxiv.org/abs/2508.20691

Source: written to be interchangeable with ``timm/models/fastvit.py`` of timm 1.0.31 (Apache-2.0,
Ross Wightman), itself a port of https://github.com/apple/ml-fastvit (Copyright (C) 2023 Apple Inc.,
see the LICENSE there). The pretrained MobileCLIP weights are under Apple's ``apple-amlr`` licence,
as each pretrained cfg's ``license`` says.

Why this file exists: older timm lacks some or all of these names (0.9.x lacks them all and its FastViT
has no 5-stage layout, no SE in downsampling, no LayerNorm attention blocks), so we backfill them. The
modules here keep timm 1.0.31's module names, state_dict keys and numerics, so one checkpoint loads into
either, and they are built only from ``timm.layers`` / ``timm.models`` pieces whose signatures agree
from timm 0.9.16 on. Nothing is registered on import: ``mobileclip2.plugin`` registers the functions in
``BACKBONES`` for the names the installed timm does not define, and upstream wins everywhere else.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import (
    ClassifierHead,
    ConvNormAct,
    DropPath,
    LayerNorm2d,
    SqueezeExcite,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs

from ..compat.timm_layers import reset_classifier_head, take_indices
from . import APPLE_IMAGE_PREFIX, apple_release_source, rename

# A list, not a tuple: timm's ``register_model`` appends each registered name to it.
__all__ = ["FastVit", "BACKBONES", "fuse_bn", "identity_kernel"]


def _num_groups(group_size: int | None, channels: int) -> int:
    """timm's grouping convention: 0/None is a dense conv, otherwise ``channels // group_size`` groups."""
    if not group_size:
        return 1
    assert channels % group_size == 0, f"{channels} channels do not split into groups of {group_size}"
    return channels // group_size


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the bias-free conv ``kernel`` before it: (kernel, bias).

    The package's one BN-folding rule (reparameterization here and in text_mct, folding in inference).
    """
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    # The bias is written as timm writes it, so fused weights agree with timm's bit for bit.
    return kernel * t, bn.bias - bn.running_mean * bn.weight / std


def identity_kernel(
    channels: int, groups: int, kernel_size: tuple[int, int], like: torch.Tensor
) -> torch.Tensor:
    """Kernel of a grouped conv that returns its input unchanged: 1 at the centre tap of each channel."""
    in_per_group = channels // groups
    kernel = torch.zeros((channels, in_per_group, *kernel_size), dtype=like.dtype, device=like.device)
    index = torch.arange(channels, device=like.device)
    kernel[index, index % in_per_group, kernel_size[0] // 2, kernel_size[1] // 2] = 1
    return kernel


def _conv(
    in_chs: int,
    out_chs: int,
    kernel_size: int | tuple[int, int],
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> nn.Conv2d:
    """Biased conv padded like timm's ``create_conv2d`` for odd kernels: the form every fused block takes."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    return nn.Conv2d(in_chs, out_chs, (kh, kw), stride, padding, dilation, groups, bias=True)


def _fused_conv(
    weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Conv2d:
    """A conv holding already-fused (weight, bias), on their device and dtype."""
    out_chs, in_per_group, kh, kw = weight.shape
    conv = _conv(in_per_group * groups, out_chs, (kh, kw), stride, dilation, groups)
    conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


class MobileOneBlock(nn.Module):
    """MobileOne block: parallel conv+BN branches while training, a single conv after ``reparameterize()``.

    `An Improved One millisecond Mobile Backbone` - https://arxiv.org/abs/2206.04040
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        group_size: int = 0,
        inference_mode: bool = False,
        use_se: bool = False,
        use_act: bool = True,
        use_scale_branch: bool = True,
        num_conv_branches: int = 1,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.inference_mode = inference_mode
        self.groups = _num_groups(group_size, in_chs)
        self.stride = stride
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.num_conv_branches = num_conv_branches

        # Module creation order follows timm so that the same seed gives the same initial weights.
        self.se = SqueezeExcite(out_chs, rd_divisor=1) if use_se else nn.Identity()
        self.reparam_conv = None
        self.identity = None
        self.conv_kxk = None
        self.conv_scale = None
        if inference_mode:
            self.reparam_conv = _conv(in_chs, out_chs, kernel_size, stride, dilation, self.groups)
        else:
            if out_chs == in_chs and stride == 1:
                self.identity = nn.BatchNorm2d(in_chs)
            if num_conv_branches > 0:
                self.conv_kxk = nn.ModuleList([self._conv_bn(kernel_size) for _ in range(num_conv_branches)])
            if kernel_size > 1 and use_scale_branch:
                self.conv_scale = self._conv_bn(1)
        self.act = act_layer() if use_act else nn.Identity()

    def _conv_bn(self, kernel_size: int) -> ConvNormAct:
        return ConvNormAct(
            self.in_chs,
            self.out_chs,
            kernel_size=kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
            apply_act=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        # Sum in timm's order (scale + identity, then each kxk branch) so the float rounding matches too.
        identity_out = self.identity(x) if self.identity is not None else 0
        scale_out = self.conv_scale(x) if self.conv_scale is not None else 0
        out = scale_out + identity_out
        if self.conv_kxk is not None:
            for branch in self.conv_kxk:
                out += branch(x)
        return self.act(self.se(out))

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (kernel, bias) of the one conv equal to all branches (eval-mode BN statistics)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel_scale, bias_scale = 0, 0
        if self.conv_scale is not None:
            kernel_scale, bias_scale = fuse_bn(self.conv_scale.conv.weight, self.conv_scale.bn)
            pad = self.kernel_size // 2
            kernel_scale = F.pad(kernel_scale, [pad, pad, pad, pad])
        kernel_identity, bias_identity = 0, 0
        if self.identity is not None:
            eye = identity_kernel(
                self.in_chs, self.groups, (self.kernel_size, self.kernel_size), self.identity.weight
            )
            kernel_identity, bias_identity = fuse_bn(eye, self.identity)
        kernel_conv, bias_conv = 0, 0
        if self.conv_kxk is not None:
            for branch in self.conv_kxk:
                kernel, bias = fuse_bn(branch.conv.weight, branch.bn)
                kernel_conv += kernel
                bias_conv += bias
        return kernel_conv + kernel_scale + kernel_identity, bias_conv + bias_scale + bias_identity

    def reparameterize(self) -> None:
        """Replace the branches by one equivalent conv (RepVGG-style); a no-op once fused."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.get_kernel_bias()
        self.reparam_conv = _fused_conv(kernel, bias, self.stride, self.dilation, self.groups)
        self.identity = self.conv_kxk = self.conv_scale = None
        self.inference_mode = True


class ReparamLargeKernelConv(nn.Module):
    """Large-kernel conv with a parallel small-kernel branch, fused into one conv for inference.

    `Scaling Up Your Kernels to 31x31 (RepLKNet)` - https://arxiv.org/abs/2203.06717
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        group_size: int,
        small_kernel: int | None = None,
        use_se: bool = False,
        act_layer: type[nn.Module] | None = None,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.groups = _num_groups(group_size, in_chs)
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.reparam_conv = None
        self.large_conv = None
        self.small_conv = None
        if inference_mode:
            self.reparam_conv = _conv(in_chs, out_chs, kernel_size, stride, groups=self.groups)
        else:
            self.large_conv = self._conv_bn(kernel_size)
            if small_kernel is not None:
                assert small_kernel <= kernel_size, "the small kernel cannot be larger than the large one"
                self.small_conv = self._conv_bn(small_kernel)
        self.se = SqueezeExcite(out_chs, rd_ratio=0.25) if use_se else nn.Identity()
        # MobileCLIP applies this act (``lkc_use_act``); the original FastViT built it but never used it.
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def _conv_bn(self, kernel_size: int) -> ConvNormAct:
        return ConvNormAct(
            self.in_chs,
            self.out_chs,
            kernel_size=kernel_size,
            stride=self.stride,
            groups=self.groups,
            apply_act=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.large_conv(x)
            if self.small_conv is not None:
                out = out + self.small_conv(x)
        return self.act(self.se(out))

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (kernel, bias) of the one conv equal to both branches (eval-mode BN statistics)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel, bias = fuse_bn(self.large_conv.conv.weight, self.large_conv.bn)
        if self.small_conv is not None:
            small_kernel, small_bias = fuse_bn(self.small_conv.conv.weight, self.small_conv.bn)
            bias = bias + small_bias
            kernel = kernel + F.pad(small_kernel, [(self.kernel_size - self.small_kernel) // 2] * 4)
        return kernel, bias

    def reparameterize(self) -> None:
        """Replace both branches by one equivalent conv; a no-op once fused."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.get_kernel_bias()
        self.reparam_conv = _fused_conv(kernel, bias, self.stride, groups=self.groups)
        self.large_conv = self.small_conv = None


def convolutional_stem(
    in_chs: int,
    out_chs: int,
    act_layer: type[nn.Module] = nn.GELU,
    inference_mode: bool = False,
    use_scale_branch: bool = True,
) -> nn.Sequential:
    """Stride-4 stem of three MobileOne blocks: 3x3/2 dense, 3x3/2 depthwise, 1x1."""
    block = partial(
        MobileOneBlock, act_layer=act_layer, inference_mode=inference_mode, use_scale_branch=use_scale_branch
    )
    return nn.Sequential(
        block(in_chs, out_chs, kernel_size=3, stride=2),
        block(out_chs, out_chs, kernel_size=3, stride=2, group_size=1),
        block(out_chs, out_chs, kernel_size=1, stride=1),
    )


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of an NCHW feature map."""

    fused_attn: torch.jit.Final[bool]

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        assert dim % head_dim == 0, "dim should be divisible by head_dim"
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        x = x.flatten(2).transpose(-2, -1)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        x = self.proj_drop(self.proj(x))
        return x.transpose(-2, -1).reshape(B, C, H, W)


class PatchEmbed(nn.Module):
    """Downsampling between stages: a large-kernel strided conv, then a 1x1 MobileOne block."""

    def __init__(
        self,
        patch_size: int,
        stride: int,
        in_chs: int,
        embed_dim: int,
        act_layer: type[nn.Module] = nn.GELU,
        lkc_use_act: bool = False,
        use_se: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(
                in_chs,
                embed_dim,
                kernel_size=patch_size,
                stride=stride,
                group_size=1,
                small_kernel=3,
                use_se=use_se,
                act_layer=act_layer if lkc_use_act else None,
                inference_mode=inference_mode,
            ),
            MobileOneBlock(
                embed_dim, embed_dim, kernel_size=1, act_layer=act_layer, inference_mode=inference_mode
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LayerScale2d(nn.Module):
    """Per-channel learnable scale of a residual branch (NCHW)."""

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


class RepMixer(nn.Module):
    """Token mixer ``x + scale * (dwconv(x) - bn(x))``, fusable into a single depthwise conv."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        layer_scale_init_value: float | None = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.inference_mode = inference_mode
        self.reparam_conv = None
        self.norm = None
        self.mixer = None
        self.layer_scale = None
        if inference_mode:
            self.reparam_conv = _conv(dim, dim, kernel_size, groups=dim)
        else:
            self.norm = MobileOneBlock(
                dim,
                dim,
                kernel_size,
                group_size=1,
                use_act=False,
                use_scale_branch=False,
                num_conv_branches=0,
            )
            self.mixer = MobileOneBlock(dim, dim, kernel_size, group_size=1, use_act=False)
            if layer_scale_init_value is not None:
                self.layer_scale = LayerScale2d(dim, layer_scale_init_value)
            else:
                self.layer_scale = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    def reparameterize(self) -> None:
        """Fold the skip, mixer, norm and layer scale into one depthwise conv; a no-op once fused."""
        if self.reparam_conv is not None:
            return
        mixer_kernel, mixer_bias = self.mixer.get_kernel_bias()
        norm_kernel, norm_bias = self.norm.get_kernel_bias()
        eye = identity_kernel(self.dim, self.dim, (self.kernel_size, self.kernel_size), mixer_kernel)
        if isinstance(self.layer_scale, LayerScale2d):
            gamma = self.layer_scale.gamma
            kernel = eye + gamma.unsqueeze(-1) * (mixer_kernel - norm_kernel)
            bias = torch.squeeze(gamma) * (mixer_bias - norm_bias)
        else:
            kernel = eye + mixer_kernel - norm_kernel
            bias = mixer_bias - norm_bias
        self.reparam_conv = _fused_conv(kernel, bias, groups=self.dim)
        self.mixer = self.norm = self.layer_scale = None
        self.inference_mode = True


class ConvMlp(nn.Module):
    """Convolutional FFN: 7x7 depthwise conv + BN, then a 1x1 expand / GELU / 1x1 project MLP."""

    def __init__(
        self,
        in_chs: int,
        hidden_channels: int | None = None,
        out_chs: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_chs = out_chs or in_chs
        hidden_channels = hidden_channels or in_chs
        self.conv = ConvNormAct(in_chs, out_chs, kernel_size=7, groups=in_chs, apply_act=False)
        self.fc1 = nn.Conv2d(in_chs, hidden_channels, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_channels, out_chs, kernel_size=1)
        self.drop = nn.Dropout(drop)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class RepConditionalPosEnc(nn.Module):
    """Conditional positional encoding ``x + dwconv(x)``, fusable into the conv alone.

    `Conditional Positional Encodings for Vision Transformers` - https://arxiv.org/abs/2102.10882
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        spatial_shape: int | tuple[int, int] = (7, 7),
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(spatial_shape, int):
            spatial_shape = (spatial_shape, spatial_shape)
        assert len(spatial_shape) == 2, f"spatial_shape must have 2 entries, got {spatial_shape}"
        self.spatial_shape = tuple(spatial_shape)
        self.dim = dim
        self.dim_out = dim_out or dim
        self.groups = dim
        self.reparam_conv = None
        self.pos_enc = None
        conv = _conv(dim, self.dim_out, self.spatial_shape, groups=dim)
        if inference_mode:
            self.reparam_conv = conv
        else:
            self.pos_enc = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return self.pos_enc(x) + x

    def reparameterize(self) -> None:
        """Fold the skip connection into the conv; a no-op once fused."""
        if self.reparam_conv is not None:
            return
        weight = self.pos_enc.weight
        eye = identity_kernel(self.dim, self.groups, self.spatial_shape, weight)
        self.reparam_conv = _fused_conv(eye + weight, self.pos_enc.bias, groups=self.groups)
        self.pos_enc = None


class RepMixerBlock(nn.Module):
    """MetaFormer block with RepMixer as token mixer and a conv MLP."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.token_mixer = RepMixer(
            dim,
            kernel_size=kernel_size,
            layer_scale_init_value=layer_scale_init_value,
            inference_mode=inference_mode,
        )
        self.mlp = ConvMlp(dim, hidden_channels=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        if layer_scale_init_value is not None:
            self.layer_scale = LayerScale2d(dim, layer_scale_init_value)
        else:
            self.layer_scale = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.layer_scale(self.mlp(x)))


class AttentionBlock(nn.Module):
    """MetaFormer block with self-attention as token mixer and a conv MLP."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
    ) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        self.token_mixer = Attention(dim=dim)
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale2d(dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = ConvMlp(dim, hidden_channels=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        if layer_scale_init_value is not None:
            self.layer_scale_2 = LayerScale2d(dim, layer_scale_init_value)
        else:
            self.layer_scale_2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.layer_scale_1(self.token_mixer(self.norm(x))))
        return x + self.drop_path2(self.layer_scale_2(self.mlp(x)))


class FastVitStage(nn.Module):
    """One stage: optional downsampling, optional conditional positional encoding, then blocks."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        token_mixer_type: str,
        downsample: bool = True,
        se_downsample: bool = False,
        down_patch_size: int = 7,
        down_stride: int = 2,
        pos_emb_layer: type[nn.Module] | None = None,
        kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        proj_drop_rate: float = 0.0,
        drop_path_rate: list[float] | float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        lkc_use_act: bool = False,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        if downsample:
            self.downsample = PatchEmbed(
                patch_size=down_patch_size,
                stride=down_stride,
                in_chs=dim,
                embed_dim=dim_out,
                use_se=se_downsample,
                act_layer=act_layer,
                lkc_use_act=lkc_use_act,
                inference_mode=inference_mode,
            )
        else:
            assert dim == dim_out, "a stage without downsampling cannot change the width"
            self.downsample = nn.Identity()
        if pos_emb_layer is not None:
            self.pos_emb = pos_emb_layer(dim_out, inference_mode=inference_mode)
        else:
            self.pos_emb = nn.Identity()

        if not isinstance(drop_path_rate, (list, tuple)):
            drop_path_rate = [drop_path_rate] * depth
        blocks = []
        for block_idx in range(depth):
            if token_mixer_type == "repmixer":
                block = RepMixerBlock(
                    dim_out,
                    kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio,
                    act_layer=act_layer,
                    proj_drop=proj_drop_rate,
                    drop_path=drop_path_rate[block_idx],
                    layer_scale_init_value=layer_scale_init_value,
                    inference_mode=inference_mode,
                )
            elif token_mixer_type == "attention":
                block = AttentionBlock(
                    dim_out,
                    mlp_ratio=mlp_ratio,
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    proj_drop=proj_drop_rate,
                    drop_path=drop_path_rate[block_idx],
                    layer_scale_init_value=layer_scale_init_value,
                )
            else:
                raise ValueError(f"token mixer {token_mixer_type!r} is not one of 'repmixer', 'attention'")
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_emb(self.downsample(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class FastVit(nn.Module):
    """FastViT / MobileCLIP MCi image encoder with timm's classification-model interface.

    Same arguments as timm's ``FastVit`` except ``fork_feat`` (dense-prediction outputs), which the
    MobileCLIP models never use; use ``features_only=True`` or ``forward_intermediates`` instead.
    """

    def __init__(
        self,
        in_chans: int = 3,
        layers: tuple[int, ...] = (2, 2, 6, 2),
        token_mixers: tuple[str, ...] = ("repmixer", "repmixer", "repmixer", "repmixer"),
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        mlp_ratios: tuple[float, ...] = (4,) * 4,
        downsamples: tuple[bool, ...] = (False, True, True, True),
        se_downsamples: tuple[bool, ...] = (False, False, False, False),
        repmixer_kernel_size: int = 3,
        num_classes: int = 1000,
        pos_embs: tuple[type[nn.Module] | None, ...] = (None,) * 4,
        down_patch_size: int = 7,
        down_stride: int = 2,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        lkc_use_act: bool = False,
        stem_use_scale_branch: bool = True,
        cls_ratio: float = 2.0,
        global_pool: str = "avg",
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.GELU,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.feature_info = []

        self.stem = convolutional_stem(
            in_chans, embed_dims[0], act_layer, inference_mode, use_scale_branch=stem_use_scale_branch
        )

        prev_dim = embed_dims[0]
        scale = 1
        # Stochastic depth grows linearly over all blocks of all stages.
        dpr = [
            r.tolist()
            for r in torch.linspace(0, drop_path_rate, sum(layers), device="cpu").split(list(layers))
        ]
        stages = []
        for i in range(len(layers)):
            downsample = downsamples[i] or prev_dim != embed_dims[i]
            stages.append(
                FastVitStage(
                    dim=prev_dim,
                    dim_out=embed_dims[i],
                    depth=layers[i],
                    downsample=downsample,
                    se_downsample=se_downsamples[i],
                    down_patch_size=down_patch_size,
                    down_stride=down_stride,
                    pos_emb_layer=pos_embs[i],
                    token_mixer_type=token_mixers[i],
                    kernel_size=repmixer_kernel_size,
                    mlp_ratio=mlp_ratios[i],
                    act_layer=act_layer,
                    norm_layer=norm_layer,
                    proj_drop_rate=proj_drop_rate,
                    drop_path_rate=dpr[i],
                    layer_scale_init_value=layer_scale_init_value,
                    lkc_use_act=lkc_use_act,
                    inference_mode=inference_mode,
                )
            )
            prev_dim = embed_dims[i]
            if downsample:
                scale *= 2
            self.feature_info += [dict(num_chs=prev_dim, reduction=4 * scale, module=f"stages.{i}")]
        self.stages = nn.Sequential(*stages)
        self.num_stages = len(self.stages)

        self.num_features = self.head_hidden_size = final_features = int(embed_dims[-1] * cls_ratio)
        self.final_conv = MobileOneBlock(
            embed_dims[-1],
            final_features,
            kernel_size=3,
            group_size=1,
            inference_mode=inference_mode,
            use_se=True,
            act_layer=act_layer,
        )
        self.head = ClassifierHead(final_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+).downsample", (0,)),
                (r"^stages\.(\d+).pos_emb", (0,)),
                (r"^stages\.(\d+)\.\w+\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        reset_classifier_head(self.head, num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs at ``indices`` (None: all, int n: last n, list: those), as timm's models return.

        ``norm`` is accepted for API parity; FastViT has no norm after its stages.
        """
        assert output_fmt == "NCHW", "output_fmt must be NCHW"
        take_indices_, max_index = take_indices(self.num_stages, indices)
        stages = self.stages[: max_index + 1] if stop_early and not torch.jit.is_scripting() else self.stages
        intermediates = []
        x = self.stem(x)
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices_:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if feat_idx == self.num_stages - 1:
            x = self.final_conv(x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_TIMM_SENTINEL = "stem.0.conv_kxk.0.conv.weight"

# Apple's original layout of the MCi trunk (apple/ml-mobileclip, mobileclip/models/mci.py): the
# FastViT paper code's branch names, applied in order to a key without APPLE_IMAGE_PREFIX, and one
# flat ``network`` list of stages and downsamplings, split into timm's stages by _timm_stage_key.
_APPLE_RENAMES = (
    ("patch_embed.", "stem."),
    ("rbr_conv.", "conv_kxk."),
    ("rbr_scale.", "conv_scale."),
    ("rbr_skip.", "identity."),
    ("conv_exp.", "final_conv."),
    ("lkb_origin.", "large_conv."),
    ("convffn.", "mlp."),
    ("se.reduce.", "se.fc1."),
    ("se.expand.", "se.fc2."),
)


def layer_scale_key(key: str) -> str:
    """Apple stores layer scales as bare parameters; timm's LayerScale2d modules hold ``.gamma``."""
    key = re.sub(r"layer_scale_([0-9])$", r"layer_scale_\1.gamma", key)
    return key + ".gamma" if key.endswith("layer_scale") else key


def _stage_ends(keys: Iterable[str]) -> list[int]:
    """Indices of the downsampling PatchEmbeds in the flat ``network`` list: the stage boundaries."""
    return sorted(
        {int(match.group(1)) for key in keys if (match := re.match(r"network\.(\d+)\.proj\.", key))}
    )


def _timm_stage_key(key: str, stage_ends: list[int]) -> str:
    """``network.N.*`` -> ``stages.S.{downsample,pos_emb,blocks}.*``."""
    match = re.match(r"network\.(\d+)\.(.*)$", key)
    if match is None:
        return key
    index, rest = int(match.group(1)), match.group(2)
    stage = f"stages.{bisect.bisect_right(stage_ends, index)}"
    if rest.startswith("proj."):
        return f"{stage}.downsample.{rest}"
    if rest.startswith("pe."):
        return f"{stage}.pos_emb.pos_enc.{rest[len('pe.') :]}"
    return f"{stage}.blocks.{rest}"


def from_apple_layout(trunk: Mapping[str, torch.Tensor]) -> dict[str, tuple[str | None, torch.Tensor]]:
    """Apple's MCi trunk (keys without APPLE_IMAGE_PREFIX) under timm's names: new key -> (Apple's key,
    or None for a tensor Apple's layout lacks, tensor). Reproduces timm 1.0.31's
    ``fastvit.checkpoint_filter_fn`` for MobileCLIP checkpoints (tests/test_convert.py)."""
    stage_ends = _stage_ends(trunk)
    out: dict[str, tuple[str | None, torch.Tensor]] = {}
    for key, value in trunk.items():
        if key == "head.proj":  # GlobalPool2D projection [C, D] -> the timm head's Linear, zero bias
            out["head.fc.weight"] = (key, value.T)
            out["head.fc.bias"] = (None, torch.zeros(value.shape[1], dtype=value.dtype))
            continue
        out[_timm_stage_key(layer_scale_key(rename(key, _APPLE_RENAMES)), stage_ends)] = (key, value)
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Accept timm-layout weights, bare or as the image trunk inside an OpenCLIP checkpoint, and
    Apple's original MobileCLIP layout (as timm's own filter does)."""
    state_dict = state_dict.get("state_dict", state_dict)
    if _TIMM_SENTINEL in state_dict:
        return state_dict
    for prefix in ("module.visual.trunk.", "visual.trunk."):
        if prefix + _TIMM_SENTINEL in state_dict:
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if any(key.startswith(APPLE_IMAGE_PREFIX) for key in state_dict):
        trunk = {
            k[len(APPLE_IMAGE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(APPLE_IMAGE_PREFIX)
        }
        return {key: value for key, (_, value) in from_apple_layout(trunk).items()}
    raise ValueError(
        f"Checkpoint is neither in timm's FastViT layout (no {_TIMM_SENTINEL!r}) nor Apple's MobileCLIP "
        f"layout ({APPLE_IMAGE_PREFIX}*): load the timm hf-hub weights or an Apple MobileCLIP checkpoint."
    )


def _create_fastvit(variant: str, pretrained: bool = False, **kwargs) -> FastVit:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))  # timm's default, also for 5 stages
    return build_model_with_cfg(
        FastVit,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _mobileclip_args(layers: tuple[int, ...], embed_dims: tuple[int, ...]) -> dict:
    """The MobileCLIP towers (4 stages): RepMixer in stages 1-3, attention behind a RepCPE in the
    last, MLP ratio 3, SE in the last two downsamplings."""
    cpe = partial(RepConditionalPosEnc, spatial_shape=(7, 7))
    return dict(
        layers=layers,
        embed_dims=embed_dims,
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        pos_embs=(None, None, None, cpe),
        mlp_ratios=(3,) * 4,
        se_downsamples=(False, False, True, True),
        lkc_use_act=True,
    )


def _mobileclip2_args(layers: tuple[int, ...], embed_dims: tuple[int, ...]) -> dict:
    """MobileCLIP2-S3/S4 (5 stages): attention behind a RepCPE in the last two stages with
    LayerNorm2d before it, MLP ratio 4, no SE, no scale branch in the stem."""
    cpe = partial(RepConditionalPosEnc, spatial_shape=(7, 7))
    return dict(
        layers=layers,
        embed_dims=embed_dims,
        token_mixers=("repmixer",) * 3 + ("attention",) * 2,
        pos_embs=(None, None, None, cpe, cpe),
        mlp_ratios=(4,) * 5,
        se_downsamples=(False,) * 5,
        downsamples=(False,) + (True,) * 4,
        norm_layer=partial(LayerNorm2d, eps=1e-5),
        stem_use_scale_branch=False,
        lkc_use_act=True,
    )


# Pretrained cfgs as data. Every MCi tag is a CLIP image tower (its "classes" are the embedding
# width); timm 1.0.31 lists the same tags in the same order (the first tag with weights is a name's
# default), which tests/test_backbones.py checks.
_TAG_BASE = dict(
    input_size=(3, 256, 256), interpolation="bicubic", classifier="head.fc", license="apple-amlr"
)
# MobileCLIP2-S3/S4 were trained with OpenAI CLIP's mean/std and have a wider head.
_MOBILECLIP_TAG = dict(
    num_classes=512,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    pool_size=(8, 8),
    first_conv=("stem.0.conv_kxk.0.conv", "stem.0.conv_scale.conv"),
)
_MOBILECLIP2_TAG = dict(
    num_classes=768,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    pool_size=(4, 4),
    first_conv="stem.0.conv_kxk.0.conv",
)
default_cfgs = generate_default_cfgs(
    {
        f"{variant}.{tag}": {
            **_TAG_BASE,
            **generation,
            **apple_release_source(release, hub_id),
            "crop_pct": crop,
        }
        for variant, tag, generation, crop, release, hub_id in (
            (
                "fastvit_mci0",
                "apple_mclip",
                _MOBILECLIP_TAG,
                0.95,
                "mobileclip_s0",
                "apple/mobileclip_s0_timm",
            ),
            (
                "fastvit_mci1",
                "apple_mclip",
                _MOBILECLIP_TAG,
                0.95,
                "mobileclip_s1",
                "apple/mobileclip_s1_timm",
            ),
            (
                "fastvit_mci2",
                "apple_mclip",
                _MOBILECLIP_TAG,
                0.95,
                "mobileclip_s2",
                "apple/mobileclip_s2_timm",
            ),
            ("fastvit_mci0", "apple_mclip2_dfndr2b", _MOBILECLIP_TAG, 1.0, None, "timm/"),
            ("fastvit_mci2", "apple_mclip2_dfndr2b", _MOBILECLIP_TAG, 0.95, None, "timm/"),
            ("fastvit_mci3", "apple_mclip2_dfndr2b", _MOBILECLIP2_TAG, 0.95, None, "timm/"),
            ("fastvit_mci4", "apple_mclip2_dfndr2b", _MOBILECLIP2_TAG, 0.95, None, "timm/"),
        )
    }
)


# Undecorated on purpose: registering at import would shadow timm's own definitions; the plugin
# registers them for the names the installed timm lacks.
def fastvit_mci0(pretrained: bool = False, **kwargs) -> FastVit:
    """MobileCLIP-S0 / MobileCLIP2-S0 image encoder."""
    model_args = _mobileclip_args(layers=(2, 6, 10, 2), embed_dims=(64, 128, 256, 512))
    return _create_fastvit("fastvit_mci0", pretrained, **dict(model_args, **kwargs))


def fastvit_mci1(pretrained: bool = False, **kwargs) -> FastVit:
    """MobileCLIP-S1 image encoder."""
    model_args = _mobileclip_args(layers=(4, 12, 20, 4), embed_dims=(64, 128, 256, 512))
    return _create_fastvit("fastvit_mci1", pretrained, **dict(model_args, **kwargs))


def fastvit_mci2(pretrained: bool = False, **kwargs) -> FastVit:
    """MobileCLIP-S2 / MobileCLIP2-S2 image encoder."""
    model_args = _mobileclip_args(layers=(4, 12, 24, 4), embed_dims=(80, 160, 320, 640))
    return _create_fastvit("fastvit_mci2", pretrained, **dict(model_args, **kwargs))


def fastvit_mci3(pretrained: bool = False, **kwargs) -> FastVit:
    """MobileCLIP2-S3 image encoder."""
    model_args = _mobileclip2_args(layers=(2, 12, 24, 4, 2), embed_dims=(96, 192, 384, 768, 1536))
    return _create_fastvit("fastvit_mci3", pretrained, **dict(model_args, **kwargs))


def fastvit_mci4(pretrained: bool = False, **kwargs) -> FastVit:
    """MobileCLIP2-S4 image encoder."""
    model_args = _mobileclip2_args(layers=(2, 12, 24, 4, 4), embed_dims=(128, 256, 512, 1024, 2048))
    return _create_fastvit("fastvit_mci4", pretrained, **dict(model_args, **kwargs))


BACKBONES = (fastvit_mci0, fastvit_mci1, fastvit_mci2, fastvit_mci3, fastvit_mci4)
