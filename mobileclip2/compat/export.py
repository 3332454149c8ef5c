"""Upstream switches the exporters need.

Versions handled: torch 2.1 - 2.14.1, executorch 1.5.1.

* ``torch.backends.mha.set_fastpath_enabled`` (torch >= 2.1, our minimum): nn.MultiheadAttention's
  fused inference kernel (``aten::_native_multi_head_attention``) runs under ``no_grad`` and has no
  ONNX symbolic, no Core ML op and is invisible to FLOP counting; the text towers are exported with
  it off (same math, plain ops).
* ExecuTorch's XNNPACK threadpool size (``executorch.extension.pybindings.portable_lib.
  _unsafe_reset_threadpool``, executorch 1.5.1): must be set before a program is loaded; resetting
  it after a program ran crashed the process here.
"""

from __future__ import annotations

from ._common import Internal
from .torch_ops import mha_fastpath_disabled  # the one switch (also used for FLOP counting)

INTERNALS = (
    Internal(
        "executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool",
        "private function",
        "ExecuTorch export thread count",
        "executorch 1.5.1",
        "sizes XNNPACK's threadpool before a program is loaded",
        "export.executorch",
    ),
)

__all__ = ["mha_fastpath_disabled", "set_executorch_threads"]


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's CPU threadpool; call before loading a program (see module docstring)."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(threads))
