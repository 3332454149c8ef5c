"""ONNX: one graph per tower with a dynamic batch axis; fp32, or int8 by ONNX Runtime quantization.

Exporter: torch 2.14's default (``dynamo=True``) needs the extra package ``onnxscript``; the
TorchScript exporter (``dynamo=False``) needs nothing extra and handles every model here,
MobileCLIP-S0's MCt tower included, so it is the default. nn.MultiheadAttention's fast path has no
ONNX symbolic and is switched off while tracing (:mod:`mobileclip2.compat.export`); the traced
module must be in eval mode, or the exporter's mode restore flips it to training mode.

int8 quantizes the weighted layers only: convolutions and the matmuls / Gemms whose second input is
a constant weight. Everything else stays float: the token embedding lookup, the residual adds,
LayerNorm, softmax and the attention-score matmuls (two activations), the pooling, and the text
tower's final projection (:func:`final_projection`: one layer, and the one whose rounding shows
most directly in the embedding). Quantizing LayerNorm bought nothing and made onnxruntime's
quantizer warn once per norm ("Axis 1 is out-of-range for weight"); quantizing the token lookup made
the graph one OpenVINO cannot compile.

* Export (:func:`write_int8`): ``quant_pre_process`` (shape inference and graph optimization, as ONNX
  Runtime recommends), then ``quantize_static`` in QDQ format with per-channel int8 weights and uint8
  activations (U8S8: ONNX Runtime's x86 CPU kernels run S8S8 much slower), calibrated on the given
  batches; QDQ graphs run in every ONNX runtime, phones included.
* ``optimize(backend="onnxruntime", int8=True)`` (:func:`quantize_text_dynamic`): dynamic
  quantization (per-channel int8 weights, activation ranges taken per call): no calibration data, and
  on x86 at least as fast as QDQ for the text tower; dynamic quantization leaves convolutions in fp32,
  so it is not used for image towers.
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
from ..system import thread_count
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
    """The graph in an ONNX Runtime CPU session: all graph optimizations, ``threads`` intra-op
    threads (:func:`mobileclip2.system.thread_count`: torch's count unless given), one inter-op
    thread, and thread spinning off, so its pool never burns the cores that whatever runs next in the
    process (torch) needs."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = thread_count(threads)
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
    "quantized_ops": "convolutions and the matmuls / Gemms by a constant weight",
    "float_ops": "the token embedding lookup, residual adds, LayerNorm, softmax, attention-score matmuls, "
    "pooling, and the text tower's final projection",
}
"""What an int8 graph quantizes, both towers (recorded in the sidecar; the module docstring says why)."""

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
"""The op types int8 quantizes (with ``MatMulConstBOnly``: only matmuls by a constant weight)."""


def final_projection(path: str | os.PathLike) -> str | None:
    """Name of the node that projects a text tower's pooled features into the embedding space: the
    first MatMul / Gemm by a constant weight found walking back from the graph output, stopping at a
    normalization (none there: the tower has no projection, None)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    producer = {out: node for node in graph.node for out in node.output}
    queue, seen = [graph.output[0].name], set()
    while queue:
        node = producer.get(queue.pop(0))
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants:
            return node.name
        if node.op_type in ("LayerNormalization", "ReduceMean"):
            continue
        queue.extend(name for name in node.input if name not in constants)
    return None


def _excluded(pre: Path, tower: str) -> list[str]:
    projection = final_projection(pre) if tower == "text" else None
    return [projection] if projection else []


def _pre_processed(fp32: Path, pre: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # symbolic shape inference asserts on the text tower's Reshape (onnxruntime 1.32); ONNX shape
    # inference and the graph optimization still run.
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)


def quantize_text_dynamic(fp32: str | os.PathLike, path: str | os.PathLike) -> None:
    """Dynamic int8 of an fp32 text graph written by :func:`write`: per-channel int8 weights of the
    matmuls by a constant weight except the final projection; activations quantized per call from
    their own range (no calibration data)."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".int8-") as work:
        pre = Path(work) / "pre.onnx"
        _pre_processed(Path(fp32), pre)
        quantize_dynamic(
            str(pre),
            str(path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=_excluded(pre, "text"),
            extra_options={"MatMulConstBOnly": True},
        )


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
    """Static QDQ int8 (U8S8, per-channel weights) of the weighted layers, calibrated on ``calibration``
    (batches of inputs); returns :data:`INT8_RECIPE`."""
    ort = _onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

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
        _pre_processed(fp32, pre)
        quantize_static(
            str(pre),
            str(path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=_excluded(pre, tower),
            extra_options={"MatMulConstBOnly": True},
        )
    return INT8_RECIPE
