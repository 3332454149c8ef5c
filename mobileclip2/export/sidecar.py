"""The JSON sidecar written next to the artifacts: everything an app needs to feed them.

Preprocessing (size, mean/std, interpolation, resize mode), tokenizer settings, embed dim, logit
scale, format, precision, file sizes, parity (fp32) or fidelity (int8) and the versions
that produced it. Its presence under the final name means the export completed and passed its checks
(it is moved into place last; :mod:`mobileclip2.export.pipeline`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..system import package_versions

PREPROCESS_DESCRIPTION = (
    "RGB, resize (resize_mode 'shortest': shorter side to size, then center crop), to float in [0, 1], "
    "then (x - mean) / std per channel, NCHW"
)


def tokenizer_info(tokenizer: Any, context_length: int) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(tokenizer).__name__, "context_length": context_length}
    if type(tokenizer).__name__ == "SimpleTokenizer":
        info.update(
            description="OpenAI CLIP byte-level BPE (open_clip.get_tokenizer(name)), lower-cased, "
            "<start_of_text> ... <end_of_text>, zero padded",
            vocab_size=getattr(tokenizer, "vocab_size", None),
            sot_token_id=getattr(tokenizer, "sot_token_id", None),
            eot_token_id=getattr(tokenizer, "eot_token_id", None),
            pad_token_id=0,
        )
    return info


def preprocess_info(size: tuple[int, int], preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": list(size),
        "mean": list(preprocess_cfg.get("mean", ())),
        "std": list(preprocess_cfg.get("std", ())),
        "interpolation": preprocess_cfg.get("interpolation"),
        "resize_mode": preprocess_cfg.get("resize_mode"),
        "description": PREPROCESS_DESCRIPTION,
    }


def versions(exporter_distributions: tuple[str, ...]) -> dict[str, str]:
    """The versions that produced an export: open_clip, timm, the format's exporter and ours."""
    return package_versions("open_clip_torch", "timm", *exporter_distributions, "mobileclip2")


def artifact_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a file, or of every file under a directory (a Core ML .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_json(path: str | os.PathLike, config: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
