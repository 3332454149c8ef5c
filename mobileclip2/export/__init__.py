"""Export MobileCLIP models for deployment: one artifact per tower plus a JSON sidecar.

:mod:`.formats` lists the formats (one row each; torch-free, the CLI reads it) and the export
defaults; one module per format writes, runs and checks its artifacts (:mod:`.onnx`,
:mod:`.executorch`, :mod:`.coreml`, :mod:`.litert`). Shared pieces: :mod:`.towers` (the modules
exported), :mod:`.parity`, :mod:`.calibration` (int8 calibration and fidelity), :mod:`.sidecar` and
:mod:`.pipeline` (staging, checks, atomic move; ``export_model`` is ``mobileclip2.export_model``).
Importing this package imports nothing heavy.
"""
