"""Export settings shared by :mod:`mobileclip2.export` and the ``mobileclip2 export`` command.

Torch-free on purpose: ``mobileclip2 export --help`` reads these without importing torch, and the
export package reads the same names, so each default exists once.
"""

from __future__ import annotations

FORMATS = ("onnx", "executorch", "coreml", "litert")
"""Artifact formats, in the order ``--help`` lists them."""

SUFFIX = {"onnx": ".onnx", "executorch": ".pte", "coreml": ".mlpackage", "litert": ".tflite"}
"""File (or, for Core ML, folder) suffix of one tower's artifact."""

INT8_FORMATS = ("onnx", "executorch")
"""Formats with an int8 path (ONNX Runtime QDQ static, ExecuTorch XNNPACK PT2E)."""

EXTRA = {"onnx": "export", "executorch": "mobile", "coreml": "mobile", "litert": "mobile"}
"""The ``pip install 'mobileclip2[EXTRA]'`` that installs each format's exporter."""

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
"""Max abs difference of an fp32 artifact's embeddings from PyTorch's."""

DEFAULT_MIN_COSINE = 0.995
"""An int8 export fails when the mean cosine of its embeddings to fp32 falls below this on the
calibration or the held-out inputs. Measured with real weights and images; random-weight test
models have unrepresentative activations, so tests pass a lower value."""

HELD_OUT_EVERY = 4
"""Every 4th calibration image / caption (sorted by name) is held out: used only to report fidelity."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
