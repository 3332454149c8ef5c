"""torch internals that mobileclip2.optimize and the benchmarks use, in one place.

Versions handled: torch 2.1 - 2.14 (checked on 2.14.1 CPU here and 2.11 CUDA on the GPU
benchmark machine), open_clip_torch 2.24 - 3.3 and main (4.2.0.dev0).

* ``torch.ops.mkldnn._convolution_pointwise`` / ``_linear_pointwise`` (+ ``.binary``) and
  ``_reorder_convolution_weight`` / ``_reorder_linear_weight``: the oneDNN ops inductor emits for
  CPU (present since torch 2.0, private, so looked up here and smoke-tested before use).
* ``nn.MultiheadAttention._qkv_same_embed_dim``: whether q, k and v share one ``in_proj_weight``
  (private attribute, stable since torch 1.x).
* ``torch.backends.mha.{get,set}_fastpath_enabled`` (torch >= 2.1): the fused MHA inference
  kernel the FLOP counter cannot see inside.
* open_clip's ``Transformer.get_cast_dtype()`` asks ``resblocks[0].get_weight_dtype()``: a block
  that replaces open_clip's ``ResidualAttentionBlock`` must answer it (``WEIGHT_DTYPE_METHOD``).
* Self-attention modules: open_clip <= 3.3 blocks hold ``nn.MultiheadAttention``; open_clip main holds its
  own ``open_clip.transformer.Attention`` (``F.scaled_dot_product_attention``) with the same parameter
  names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``, ``num_heads``). :func:`plain_self_attention`
  recognises both by their parts, not their class.
* ``torch.distributed._composable.checkpoint`` (private module, torch >= 2.1): the per-block activation
  checkpointing open_clip main asks text towers for with ``set_grad_checkpointing(impl="composable")``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ._common import Internal

__all__ = [
    "WEIGHT_DTYPE_METHOD",
    "composable_checkpoint",
    "mha_fastpath_disabled",
    "mha_packed_qkv",
    "plain_self_attention",
    "onednn_conv",
    "onednn_conv_add",
    "onednn_linear",
    "onednn_linear_add",
    "onednn_ops_present",
    "reorder_conv_weight",
    "reorder_linear_weight",
]

# open_clip (2.24 - main) Transformer.get_cast_dtype() calls this method on its first block.
WEIGHT_DTYPE_METHOD = "get_weight_dtype"

_ONEDNN_OPS = (
    "_convolution_pointwise",
    "_linear_pointwise",
    "_reorder_convolution_weight",
    "_reorder_linear_weight",
)

OPTIMIZE = "optimize (oneDNN)"
INTERNALS = (
    *(
        Internal(
            f"torch.ops.mkldnn.{name}",
            "private operator",
            OPTIMIZE,
            "torch 2.0 - 2.14",
            "oneDNN kernels with prepacked weights and fused activation / residual add; smoke-tested "
            "before use, optimize runs plain torch without them",
            "inference.onednn",
        )
        for name in _ONEDNN_OPS
    ),
    Internal(
        "torch.nn.MultiheadAttention._qkv_same_embed_dim",
        "private attribute",
        OPTIMIZE,
        "torch 1.x - 2.14",
        "whether q, k, v share one in_proj_weight (the oneDNN attention block needs that)",
        "inference.onednn",
    ),
    Internal(
        "open_clip.transformer.Attention",
        "class layout",
        OPTIMIZE,
        "main (4.x) only",
        "open_clip main's attention, recognised by its parts (in_proj_weight, num_heads, out_proj; "
        "inactive ln_q / ln_k / ln_inner, logit_scale, head_scale)",
        "inference.onednn, inference.fold",
    ),
    Internal(
        "open_clip.transformer.Transformer.get_cast_dtype",
        "calling convention",
        OPTIMIZE,
        "2.24.0 - main",
        "asks resblocks[0].get_weight_dtype(): our replacement blocks answer it",
        "inference.onednn",
    ),
    Internal(
        "torch.distributed._composable.checkpoint",
        "private module",
        "MCt grad checkpointing with impl='composable' (open_clip_train main, FSDP2)",
        "torch 2.1 - 2.14",
        "per-block activation checkpointing when open_clip main asks a text tower for it",
        "models.text_mct",
    ),
)


@functools.lru_cache(maxsize=1)
def onednn_ops_present() -> bool:
    """True when this torch build registers the oneDNN ops (x86/ARM CPU builds with mkldnn)."""
    if not torch.backends.mkldnn.is_available():
        return False
    return all(hasattr(torch.ops.mkldnn, name) for name in _ONEDNN_OPS)


def reorder_conv_weight(
    weight: torch.Tensor,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
    input_size: list[int] | None,
) -> torch.Tensor:
    """The conv weight in oneDNN's blocked layout, chosen for ``input_size`` (None: oneDNN's guess)."""
    return torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups, input_size)


def reorder_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def onednn_conv(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
    unary: str,
    algorithm: str | None,
) -> torch.Tensor:
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed_weight, bias, padding, stride, dilation, groups, unary, [], algorithm
    )


def onednn_conv_add(
    x: torch.Tensor,
    residual: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """``residual + conv(x)`` in one oneDNN call (binary post-op, no activation)."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, residual, packed_weight, bias, padding, stride, dilation, groups, "add", None, None, [], None
    )


