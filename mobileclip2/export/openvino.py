"""OpenVINO: one IR per tower (``.xml`` graph + ``.bin`` weights, fp32, dynamic batch); int8 by NNCF.

Conversion: the tower's ONNX graph (:func:`mobileclip2.export.onnx.write`, the trace every desktop
runtime here shares) read by ``ov.convert_model``. OpenVINO also converts the PyTorch module directly
and from ``torch.export``, to the same numerics (max abs diff <= 5.3e-6 on the S0 towers either way);
one trace path means one set of tracing workarounds. Convert the prepared model
(:func:`mobileclip2.export.towers.prepared`), never an ``optimize()``d one: its oneDNN weights are
opaque tensors tracing cannot read, and its causal-text truncation would be frozen at the example's
length.

Saved with ``compress_to_fp16=False``: ``ov.save_model``'s default stores fp16 weights, which moves
text embeddings by ~3e-3 (the 1e-4 parity fails). Compiled with ``INFERENCE_PRECISION_HINT=f32``
(:attr:`FormatSpec.runtime_options`, recorded in the sidecar for consumers): the CPU plugin's default
on CPUs with AVX512-BF16 or AMX is bf16 (~4e-2 off on text), and a hint stored in the IR is not
applied by ``compile_model``. OpenVINO's CPU threads do not spin after a request.

int8 (:func:`quantize`): NNCF post-training quantization of the weighted layers; for text towers
``ModelType.TRANSFORMER`` (the inputs of softmax, LayerNorm and the attention-score matmuls stay
float), SmoothQuant at :data:`TEXT_SMOOTH_QUANT_ALPHA` and the final projection kept float
(:func:`final_projection`). Chosen by measurement: on
MobileCLIP-S0's text tower it ran 4.3x upstream eager where OpenVINO reading our ONNX QDQ graph ran
2.6x, at the same cosine; on MobileCLIP2-S0's image tower at batch 1, 3.2x where ONNX Runtime's QDQ
ran 1.3x.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExporterUnavailableError
from ..system import thread_count
from . import onnx as onnx_format
from .formats import DEFAULT_OPSET, FORMATS
from .parity import Runner


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise ExporterUnavailableError("openvino", "openvino", "openvino", error) from error
    return openvino


def _nncf():
    try:
        import nncf
    except ImportError as error:
        raise ExporterUnavailableError("openvino int8", "nncf", "openvino", error) from error
    return nncf


def compile_properties(threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin's settings: the format's runtime options (fp32 compute), ``threads`` inference
    threads (torch's count unless given), latency mode (one request at a time, as embedding a photo
    or a query is), and no pinning of threads to cores (torch shares them)."""
    return {
        **dict(FORMATS["openvino"].runtime_options),
        "INFERENCE_NUM_THREADS": thread_count(threads),
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }


def convert(onnx_path: str | os.PathLike):
    """The ONNX graph at ``onnx_path`` as an ``openvino.Model`` (input and output names kept)."""
    return _openvino().convert_model(str(onnx_path))


def save(model, path: str | os.PathLike) -> None:
    """``path`` (``.xml``) and its ``.bin``, weights kept in their own precision."""
    _openvino().save_model(model, str(path), compress_to_fp16=False)


def final_projection(model) -> str | None:
    """Friendly name of a text tower's final projection in ``model``: the first MatMul by a constant
    weight found walking back from the output, stopping at a normalization (none there: the tower has
    no projection, None).

    Looked up, not named: OpenVINO's ONNX frontend renames the node after the output tensor
    (``text_embedding``), and NNCF's IgnoredScope ignores a name it does not find."""

    def constant(node) -> bool:
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    queue = [value.get_node() for value in model.get_results()[0].input_values()]
    seen: set[str] = set()
    while queue:
        node = queue.pop(0)
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        kind = node.get_type_name()
        if kind == "MatMul" and constant(node.input_value(1).get_node()):
            return node.get_friendly_name()
        if kind != "MVN":
            queue.extend(value.get_node() for value in node.input_values())
    return None


