"""ONNX: one graph per tower with a dynamic batch axis; fp32, or int8 by ONNX Runtime static QDQ.

Exporter: torch 2.14's default (``dynamo=True``) needs the extra package ``onnxscript``; the
TorchScript exporter (``dynamo=False``) needs nothing extra and handles every model here,
MobileCLIP-S0's MCt tower included, so it is the default. nn.MultiheadAttention's fast path has no
ONNX symbolic and is switched off while tracing (:mod:`mobileclip2.compat.export`); the traced
module must be in eval mode, or the exporter's mode restore flips it to training mode.

int8: ``quant_pre_process`` (shape inference and graph optimization, as ONNX Runtime recommends),
then ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations
(U8S8): ONNX Runtime's x86 CPU kernels run S8S8 much slower; dynamic quantization leaves
convolutions in fp32.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compat.export import mha_fastpath_disabled
from ..errors import ExporterUnavailableError
from .formats import DEFAULT_OPSET
from .parity import Runner


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ExporterUnavailableError("onnx", "onnxruntime", "export", error) from error
    return onnxruntime


def write(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> None:
    """Write ``module`` (one tensor in, one out) as an ONNX graph with a dynamic batch axis."""
    try:
        import onnx  # noqa: F401  (the TorchScript exporter needs it too)
    except ImportError as error:
        raise ExporterUnavailableError("onnx", "onnx", "export", error) from error
    input_name, output_name = tower, f"{tower}_embedding"
    example = torch.cat([example, example])  # trace at batch 2; the axis is dynamic anyway
    with torch.no_grad(), mha_fastpath_disabled(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and tracer notes about Python-level shape
        # checks are expected; the parity check is what vouches for the graph.
        warnings.simplefilter("ignore")
        if dynamo:
            axes = dict(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        else:
            axes = dict(
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, do_constant_folding=True
            )
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=dynamo,
            **axes,
        )


def load(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """The graph in an ONNX Runtime CPU session (thread spinning off, so it never bleeds into
    whatever runs next in the process)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(inputs: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: inputs})[0]

    return run


INT8_RECIPE: dict[str, Any] = {
    "quantizer": "onnxruntime quantize_static, QDQ",
    "weights": "int8 symmetric, per output channel",
    "activations": "uint8 per tensor, static: ranges calibrated on the calibration rows",
    "quantized_ops": "every op type ONNX Runtime's QDQ quantizer supports (MatMul, Conv, Gemm, Add, Mul, "
    "Softmax, LayerNormalization, the token embedding's Gather, ...)",
    "float_ops": "op types it has no int8 form for (Erf, Div, ReduceMean, ...)",
}
"""What an int8 graph quantizes, both towers (recorded in the sidecar)."""


def write_int8(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    calibration: Sequence[torch.Tensor],
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> dict[str, Any]:
    """Static QDQ int8 (U8S8, per-channel weights) calibrated on ``calibration`` (batches of inputs);
    returns :data:`INT8_RECIPE`."""
    ort = _onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{tower: batch.numpy()} for batch in calibration])

        def get_next(self):
            return next(self._batches, None)

    del ort
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as work:
        fp32 = Path(work) / "fp32.onnx"
        pre = Path(work) / "pre.onnx"
        write(module, example, fp32, tower, opset=opset, dynamo=dynamo)
        # symbolic shape inference asserts on the text tower's Reshape (onnxruntime 1.32); ONNX shape
        # inference and the graph optimization still run.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return INT8_RECIPE