def onednn_linear(
    rows: torch.Tensor,
    packed_weight: torch.Tensor,
    bias: torch.Tensor | None,
    unary: str,
    algorithm: str | None,
) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(rows, packed_weight, bias, unary, [], algorithm)


def onednn_linear_add(
    rows: torch.Tensor, residual: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``residual + rows @ W.T + bias`` in one oneDNN call (binary post-op)."""
    return torch.ops.mkldnn._linear_pointwise.binary(rows, residual, packed_weight, bias, "add")


def mha_packed_qkv(mha: nn.MultiheadAttention) -> bool:
    """Whether q, k, v projections live in one ``in_proj_weight`` (self-attention layout)."""
    return bool(getattr(mha, "_qkv_same_embed_dim", False))


# Parts of open_clip main's Attention that must be inactive for it to compute what a plain packed-qkv
# nn.MultiheadAttention computes (identity norms; no cosine scaling, head scaling or separate q/k/v).
_PLAIN_ATTENTION_IDENTITIES = ("ln_q", "ln_k", "ln_inner")
_PLAIN_ATTENTION_NONE = ("logit_scale", "head_scale", "q_proj_weight")


def plain_self_attention(attn: nn.Module) -> bool:
    """Whether ``attn`` is batch-first packed-qkv softmax attention ``out_proj(sdpa(x @ W_qkv.T + b))``.

    Accepts nn.MultiheadAttention (open_clip <= 3.3) and open_clip main's ``Attention``, by its parts.
    """
    if isinstance(attn, nn.MultiheadAttention):
        return bool(
            attn.batch_first
            and mha_packed_qkv(attn)
            and attn.bias_k is None
            and not attn.add_zero_attn
            and isinstance(getattr(attn, "out_proj", None), nn.Linear)
        )
    weight = getattr(attn, "in_proj_weight", None)
    return bool(
        isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[0] == 3 * weight.shape[1]
        and isinstance(getattr(attn, "num_heads", None), int)
        and getattr(attn, "batch_first", True)
        and isinstance(getattr(attn, "out_proj", None), nn.Linear)
        and all(
            isinstance(getattr(attn, name, nn.Identity()), nn.Identity)
            for name in _PLAIN_ATTENTION_IDENTITIES
        )
        and all(getattr(attn, name, None) is None for name in _PLAIN_ATTENTION_NONE)
        and not getattr(attn, "scaled_cosine", False)
    )


def composable_checkpoint(module: nn.Module) -> None:
    """Activation checkpointing of ``module`` in torch's composable (FSDP2-compatible) form."""
    from torch.distributed._composable import checkpoint

    checkpoint(module)


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Switch off nn.MultiheadAttention's fused inference kernel (FLOP counting and tracing cannot see
    through it; same math in plain ops). torch < 2.1 has no switch: nothing to do there."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):
        yield
        return
    previous = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(previous)
