"""Export MobileCLIP models for deployment: one artifact per tower plus a JSON sidecar.

Formats (one module each): :mod:`~mobileclip2.export.onnx` (fp32, int8 QDQ),
:mod:`~mobileclip2.export.executorch` (XNNPACK fp32, int8 PT2E), :mod:`~mobileclip2.export.coreml`
(fp16 ML program) and :mod:`~mobileclip2.export.litert` (fp32 ``.tflite``). Shared pieces:
:mod:`~mobileclip2.export.towers` (the modules exported), :mod:`~mobileclip2.export.parity`,
:mod:`~mobileclip2.export.calibration` (int8 calibration and fidelity),
:mod:`~mobileclip2.export.sidecar`, :mod:`~mobileclip2.export.pipeline` (staging, checks, atomic
move) and :mod:`~mobileclip2.export.constants` (torch-free settings the CLI shares).

This ``__init__`` imports nothing heavy (the CLI reads :mod:`.constants` through it); the public
functions below are resolved on first use.
"""

from __future__ import annotations

from .constants import DEFAULT_MIN_COSINE, DEFAULT_OPSET, DEFAULT_TOLERANCE, FORMATS, INT8_FORMATS

_LAZY = {
    "export_model": "pipeline",
    "export_loaded": "pipeline",
    "ExportResult": "pipeline",
    "TowerExport": "pipeline",
    "file_names": "pipeline",
    "image_encoder": "towers",
    "text_encoder": "towers",
}

__all__ = ["DEFAULT_MIN_COSINE", "DEFAULT_OPSET", "DEFAULT_TOLERANCE", "FORMATS", "INT8_FORMATS", *_LAZY]


def __getattr__(name: str):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mobileclip2.export' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
