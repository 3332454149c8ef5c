"""ExecuTorch: one ``.pte`` program per tower, lowered to XNNPACK (Android and iOS CPU); fp32, or int8
by PT2E quantization with the XNNPACK quantizer.

Flow (executorch 1.5.1): ``torch.export.export`` -> ``to_edge_transform_and_lower(...,
partitioner=[XnnpackPartitioner()])`` -> ``.to_executorch()``; programs are checked by running them
through ``executorch.runtime``. Programs have a fixed batch of 1 (what a phone runs; a dynamic batch
would need an upper bound baked into the program). int8: symmetric per-channel weights and
per-tensor activations, calibrated with ``prepare_pt2e`` / ``convert_pt2e``; the token embedding
table of the text tower stays fp32 (a gather, not a matmul), which is why the int8 text program is
about half the fp32 size rather than a quarter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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


def write_int8(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    calibration: Sequence[torch.Tensor],
) -> None:
    """PT2E int8 (XNNPACK quantizer, per-channel symmetric) calibrated on ``calibration`` batches."""
    _lower_check()
    # Quantize / dequantize ops XNNPACK does not take (open_clip main's attention projections) stay in
    # the program and run on ExecuTorch's own quantized kernels; importing the library registers their
    # out variants for to_executorch().
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), mha_fastpath_disabled():
        graph = torch.export.export(module.eval(), (example,)).module()
        observed = prepare_pt2e(graph, quantizer)
        for batch in calibration:
            for row in batch.split(1):  # the program's batch of 1: observers see what it will see
                observed(row)
        quantized = convert_pt2e(observed)
        _lower(torch.export.export(quantized, (example,)), Path(path))


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
