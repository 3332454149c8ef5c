"""LiteRT (formerly TensorFlow Lite): one fp32 ``.tflite`` per tower, for Android's LiteRT runtime.

Converter ``litert_torch.convert(module, (example,))`` -> ``.export(path)``; checked by running the
model in ``ai_edge_litert``'s interpreter. The text tower takes int32 token ids and keeps them int32
end to end (an int64 ``argmax``, the EOT pooling, does not legalize; torch's embedding and argmax
accept int32, so the traced graph has no int64 at all). Checked with litert-torch 0.10.0,
ai-edge-litert 2.3.0 and torch 2.14.1: a tiny CLIP exports with max abs diff < 1e-6.

Its own extra, ``pip install 'mobileclip2[litert]'``, not part of ``mobile``: litert-torch 0.10.0
pulls jax and transformers and pins older typing_extensions/anyio than the other exporters'
environment, so install it where that is acceptable.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ..compat.export import mha_fastpath_disabled
from ..errors import ExporterUnavailableError
from .parity import Runner


def write(module: nn.Module, example: torch.Tensor, path: str | os.PathLike, tower: str) -> None:
    """Convert ``module`` (batch 1; text tokens int32) to a ``.tflite`` flatbuffer at ``path``."""
    try:
        import litert_torch
    except ImportError as error:
        raise ExporterUnavailableError("litert", "litert-torch", "litert", error) from error
    with torch.no_grad(), mha_fastpath_disabled():
        litert_torch.convert(module.eval(), (example,)).export(str(path))


def load(path: str | os.PathLike, threads: int | None = None) -> Runner:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ExporterUnavailableError("litert", "ai-edge-litert", "litert", error) from error
    interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(inputs: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], inputs.astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return run
