"""Core ML: one ``.mlpackage`` (ML program, iOS 17+) per tower, fp16 or fp32 compute with fp32
input/output.

coremltools 9.0 converts from ``torch.export`` (its ``torch.jit.trace`` path fails on both towers):
``ct.convert(exported.run_decompositions({}), convert_to="mlprogram", ...)``. Inputs and outputs
are named and typed explicitly: image float32 ``[1, 3, H, W]``, text int32 ``[1, context]`` (Core ML
has no int64 inputs), embedding float32 ``[1, D]``. ``compute_precision`` (``fp16`` or ``fp32``) is
chosen per tower by the pipeline (:mod:`mobileclip2.export.precision`: fp16 where it is safe) and
becomes coremltools' ``compute_precision``: fp16 weights and compute, or fp32 (no Neural Engine).

Core ML can only run a model on macOS, so on Linux the export is checked structurally
(:func:`check_structure`: input and output names, shapes and dtypes, every op a Core ML core op, the
weights' dtype matching the compute precision) and the numerics check is a documented command for a
Mac (docs/deployment.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compat.export import mha_fastpath_disabled
from ..errors import ExporterUnavailableError, ExportParityError


def _coremltools():
    try:
        import coremltools
    except ImportError as error:
        raise ExporterUnavailableError("coreml", "coremltools", "mobile", error) from error
    return coremltools


PRECISION_DTYPES = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
"""The MIL dtype of a program's float weights per compute precision."""


def write(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    tower: str,
    *,
    compute_precision: str = "fp16",
) -> None:
    """Convert ``module`` (batch 1; text tokens int32) to an ML program computing in ``compute_precision``."""
    ct = _coremltools()
    if compute_precision not in PRECISION_DTYPES:
        raise ValueError(
            f"Core ML compute precision {compute_precision!r}: expected one of {', '.join(PRECISION_DTYPES)}"
        )
    with torch.no_grad(), mha_fastpath_disabled():
        exported = torch.export.export(module.eval(), (example,)).run_decompositions({})
    dtype = np.float32 if example.is_floating_point() else np.int32
    model = ct.convert(
        exported,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        inputs=[ct.TensorType(name=tower, shape=tuple(example.shape), dtype=dtype)],
        outputs=[ct.TensorType(name=f"{tower}_embedding", dtype=np.float32)],
        compute_precision=ct.precision.FLOAT16 if compute_precision == "fp16" else ct.precision.FLOAT32,
    )
    model.save(str(path))


def check_structure(
    path: str | os.PathLike, tower: str, input_shape: list[int], embed_dim: int, precision: str = "fp16"
) -> dict[str, Any]:
    """What can be checked without macOS; raises ExportParityError on any mismatch, returns a summary."""
    ct = _coremltools()
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    array = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    want_input = array.FLOAT32 if tower == "image" else array.INT32
    problems = []
    (inp,) = spec.description.input
    (out,) = spec.description.output
    if inp.name != tower or list(inp.type.multiArrayType.shape) != input_shape:
        problems.append(f"input {inp.name} {list(inp.type.multiArrayType.shape)}, want {tower} {input_shape}")
    if inp.type.multiArrayType.dataType != want_input:
        problems.append(f"input dtype {array.ArrayDataType.Name(inp.type.multiArrayType.dataType)}")
    if out.name != f"{tower}_embedding" or list(out.type.multiArrayType.shape) != [1, embed_dim]:
        problems.append(f"output {out.name} {list(out.type.multiArrayType.shape)}, want [1, {embed_dim}]")
    if out.type.multiArrayType.dataType != array.FLOAT32:
        problems.append(f"output dtype {array.ArrayDataType.Name(out.type.multiArrayType.dataType)}")
    function = spec.mlProgram.functions["main"]
    operations = function.block_specializations[function.opset].operations
    op_types = sorted({op.type for op in operations})
    unknown = [op for op in op_types if op not in SSAOpRegistry.core_ops]
    if unknown:
        problems.append(f"ops that are not Core ML core ops: {unknown}")
    mil = ct.proto.MIL_pb2
    const_dtypes = {
        mil.DataType.Name(op.outputs[0].type.tensorType.dataType) for op in operations if op.type == "const"
    }
    want, other = PRECISION_DTYPES[precision], PRECISION_DTYPES["fp32" if precision == "fp16" else "fp16"]
    if want not in const_dtypes or other in const_dtypes:
        problems.append(f"const dtypes {sorted(const_dtypes)}: not {precision} compute")
    if problems:
        raise ExportParityError(f"{Path(path).name}: Core ML structure check failed: " + "; ".join(problems))
    return {
        "opset": function.opset,
        "op_types": op_types,
        "weights": want.lower(),
        "checked": "structure (Linux)",
    }


def load(path: str | os.PathLike, threads: int | None = None):
    """Runs only on macOS (coremltools predicts through Core ML)."""
    ct = _coremltools()
    model = ct.models.MLModel(str(path))
    input_name = model.get_spec().description.input[0].name

    def run(inputs: np.ndarray) -> np.ndarray:
        return next(iter(model.predict({input_name: inputs}).values()))

    return run