TEXT_SMOOTH_QUANT_ALPHA = 0.5
"""SmoothQuant's migration strength for the text towers' matmuls. NNCF's transformer default (0.95)
moves so much of the activations' range into the weights that long captions, longer than most
calibration captions, lose the most: minimum cosine to fp32 on the built-in evaluation captions 0.992
(MobileCLIP2-S0) and 0.991 (MobileCLIP-S0) with generated weights, below the 0.995 gate; 0.5 (the
SmoothQuant paper's value) gave 0.9993 and 0.9997 at the same speed, as did no smoothing at all. 0.5
is kept rather than none for the outlier channels trained CLIP text towers have."""

INT8_RECIPES: dict[str, dict[str, Any]] = {
    tower: {
        "quantizer": "nncf.quantize (post-training, OpenVINO IR)",
        "weights": "int8 symmetric, per output channel",
        "activations": "static: ranges calibrated on the calibration rows",
        "model_type": "TRANSFORMER" if tower == "text" else "default",
        **({"smooth_quant_alpha_matmul": TEXT_SMOOTH_QUANT_ALPHA} if tower == "text" else {}),
        "float_ops": (
            "softmax, LayerNorm and attention-score matmul inputs, the final projection"
            if tower == "text"
            else "what NNCF's default scheme keeps float"
        ),
    }
    for tower in ("image", "text")
}
"""What :func:`quantize` does per tower (recorded in the sidecar)."""


def quantize(model, tower: str, rows: Iterable[np.ndarray]):
    """NNCF int8 of ``model`` (one tower) calibrated on ``rows`` (single inputs, batch axis included)."""
    nncf = _nncf()
    rows = list(rows)
    projection = final_projection(model) if tower == "text" else None
    text = tower == "text"
    return nncf.quantize(
        model,
        nncf.Dataset(rows),
        subset_size=len(rows),
        model_type=nncf.ModelType.TRANSFORMER if text else None,
        ignored_scope=nncf.IgnoredScope(names=[projection]) if projection else None,
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=TEXT_SMOOTH_QUANT_ALPHA)
        )
        if text
        else None,
    )


def write_from_onnx(
    onnx_path: str | os.PathLike, path: str | os.PathLike, tower: str, calibration: Iterable[np.ndarray] = ()
) -> None:
    """The IR of the ONNX graph at ``onnx_path``; int8 when ``calibration`` rows are given."""
    model = convert(onnx_path)
    rows = list(calibration)
    save(quantize(model, tower, rows) if rows else model, path)


def _write(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    calibration: Iterable[np.ndarray],
    opset: int,
    dynamo: bool,
) -> None:
    _openvino()
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".openvino-") as work:
        onnx_path = Path(work) / f"{tower}.onnx"
        onnx_format.write(module, example, onnx_path, tower, opset=opset, dynamo=dynamo)
        write_from_onnx(onnx_path, path, tower, calibration)


def write(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> None:
    """Write ``module`` (one tensor in, one out) as an fp32 IR with a dynamic batch axis."""
    _write(module, example, path, tower, (), opset, dynamo)


def write_int8(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    calibration: Iterable[torch.Tensor],
    *,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> dict[str, Any]:
    """NNCF int8 IR calibrated on ``calibration`` (batches of inputs, fed one input at a time); returns
    ``tower``'s :data:`INT8_RECIPES` entry."""
    _nncf()
    rows = [row.numpy() for batch in calibration for row in batch.split(1)]
    _write(module, example, path, tower, rows, opset, dynamo)
    return INT8_RECIPES[tower]


def load(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """The IR compiled for the CPU with :func:`compile_properties`. One infer request, used under a
    lock: a request is not safe to share between threads, and one request keeps memory flat."""
    ov = _openvino()
    compiled = ov.Core().compile_model(str(path), "CPU", compile_properties(threads))
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def run(inputs: np.ndarray) -> np.ndarray:
        with lock:  # share_outputs=False: the result is a copy, not the request's reused buffer
            return request.infer({0: inputs}, share_outputs=False)[0]

    return run
