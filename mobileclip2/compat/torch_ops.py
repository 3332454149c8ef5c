"""torch internals that mobileclip2.optimize and the benchmarks use, in one place.

Versions handled: torch 2.1 - 2.14 (checked on 2.14.1 CPU here and 2.11 CUDA on the GPU
benchmark machine), open_clip_torch 2.24 - 3.3.

* ``torch.ops.mkldnn._convolution_pointwise`` / ``_linear_pointwise`` (+ ``.binary``) and
  ``_reorder_convolution_weight`` / ``_reorder_linear_weight``: the oneDNN ops inductor emits for
  CPU (present since torch 2.0, private, so looked up here and smoke-tested before use).
* ``nn.MultiheadAttention._qkv_same_embed_dim``: whether q, k and v share one ``in_proj_weight``
  (private attribute, stable since torch 1.x).
* ``torch.backends.mha.{get,set}_fastpath_enabled`` (torch >= 2.1): the fused MHA inference
  kernel the FLOP counter cannot see inside.
* open_clip's ``Transformer.get_cast_dtype()`` asks ``resblocks[0].get_weight_dtype()``: a block
  that replaces open_clip's ``ResidualAttentionBlock`` must answer it (``WEIGHT_DTYPE_METHOD``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "WEIGHT_DTYPE_METHOD",
    "mha_fastpath_disabled",
    "mha_packed_qkv",
    "onednn_conv",
    "onednn_conv_add",
    "onednn_linear",
    "onednn_linear_add",
    "onednn_ops_present",
    "reorder_conv_weight",
    "reorder_linear_weight",
]

# open_clip (2.24 - 3.3) Transformer.get_cast_dtype() calls this method on its first block.
WEIGHT_DTYPE_METHOD = "get_weight_dtype"

_ONEDNN_OPS = (
    "_convolution_pointwise",
    "_linear_pointwise",
    "_reorder_convolution_weight",
    "_reorder_linear_weight",
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
