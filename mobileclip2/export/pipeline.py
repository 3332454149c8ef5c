"""Export both towers of a model to one format, check them, and only then move them into place.

Everything is written into a staging folder beside the outputs (:func:`mobileclip2.files.staging_dir`).
Only after every check passed are the artifacts moved to their final names with ``os.replace``, the
sidecar last; the previous export's sidecar is removed first, so at any moment a sidecar under its
final name describes complete, checked artifacts. A failed check leaves the previous export intact;
a killed process leaves only its staging folder, which the next export of the same name removes.

What differs between formats is data (:mod:`.formats`); this module has no per-format branches.
File names: ``<name>[.int8].<tower><suffix>`` and ``<name>[.int8].<format>.json``.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExporterUnavailableError
from ..files import fsync_dir, staging_dir
from ..system import captured_output
from . import calibration as calib
from . import precision as precisions
from .formats import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_COSINE,
    DEFAULT_TOLERANCE,
    FORMATS,
    FormatSpec,
    format_spec,
)
from .parity import check_max_abs_diff, run_batched
from .sidecar import artifact_size, preprocess_info, tokenizer_info, versions, write_json
from .towers import TOWERS, embed, geometry, prepared, tower_module

__all__ = ["ExportResult", "TowerExport", "export_loaded", "export_model", "file_names", "format_module"]


@dataclass
class TowerExport:
    path: str
    input_name: str
    input_shape: list[Any]
    input_dtype: str
    output_name: str
    precision: str = "fp32"
    size_bytes: int = 0
    max_abs_diff: float | None = None
    fidelity: dict[str, Any] | None = None
    structure: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None  # the quantization recipe the format applied
    fp16_check: dict[str, Any] | None = None  # :func:`.precision.fp16_check` where it decided or was asked


@dataclass
class ExportResult:
    """What an export wrote; ``config`` is the JSON sidecar's content."""

    image: TowerExport
    text: TowerExport
    config_path: str
    config: dict[str, Any] = field(default_factory=dict)


def file_names(name: str, format: str, int8: bool = False) -> dict[str, str]:
    """Final file names of an export: one per tower (its artifact) and the sidecar."""
    spec = format_spec(format)
    stem = f"{name}.int8" if int8 else name
    return {**{t: f"{stem}.{t}{spec.suffix}" for t in TOWERS}, "sidecar": f"{stem}.{format}.json"}


def format_module(format: str):
    """The module that writes, runs and checks ``format``."""
    return importlib.import_module(f"{__package__}.{format_spec(format).module}")


def _artifact_files(spec: FormatSpec, artifact: str) -> list[str]:
    """The artifact and the files that belong to it (same stem, the format's companion suffixes)."""
    stem = artifact[: -len(spec.suffix)]
    return [artifact, *(stem + suffix for suffix in spec.companions)]


def _move_into_place(staging: Path, out_dir: Path, names: dict[str, str], spec: FormatSpec) -> None:
    sidecar = out_dir / names["sidecar"]
    sidecar.unlink(missing_ok=True)  # never a sidecar next to a mix of old and new artifacts
    for tower in TOWERS:
        for file_name in _artifact_files(spec, names[tower]):
            final = out_dir / file_name
            if final.is_dir():  # a Core ML package: os.replace cannot replace a non-empty folder
                shutil.rmtree(final)
            os.replace(staging / file_name, final)
    os.replace(staging / names["sidecar"], sidecar)
    fsync_dir(out_dir)


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


