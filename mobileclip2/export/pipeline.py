"""Export both towers of a model to one format, check them, and only then move them into place.

Everything is written into a staging folder inside ``out_dir`` (``.mobileclip2-export-<pid>-*``).
Only after every check passed are the artifacts moved to their final names with ``os.replace``,
the sidecar last; the previous export's sidecar is removed first, so at any moment a sidecar under
its final name describes complete, checked artifacts. A failed check leaves the previous export
intact; a killed process leaves only its staging folder, which the next export removes.

File names: ``<name>[.int8].<tower><suffix>`` and ``<name>[.int8].<format>.json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExporterUnavailableError
from . import calibration as calib
from .constants import (
    DEFAULT_MIN_COSINE,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXTRA,
    FORMATS,
    INT8_FORMATS,
    SUFFIX,
)
from .parity import check_max_abs_diff, run_batched
from .sidecar import artifact_size, preprocess_info, tokenizer_info, versions, write_json
from .towers import TOWERS, embed, geometry, prepared, tower_module

STAGING_PREFIX = ".mobileclip2-export-"


@dataclass
class TowerExport:
    path: str
    input_name: str
    input_shape: list[Any]
    input_dtype: str
    output_name: str
    size_bytes: int = 0
    max_abs_diff: float | None = None
    fidelity: dict[str, Any] | None = None
    structure: dict[str, Any] | None = None


@dataclass
class ExportResult:
    """What an export wrote; ``config`` is the JSON sidecar's content."""

    image: TowerExport
    text: TowerExport
    config_path: str
    config: dict[str, Any] = field(default_factory=dict)


def file_names(name: str, format: str, int8: bool = False) -> dict[str, str]:
    """Final file names of an export: one per tower and the sidecar."""
    stem = f"{name}.int8" if int8 else name
    return {**{t: f"{stem}.{t}{SUFFIX[format]}" for t in TOWERS}, "sidecar": f"{stem}.{format}.json"}


def format_module(format: str):
    """The module that writes and runs ``format``."""
    if format not in FORMATS:
        raise ValueError(f"unsupported export format {format!r}; supported: {', '.join(FORMATS)}")
    return importlib.import_module(f"{__package__}.{format}")


def _int32_tokens(format: str) -> bool:
    # Core ML has no int64 inputs; LiteRT cannot legalize an int64 argmax (EOT pooling).
    return format in ("coreml", "litert")


def _can_run(format: str) -> bool:
    return format != "coreml" or sys.platform == "darwin"


