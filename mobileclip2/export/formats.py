"""The export formats, one :class:`FormatSpec` row each, and the export defaults.

Torch-free on purpose: ``mobileclip2 export --help`` reads this without importing torch, and the
export pipeline reads the same rows, so each fact about a format exists once. Adding a format is
a row here plus a module beside this one that implements ``write`` (and ``write_int8`` when the
row says int8), ``load`` (a runner in the format's own runtime) and, for formats that cannot run
on every platform, ``check_structure``.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "FORMATS",
    "HELD_OUT_EVERY",
    "IMAGE_SUFFIXES",
    "FormatSpec",
    "format_spec",
]


DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
"""Max abs difference of an fp32 artifact's embeddings from PyTorch's."""

DEFAULT_MIN_COSINE = 0.995
"""An int8 (or fp16) export fails when the cosine of its embeddings to fp32 falls below this on any
evaluated input: the minimum over the calibration, held-out and (text tower) built-in evaluation
captions (mobileclip2.export.calibration), not the mean, since one badly embedded query is a wrong
search result however good the average is."""

DEFAULT_MIN_AGREEMENT = 0.9
"""An int8 export with labels fails when fewer than this fraction of images keep their fp32 zero-shot
top-1 label, for either tower alone or both together."""

HELD_OUT_EVERY = 4
"""Every 4th calibration image / caption (sorted by name) is held out: never calibrates, only evaluated."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class FormatSpec:
    """What the pipeline, the CLI and the sidecar need to know about one format."""

    name: str
    suffix: str  # of one tower's artifact (a file, or for Core ML a folder)
    module: str  # mobileclip2.export.<module> writes, runs and checks it
    extra: str  # pip install 'mobileclip2[extra]' installs the exporter and its runtime
    requires: tuple[str, ...]  # top-level modules the exporter imports (checked before any work)
    distributions: tuple[str, ...]  # recorded with their versions in the sidecar
    int8: bool = False  # has an int8 path (write_int8)
    int32_tokens: bool = False  # the text tower takes int32 token ids (no int64 inputs in the runtime)
    widen_tokens: bool = False  # ... and casts them to int64 inside the graph (else int32 throughout)
    fixed_batch: bool = False  # artifacts take a batch of 1 (else any batch size)
    precision: str = "fp32"  # of the non-int8 artifact; below fp32 it is judged by cosine, not max diff
    runs_on: str | None = None  # sys.platform where the runtime exists; None: everywhere
    options: tuple[tuple[str, object], ...] = ()  # export options this format takes, with defaults
    companions: tuple[str, ...] = ()  # suffixes of files that belong to an artifact (OpenVINO's .bin)
    int8_requires: tuple[str, ...] = ()  # further top-level modules the int8 path imports
    runtime_options: tuple[tuple[str, object], ...] = ()
    """Settings a consumer must give the runtime to reproduce the checked numerics (the sidecar records
    them, and the format's ``load`` applies them): what the artifact file cannot carry itself."""

    def runs_here(self) -> bool:
        return self.runs_on is None or sys.platform == self.runs_on

    def missing_requirement(self, int8: bool = False) -> str | None:
        """The first required module (of the int8 path too, with ``int8``) that is not installed, or None."""
        names = (*self.requires, *(self.int8_requires if int8 else ()))
        return next((name for name in names if importlib.util.find_spec(name) is None), None)


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            "onnx",
            ".onnx",
            "onnx",
            extra="export",
            requires=("onnx", "onnxruntime"),
            distributions=("onnx", "onnxruntime"),
            int8=True,
            options=(("opset", DEFAULT_OPSET), ("dynamo", False)),
        ),
        FormatSpec(
            "executorch",
            ".pte",
            "executorch",
            extra="mobile",
            requires=("executorch",),
            distributions=("executorch", "torchao"),
            int8=True,
            fixed_batch=True,
        ),
        FormatSpec(
            "coreml",
            ".mlpackage",
            "coreml",
            extra="mobile",
            requires=("coremltools",),
            distributions=("coremltools",),
            int32_tokens=True,
            widen_tokens=True,
            fixed_batch=True,
            precision="fp16",
            runs_on="darwin",
            # "auto": image fp16, text fp16 where its fp16 check passes (mobileclip2.export.precision)
            options=(("compute_precision", "auto"),),
        ),
        FormatSpec(
            "litert",
            ".tflite",
            "litert",
            extra="litert",
            requires=("litert_torch", "ai_edge_litert"),
            distributions=("litert-torch", "ai-edge-litert"),
            int32_tokens=True,
            fixed_batch=True,
        ),
        FormatSpec(
            "openvino",
            ".xml",
            "openvino",
            extra="openvino",
            # converted from the ONNX graph of .onnx (one trace path for every desktop runtime)
            requires=("openvino", "onnx"),
            distributions=("openvino", "nncf", "onnx"),
            int8=True,
            int8_requires=("nncf",),
            options=(("opset", DEFAULT_OPSET), ("dynamo", False)),
            companions=(".bin",),
            # OpenVINO's CPU plugin computes in bf16 by default on CPUs with AVX512-BF16 or AMX (about
            # 4e-2 off fp32 on the text tower); a hint stored in the IR's rt_info is not applied.
            runtime_options=(("INFERENCE_PRECISION_HINT", "f32"),),
        ),
    )
}
"""Every format, in the order ``--help`` lists them."""


def format_spec(name: str) -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unsupported export format {name!r}; supported: {', '.join(FORMATS)}") from None