def _format_options(spec: FormatSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The format's own options: its defaults, overridden by ``options``; unknown ones are an error."""
    defaults = dict(spec.options)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "none"
        raise ValueError(f"export options {unknown} do not apply to {spec.name} (it takes: {takes})")
    return {**defaults, **options}


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
    normalize: bool = False,
    check: bool = True,
    tolerance: float | None = DEFAULT_TOLERANCE,
    min_cosine: float | None = DEFAULT_MIN_COSINE,
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT,
    check_count: int = 3,
    threads: int | None = None,
    **options: Any,
) -> ExportResult:
    """Export both towers of an already built open_clip model; see :func:`export_model`.

    ``options`` are the format's own (:attr:`FormatSpec.options`, e.g. ``opset`` for ONNX). A format
    that takes ``compute_precision`` gets it per tower (:func:`.precision.choose`: ``"auto"`` runs the
    text tower's fp16 check). int8 needs ``tokenizer``: the int8 text tower is evaluated on the
    built-in captions.
    """
    spec = format_spec(format)
    options = _format_options(spec, options)
    if int8 and not spec.int8:
        int8_formats = ", ".join(f.name for f in FORMATS.values() if f.int8)
        raise ValueError(f"--int8 is supported for {int8_formats}, not {format!r}")
    if not int8 and (calibration_images or calibration_captions):
        raise ValueError("calibration images/captions are only used with --int8")
    if int8 and tokenizer is None:
        raise ValueError(
            "an int8 export needs the model's tokenizer (tokenizer=open_clip.get_tokenizer(name)): the int8 "
            "text tower is evaluated on the built-in captions"
        )
    fmt = format_module(format)
    out_dir = Path(out_dir)
    model = prepared(model)
    geo = geometry(model, preprocess_cfg)
    names = file_names(name, format, int8)
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
    checked = check and spec.runs_here()
    captions = None  # the evaluation captions, tokenized once, when a precision check needs them
    if "compute_precision" in options and tokenizer is not None:
        captions = tokenizer(calib.evaluation_captions()).long()
    with staging_dir(out_dir / names["sidecar"]) as staging:
        towers: dict[str, TowerExport] = {}
        runners: dict[str, Any] = {}
        modules: dict[str, nn.Module] = {}
        for tower in TOWERS:
            int32 = tower == "text" and spec.int32_tokens
            module = modules[tower] = tower_module(
                model, tower, normalize, widen_tokens=int32 and spec.widen_tokens
            )
            example = geo.example(tower, batch=1)
            example = example.int() if int32 else example
            path = staging / names[tower]
            tower_options, fp16_check = dict(options), None
            tower_precision = "int8" if int8 else spec.precision
            if "compute_precision" in options:  # reduced-precision formats: fp16 only where it is safe
                tower_precision, fp16_check = precisions.choose(
                    names[tower], tower, options["compute_precision"], module, captions
                )
                tower_options["compute_precision"] = tower_precision
            recipe = None
            with captured_output():  # exporters print pages of progress and notes; shown on failure
                if int8:
                    rows, _ = data.split(tower)
                    rows = rows.int() if int32 else rows
                    recipe = fmt.write_int8(module, example, path, tower, list(rows.split(8)), **options)
                else:
                    fmt.write(module, example, path, tower, **tower_options)
            batch = 1 if spec.fixed_batch else "batch"
            shape = [batch, 3, geo.height, geo.width] if tower == "image" else [batch, geo.context]
            record = TowerExport(
                str(out_dir / names[tower]),
                tower,
                shape,
                "float32" if tower == "image" else ("int32" if int32 else "int64"),
                f"{tower}_embedding",
                precision=tower_precision,
                size_bytes=sum(artifact_size(staging / f) for f in _artifact_files(spec, names[tower])),
                int8=recipe,
                fp16_check=fp16_check,
            )
            parity_batch = 1 if spec.fixed_batch else None
            if check and not spec.runs_here():
                embed_dim = int(embed(module, example).shape[-1])
                with captured_output():
                    record.structure = fmt.check_structure(
                        path, tower, [1, *shape[1:]], embed_dim, precision=tower_precision
                    )
            elif check:
                with captured_output():
                    runners[tower] = fmt.load(path, threads)
                if not int8:
                    inputs = geo.random(tower, check_count, generator)
                    inputs = inputs.int() if int32 else inputs
                    got = run_batched(runners[tower], inputs.numpy(), parity_batch)
                    want = embed(module, inputs).numpy()
                    if spec.precision == "fp32":
                        record.max_abs_diff = check_max_abs_diff(names[tower], got, want, tolerance)
                    else:  # reduced-precision compute is judged like int8, by cosine
                        record.fidelity = {"random_inputs": calib.cosine_summary(got, want)}
                        calib.check_fidelity(
                            names[tower],
                            record.fidelity,
                            min_cosine,
                            what=tower_precision,
                            remedy="Export with --precision fp32.",
                        )
            towers[tower] = record
        fidelity = None
        if int8 and check:
            fidelity = _fidelity(data, modules, runners, spec, towers, names, min_cosine, min_agreement)
        with torch.no_grad():
            embed_dim = int(modules["text"](geo.example("text").to(example.dtype)).shape[-1])
        config: dict[str, Any] = {
            "model": name,
            "format": format,
            "precision": _overall_precision(towers),
            **(
                {"runtime_options": dict(spec.runtime_options)}  # what the artifact cannot carry itself
                if spec.runtime_options
                else {}
            ),
            "embed_dim": embed_dim,
            "normalized_embeddings": normalize,
            "logit_scale": float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else None,
            "logit_bias": float(model.logit_bias) if getattr(model, "logit_bias", None) is not None else None,
            **options,
            **{
                tower: {
                    "file": names[tower],
                    **(
                        {"companion_files": _artifact_files(spec, names[tower])[1:]}
                        if spec.companions
                        else {}
                    ),
                    "input_name": rec.input_name,
                    "input_shape": rec.input_shape,
                    "input_dtype": rec.input_dtype,
                    "output_name": rec.output_name,
                    "precision": rec.precision,
                    "size_bytes": rec.size_bytes,
                    **({"int8": rec.int8} if rec.int8 else {}),
                    **({"fp16_check": rec.fp16_check} if rec.fp16_check else {}),
                    **({"structure": rec.structure} if rec.structure else {}),
                }
                for tower, rec in towers.items()
            },
            "preprocess": preprocess_info((geo.height, geo.width), preprocess_cfg),
            "tokenizer": tokenizer_info(tokenizer, geo.context),
            "parity": {
                "checked": checked,
                "tolerance": None if int8 else tolerance,
                "image_max_abs_diff": towers["image"].max_abs_diff,
                "text_max_abs_diff": towers["text"].max_abs_diff,
                "count": check_count if checked and not int8 else None,
            },
            "versions": versions(spec.distributions),
        }
        if int8:
            config["calibration"] = data.source
            config["fidelity"] = {
                "min_cosine": min_cosine,
                "gate": "minimum cosine over every evaluated input: calibration, held out, built-in captions",
                "min_agreement": min_agreement,
                **(fidelity or {"checked": False}),
            }
        config.update(extra or {})
        write_json(staging / names["sidecar"], config)
        _move_into_place(staging, out_dir, names, spec)
    return ExportResult(towers["image"], towers["text"], str(out_dir / names["sidecar"]), config)