def remove_stale_staging(out_dir: Path) -> None:
    """Remove staging folders of exports whose process is gone (killed mid-export)."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            pid = int(folder.name[len(STAGING_PREFIX) :].split("-", 1)[0])
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # another export is running into the same folder
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path, names: dict[str, str]) -> None:
    sidecar = out_dir / names["sidecar"]
    sidecar.unlink(missing_ok=True)  # never a sidecar next to a mix of old and new artifacts
    for tower in TOWERS:
        final = out_dir / names[tower]
        if final.is_dir():  # a Core ML package: os.replace cannot replace a non-empty folder
            shutil.rmtree(final)
        os.replace(staging / names[tower], final)
    os.replace(staging / names["sidecar"], sidecar)


def _transform(preprocess_cfg: dict[str, Any], geo) -> Callable[[Any], torch.Tensor]:
    """The model's eval transform from its preprocess config (open_clip's public ``image_transform``)."""
    import open_clip

    return open_clip.image_transform(
        (geo.height, geo.width),
        is_train=False,
        mean=tuple(preprocess_cfg.get("mean") or ()) or None,
        std=tuple(preprocess_cfg.get("std") or ()) or None,
        resize_mode=preprocess_cfg.get("resize_mode"),
        interpolation=preprocess_cfg.get("interpolation"),
    )


def _calibration_batches(rows: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    return list(rows.split(batch))


def export_loaded(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    name: str,
    preprocess_cfg: dict[str, Any],
    tokenizer: Any = None,
    preprocess: Callable[[Any], torch.Tensor] | None = None,
    format: str = "onnx",
    int8: bool = False,
    calibration_images: str | os.PathLike | None = None,
    calibration_captions: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    normalize: bool = False,
    check: bool = True,
    tolerance: float | None = DEFAULT_TOLERANCE,
    min_cosine: float | None = DEFAULT_MIN_COSINE,
    check_count: int = 3,
    dynamo: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Export both towers of an already built open_clip model; see :func:`export_model`."""
    fmt = format_module(format)
    if int8 and format not in INT8_FORMATS:
        raise ValueError(f"--int8 is supported for {', '.join(INT8_FORMATS)}, not {format!r}")
    if not int8 and (calibration_images or calibration_captions):
        raise ValueError("calibration images/captions are only used with --int8")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    model = prepared(model)
    geo = geometry(model, preprocess_cfg)
    names = file_names(name, format, int8)
    options = {"opset": opset, "dynamo": dynamo} if format == "onnx" else {}
    data = None
    if int8:
        data = calib.load_calibration(
            geo,
            images=calibration_images,
            captions=calibration_captions,
            preprocess=preprocess or _transform(preprocess_cfg, geo),
            tokenizer=tokenizer,
        )
    generator = torch.Generator().manual_seed(0)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    try:
        towers: dict[str, TowerExport] = {}
        runners: dict[str, Any] = {}
        modules: dict[str, nn.Module] = {}
        for tower in TOWERS:
            int32 = tower == "text" and _int32_tokens(format)
            module = modules[tower] = tower_module(
                model, tower, normalize, widen_tokens=int32 and format == "coreml"
            )
            example = geo.example(tower, batch=1)
            example = example.int() if int32 else example
            path = staging / names[tower]
            if int8:
                rows, _ = data.split(tower)
                rows = rows.int() if int32 else rows
                fmt.write_int8(module, example, path, tower, _calibration_batches(rows), **options)
            else:
                fmt.write(module, example, path, tower, **options)
            batch = "batch" if fmt.PARITY_BATCH is None else 1
            shape = [batch, 3, geo.height, geo.width] if tower == "image" else [batch, geo.context]
            record = TowerExport(
                str(out_dir / names[tower]),
                tower,
                shape,
                "float32" if tower == "image" else ("int32" if int32 else "int64"),
                f"{tower}_embedding",
                size_bytes=artifact_size(path),
            )
            if check and not _can_run(format):
                embed_dim = int(embed(module, example).shape[-1])
                record.structure = fmt.check_structure(path, tower, [1, *shape[1:]], embed_dim)
            elif check:
                runners[tower] = fmt.load(path, threads)
                if not int8:
                    inputs = geo.random(tower, check_count, generator)
                    inputs = inputs.int() if int32 else inputs
                    got = run_batched(runners[tower], inputs.numpy(), fmt.PARITY_BATCH)
                    want = embed(module, inputs).numpy()
                    if format == "coreml":  # fp16 compute (macOS only): judged like int8, by cosine
                        record.fidelity = {"random_inputs": calib.cosine_summary(got, want)}
                        calib.check_fidelity(
                            names[tower], {"calibration": record.fidelity["random_inputs"]}, min_cosine
                        )
                    else:
                        record.max_abs_diff = check_max_abs_diff(names[tower], got, want, tolerance)
            towers[tower] = record
        fidelity = None
        if int8 and check:
            fidelity = _fidelity(data, modules, runners, fmt.PARITY_BATCH, towers, names, min_cosine, format)
        with torch.no_grad():
            embed_dim = int(modules["text"](geo.example("text").to(example.dtype)).shape[-1])
        config: dict[str, Any] = {
            "model": name,
            "format": format,
            "precision": "int8" if int8 else ("fp16" if format == "coreml" else "fp32"),
            "embed_dim": embed_dim,
            "normalized_embeddings": normalize,
            "logit_scale": float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else None,
            "logit_bias": float(model.logit_bias) if getattr(model, "logit_bias", None) is not None else None,
            **({"opset": opset} if format == "onnx" else {}),
            **{
                tower: {
                    "file": names[tower],
                    "input_name": rec.input_name,
                    "input_shape": rec.input_shape,
                    "input_dtype": rec.input_dtype,
                    "output_name": rec.output_name,
                    "size_bytes": rec.size_bytes,
                    **({"structure": rec.structure} if rec.structure else {}),
                }
                for tower, rec in towers.items()
            },
            "preprocess": preprocess_info((geo.height, geo.width), preprocess_cfg),
            "tokenizer": tokenizer_info(tokenizer, geo.context),
            "parity": {
                "checked": check and _can_run(format),
                "tolerance": None if int8 else tolerance,
                "image_max_abs_diff": towers["image"].max_abs_diff,
                "text_max_abs_diff": towers["text"].max_abs_diff,
                "count": check_count if check and not int8 and _can_run(format) else None,
            },
            "versions": versions(format),
        }
        if int8:
            config["calibration"] = data.source
            config["fidelity"] = {"min_cosine": min_cosine, **(fidelity or {"checked": False})}
        config.update(extra or {})
        write_json(staging / names["sidecar"], config)
        _move_into_place(staging, out_dir, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(towers["image"], towers["text"], str(out_dir / names["sidecar"]), config)


def _fidelity(data, modules, runners, batch, towers, names, min_cosine, format) -> dict[str, Any]:
    """Cosine of int8 to fp32 per tower and split, and zero-shot top-1 agreement; fails below min_cosine."""
    report: dict[str, Any] = {"synthetic_inputs": data.source.get("synthetic", [])}
    int32 = _int32_tokens(format)

    def both(tower: str, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feed = rows.int() if tower == "text" and int32 else rows
        return run_batched(runners[tower], feed.numpy(), batch), embed(modules[tower], feed).numpy()

    for tower in TOWERS:
        calibration_rows, held_rows = data.split(tower)
        tower_report = {
            "calibration": calib.cosine_summary(*both(tower, calibration_rows)),
            "held_out": calib.cosine_summary(*both(tower, held_rows)) if len(held_rows) else None,
        }
        towers[tower].fidelity = tower_report
        report[tower] = tower_report
    if data.labels:
        image_q, image_f = both("image", data.images)
        text_q, text_f = both("text", data.label_tokens)
        report["zero_shot_top1_agreement"] = {
            "labels": len(data.labels),
            "images": len(data.images),
            "int8_image_tower": calib.top1_agreement(image_q, text_f, image_f, text_f),
            "int8_text_tower": calib.top1_agreement(image_f, text_q, image_f, text_f),
            "int8_both": calib.top1_agreement(image_q, text_q, image_f, text_f),
        }
    for tower in TOWERS:
        calib.check_fidelity(names[tower], report[tower], min_cosine)
    return report


def export_model(
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    pretrained: str | None = None,
    format: str = "onnx",
    int8: bool = False,
    calibration_images: str | os.PathLike | None = None,
    calibration_captions: str | os.PathLike | None = None,
    **options: Any,
) -> ExportResult:
    """Export ``model_name`` (with ``pretrained`` tag or local file) as one artifact per tower + sidecar.

    ``format``: onnx, executorch, coreml or litert. Writes ``<name>[.int8].image<suffix>``,
    ``<name>[.int8].text<suffix>`` and ``<name>[.int8].<format>.json`` (preprocessing, tokenizer,
    embed dim, logit scale, format, precision, sizes, parity or int8 fidelity) into ``out_dir``,
    and only after the checks passed (ExportParityError otherwise; nothing moved into place).
    ``options`` go to :func:`export_loaded` (opset, normalize, check, tolerance, min_cosine, ...).
    """
    format_module(format)  # unknown format: fail before loading weights
    _require_exporter(format)
    from ..loading import load_for_inference

    loaded = load_for_inference(model_name, pretrained)
    extra = {
        "pretrained": pretrained
        if pretrained is None or not os.path.isfile(pretrained)
        else Path(pretrained).name,
        "preprocess_source": loaded.preprocess_source,
    }
    return export_loaded(
        loaded.model,
        out_dir,
        name=model_name,
        preprocess_cfg=loaded.preprocess_cfg,
        tokenizer=loaded.tokenizer,
        preprocess=loaded.preprocess,
        format=format,
        int8=int8,
        calibration_images=calibration_images,
        calibration_captions=calibration_captions,
        extra=extra,
        **options,
    )


_EXPORTER_MODULE = {
    "onnx": ("onnx", "onnx"),
    "executorch": ("executorch.exir", "executorch"),
    "coreml": ("coremltools", "coremltools"),
    "litert": ("litert_torch", "litert-torch"),
}


def _require_exporter(format: str) -> None:
    """Fail fast, naming the extra, when the exporter for ``format`` is not installed."""
    module, package = _EXPORTER_MODULE[format]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ExporterUnavailableError(format, package, EXTRA[format])
