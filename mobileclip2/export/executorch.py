"""ExecuTorch: one ``.pte`` program per tower, lowered to XNNPACK (Android and iOS CPU); fp32, or int8
by PT2E quantization with the XNNPACK quantizer.

Flow (executorch 1.5.1): ``torch.export.export`` -> ``to_edge_transform_and_lower(...,
partitioner=[XnnpackPartitioner()])`` -> ``.to_executorch()``; programs are checked by running them
through ``executorch.runtime``. Programs have a fixed batch of 1 (what a phone runs; a dynamic batch
would need an upper bound baked into the program).

int8 (:data:`INT8_RECIPES`, :func:`quantizer`): int8 symmetric per-channel weights for every linear
and convolution, and nothing else quantized: softmax, LayerNorm, the residual adds and the other
elementwise ops stay fp32.

- Text tower: **dynamic** activations (int8 per tensor, the range computed on every call), so no
  calibration can be unrepresentative. A static recipe fixes each activation's range from the
  calibration rows, and text activations depend on the caption's length: real captions are mostly
  identical padding tokens, whose first-block attention output and residual sum span about three times
  the range full-context random ids produce. Calibrated on such ids, static int8 reached a cosine of
  0.885 to fp32 on real captions (random-weight MobileCLIP2-S0); dynamic int8 reaches 0.9996 without
  calibration, at the same size as static (the int8 weights are the size) and about the same speed.
- Image tower: **static** activations (ranges calibrated on the calibration images), quantized only
  at linear and convolution inputs and outputs: image activations do not depend on a length, and
  on MobileCLIP2-S0 this matched quantizing every op the quantizer takes (adds, multiplies,
  concatenations) in cosine, size and speed while keeping those ops in float.

The token embedding table of the text tower stays fp32 (a gather, not a matmul), which is why the
int8 text program is about half the fp32 size rather than a quarter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compat.export import mha_fastpath_disabled, set_executorch_threads
from ..errors import ExporterUnavailableError
from .parity import Runner


def _lower(exported: torch.export.ExportedProgram, path: Path) -> None:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as error:
        raise ExporterUnavailableError("executorch", "executorch", "mobile", error) from error
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(path).write_bytes(program.buffer)


def write(module: nn.Module, example: torch.Tensor, path: str | os.PathLike, tower: str) -> None:
    """Write ``module`` as an XNNPACK-lowered fp32 program taking a batch of 1."""
    _lower_check()
    with torch.no_grad(), mha_fastpath_disabled():
        _lower(torch.export.export(module.eval(), (example,)), Path(path))


DYNAMIC_TOWERS = ("text",)
"""Towers whose int8 activations are quantized per call (module docstring); the others are calibrated."""

INT8_RECIPES: dict[str, dict[str, Any]] = {
    "image": {
        "quantizer": "XNNPACKQuantizer (PT2E)",
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 per tensor, static: ranges calibrated on the calibration images",
        "quantized_ops": ["linear", "conv2d"],
        "float_ops": "all others (softmax, LayerNorm, adds, multiplies, ...)",
    },
    "text": {
        "quantizer": "XNNPACKQuantizer (PT2E)",
        "weights": "int8 symmetric, per output channel",
        "activations": "int8 per tensor, dynamic: range computed on every call (no calibration)",
        "quantized_ops": ["linear", "conv"],
        "float_ops": "all others (token embedding, softmax, LayerNorm, adds, ...)",
    },
}
"""What each tower's int8 program quantizes (recorded in the sidecar; why: module docstring)."""


def quantizer(tower: str):
    """The XNNPACK quantizer of ``tower``'s :data:`INT8_RECIPES` entry."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    if tower in DYNAMIC_TOWERS:
        dynamic = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        return XNNPACKQuantizer().set_global(dynamic)  # dynamic patterns: linear and convolution only
    static = get_symmetric_quantization_config(is_per_channel=True)
    return (
        XNNPACKQuantizer()
        .set_operator_type(torch.ops.aten.linear.default, static)
        .set_operator_type(torch.ops.aten.conv2d.default, static)
    )


def quantized(
    module: nn.Module, example: torch.Tensor, tower: str, calibration: Sequence[torch.Tensor]
) -> torch.fx.GraphModule:
    """``module`` quantized by ``tower``'s recipe (``convert_pt2e``'s graph, runnable in PyTorch)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad(), mha_fastpath_disabled():
        graph = torch.export.export(module.eval(), (example,)).module()
        observed = prepare_pt2e(graph, quantizer(tower))
        if tower in DYNAMIC_TOWERS:  # only the weight observers record anything: one pass
            observed(example)
        else:
            for batch in calibration:
                for row in batch.split(1):  # the program's batch of 1: observers see what it will see
                    observed(row)
        return convert_pt2e(observed)


def write_int8(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    calibration: Sequence[torch.Tensor],
) -> dict[str, Any]:
    """Write ``module`` as an XNNPACK-lowered int8 program by ``tower``'s recipe (:data:`INT8_RECIPES`),
    calibrated on ``calibration`` batches where the recipe is static; returns the recipe."""
    _lower_check()
    # Quantize / dequantize ops XNNPACK does not take (open_clip main's attention projections) stay in
    # the program and run on ExecuTorch's own quantized kernels; importing the library registers their
    # out variants for to_executorch().
    import executorch.kernels.quantized  # noqa: F401

    graph = quantized(module, example, tower, calibration)
    with torch.no_grad(), mha_fastpath_disabled():
        _lower(torch.export.export(graph, (example,)), Path(path))
    return INT8_RECIPES[tower]


def _lower_check() -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError as error:
        raise ExporterUnavailableError("executorch", "executorch", "mobile", error) from error


def load(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """The program in ``executorch.runtime``; ``threads`` sizes XNNPACK's pool before loading."""
    try:
        from executorch.runtime import Runtime
    except ImportError as error:
        raise ExporterUnavailableError("executorch", "executorch", "mobile", error) from error
    if threads:
        set_executorch_threads(threads)
    method = Runtime.get().load_program(Path(path)).load_method("forward")

    def run(inputs: np.ndarray) -> np.ndarray:
        return np.asarray(method.execute([torch.from_numpy(np.ascontiguousarray(inputs))])[0])

    return run