def _overall_precision(towers: dict[str, TowerExport]) -> str:
    """The towers' common precision, or ``"mixed"`` (each tower's own is in its block)."""
    found = {record.precision for record in towers.values()}
    return found.pop() if len(found) == 1 else "mixed"


def _fidelity(data, modules, runners, spec, towers, names, min_cosine, min_agreement) -> dict[str, Any]:
    """Cosine of int8 to fp32 per tower and evaluated set (:meth:`.calibration.CalibrationSet.evaluation`:
    calibration, held out, the built-in captions), and zero-shot top-1 agreement; fails when the minimum
    cosine or an agreement is below its threshold, naming the tower, the set and the number."""
    report: dict[str, Any] = {"synthetic_inputs": data.source.get("synthetic", [])}
    batch = 1 if spec.fixed_batch else None

    def both(tower: str, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feed = rows.int() if tower == "text" and spec.int32_tokens else rows
        return run_batched(runners[tower], feed.numpy(), batch), embed(modules[tower], feed).numpy()

    for tower in TOWERS:
        tower_report: dict[str, Any] = {"calibration": None, "held_out": None}  # None: an empty set
        for name, rows in data.evaluation(tower).items():
            tower_report[name] = calib.cosine_summary(*both(tower, rows), rows if tower == "text" else None)
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
    if "zero_shot_top1_agreement" in report:
        calib.check_agreement(names, report["zero_shot_top1_agreement"], min_agreement)
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

    ``format``: a name of :data:`mobileclip2.export.formats.FORMATS`. Writes
    ``<name>[.int8].image<suffix>``, ``<name>[.int8].text<suffix>`` and ``<name>[.int8].<format>.json``
    (preprocessing, tokenizer, embed dim, logit scale, format, precision, sizes, parity or int8
    fidelity) into ``out_dir``, and only after the checks passed (ExportParityError otherwise;
    nothing moved into place). ``options`` go to :func:`export_loaded` (normalize, check, tolerance,
    min_cosine, min_agreement, the format's own options such as opset, ...).
    """
    spec = format_spec(format)  # unknown format: fail before loading weights
    missing = spec.missing_requirement(int8)
    if missing is not None:
        raise ExporterUnavailableError(format, missing, spec.extra)
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
