"""Export the image and text towers as separate ONNX graphs, with a parity check and a JSON sidecar.

Users deploy MobileCLIP towers separately (embed a photo library once, embed queries on demand;
open_clip #186, immich #4700), so each tower is its own graph with a dynamic batch axis:

    <out>/<name>.image.onnx   image [B, 3, H, W] float32 (already preprocessed) -> image_embedding [B, D]
    <out>/<name>.text.onnx    text  [B, context] int64 (tokenizer output)        -> text_embedding  [B, D]
    <out>/<name>.json         preprocessing, tokenizer, embed dim, logit scale, parity results

The model is reparameterized (mobileclip2.reparameterize) before export, never the training-time
graph. Embeddings are not normalized unless ``normalize=True`` (the JSON says which).

Exporter: torch 2.14's default (``dynamo=True``) needs the extra package ``onnxscript``; the
TorchScript exporter (``dynamo=False``) still works, needs nothing extra and handles every model
here, MobileCLIP-S0's MCt tower included, so it is the default. Two details matter for it:
nn.MultiheadAttention's inference fast path (``aten::_native_multi_head_attention``) has no ONNX
symbolic, so it is switched off while tracing; and the traced wrapper must be in eval mode, or the
exporter's mode restore flips the model to training mode (BatchNorm then uses batch statistics).
Pass ``dynamo=True`` to use the new exporter when onnxscript is installed.

The parity check runs both graphs in onnxruntime on random inputs (a batch size other than the one
traced, so the dynamic axis is exercised) and compares with PyTorch; above ``tolerance`` (1e-4 by
default) it raises ExportParityError with the measured maximum absolute difference.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import MobileCLIP2Error

__all__ = [
    "FORMATS",
    "ExportParityError",
    "ExportResult",
    "TowerExport",
    "check_onnx_parity",
    "export",
    "export_model",
    "export_tower",
    "image_encoder",
    "text_encoder",
]

FORMATS = ("onnx",)
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


class ExportParityError(MobileCLIP2Error, RuntimeError):
    """An exported graph disagrees with PyTorch by more than the tolerance."""


class _Encoder(nn.Module):
    """One tower of an open_clip model as a module with a single tensor in and out."""

    def __init__(self, model: nn.Module, tower: str, normalize: bool):
        super().__init__()
        self.model = model
        self.tower = tower
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encode = self.model.encode_image if self.tower == "image" else self.model.encode_text
        return encode(x, normalize=self.normalize)


def image_encoder(model: nn.Module, normalize: bool = False) -> nn.Module:
    """``model.encode_image`` as an eval-mode module (shares the model's weights)."""
    return _Encoder(model, "image", normalize).eval()


def text_encoder(model: nn.Module, normalize: bool = False) -> nn.Module:
    """``model.encode_text`` as an eval-mode module (shares the model's weights)."""
    return _Encoder(model, "text", normalize).eval()


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Switch off nn.MultiheadAttention's fused inference kernel, which the TorchScript exporter and
    FLOP counting cannot see through (same math, plain ops)."""
    backend = getattr(torch.backends, "mha", None)
    if backend is None or not hasattr(backend, "set_fastpath_enabled"):  # torch < 2.1: no fast-path switch
        yield
        return
    previous = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(previous)


def export_tower(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    input_name: str,
    output_name: str,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> Path:
    """Write ``module`` (one tensor in, one out) as ONNX with a dynamic batch axis; returns the path."""
    import warnings

    path = Path(path)
    module = module.eval()
    with torch.no_grad(), mha_fastpath_disabled(), warnings.catch_warnings():
        # The deprecation notice for the TorchScript exporter and tracer notes about Python-level
        # shape checks are expected here; the parity check is what vouches for the graph.
        warnings.simplefilter("ignore")
        if dynamo:
            axes = dict(dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        else:
            axes = dict(
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}}, do_constant_folding=True
            )
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=dynamo,
            **axes,
        )
    return path


def check_onnx_parity(
    path: str | os.PathLike,
    module: nn.Module,
    inputs: torch.Tensor,
    tolerance: float | None = DEFAULT_TOLERANCE,
) -> float:
    """Max |onnxruntime - PyTorch| over ``inputs``; raises ExportParityError above ``tolerance``."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError(
            "the ONNX parity check needs onnxruntime: pip install 'mobileclip2[export]'"
        ) from error
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    with torch.no_grad():
        torch_out = module.eval()(inputs)
    diff = float((torch.from_numpy(onnx_out) - torch_out).abs().max())
    if tolerance is not None and not diff <= tolerance:  # NaN fails too
        raise ExportParityError(
            f"{Path(path).name}: onnxruntime and PyTorch differ by up to {diff:.3g} (tolerance {tolerance:g}) "
            f"on a batch of {inputs.shape[0]}. The graph was kept for inspection; please report this with "
            "your torch/onnx/onnxruntime versions."
        )
    return diff


@dataclass
class TowerExport:
    path: str
    input_name: str
    input_shape: list[Any]
    input_dtype: str
    output_name: str
    max_abs_diff: float | None = None


@dataclass
class ExportResult:
    """What :func:`export` wrote; ``config`` is the JSON sidecar's content."""

    image: TowerExport
    text: TowerExport
    config_path: str
    config: dict[str, Any] = field(default_factory=dict)


def _image_size(model: nn.Module, preprocess_cfg: dict[str, Any]) -> tuple[int, int]:
    size = preprocess_cfg.get("size") or getattr(model.visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _tokenizer_info(tokenizer: Any, context_length: int) -> dict[str, Any]:
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


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    name: str,
    preprocess_cfg: dict[str, Any],
    tokenizer: Any = None,
    extra: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    normalize: bool = False,
    check: bool = True,
    tolerance: float | None = DEFAULT_TOLERANCE,
    check_batch_size: int = 3,
    dynamo: bool = False,
) -> ExportResult:
    """Export both towers of an already built open_clip model; see :func:`export`."""
    from .reparam import reparameterize

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = reparameterize(copy.deepcopy(model).eval(), inplace=True)
    model.requires_grad_(False)
    height, width = _image_size(model, preprocess_cfg)
    text_tower = getattr(model, "text", model)
    context = int(getattr(text_tower, "context_length", None) or getattr(model, "context_length", 77))
    vocab = int(getattr(text_tower, "vocab_size", None) or getattr(model, "vocab_size", 49408))
    generator = torch.Generator().manual_seed(0)

    towers = {}
    for tower, make, example, input_name, shape, dtype in (
        (
            "image",
            image_encoder,
            torch.zeros(2, 3, height, width),
            "image",
            ["batch", 3, height, width],
            "float32",
        ),
        ("text", text_encoder, torch.ones(2, context, dtype=torch.long), "text", ["batch", context], "int64"),
    ):
        module = make(model, normalize=normalize)
        path = export_tower(
            module, example, out_dir / f"{name}.{tower}.onnx", input_name, f"{tower}_embedding", opset, dynamo
        )
        record = TowerExport(str(path), input_name, shape, dtype, f"{tower}_embedding")
        if check:
            if tower == "image":
                inputs = torch.randn(check_batch_size, 3, height, width, generator=generator)
            else:
                inputs = torch.randint(1, vocab, (check_batch_size, context), generator=generator)
            record.max_abs_diff = check_onnx_parity(path, module, inputs, tolerance)
        towers[tower] = record

    with torch.no_grad():
        embed_dim = int(model.encode_text(torch.ones(1, context, dtype=torch.long)).shape[-1])
    config: dict[str, Any] = {
        "model": name,
        "format": "onnx",
        "opset": opset,
        "embed_dim": embed_dim,
        "normalized_embeddings": normalize,
        "logit_scale": float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else None,
        "logit_bias": float(model.logit_bias) if getattr(model, "logit_bias", None) is not None else None,
        "image": {
            **{k: v for k, v in asdict(towers["image"]).items() if k != "path"},
            "file": Path(towers["image"].path).name,
        },
        "text": {
            **{k: v for k, v in asdict(towers["text"]).items() if k != "path"},
            "file": Path(towers["text"].path).name,
        },
        "preprocess": {
            "size": [height, width],
            "mean": list(preprocess_cfg.get("mean", ())),
            "std": list(preprocess_cfg.get("std", ())),
            "interpolation": preprocess_cfg.get("interpolation"),
            "resize_mode": preprocess_cfg.get("resize_mode"),
            "description": "RGB, resize (resize_mode 'shortest': shorter side to size, then center crop), "
            "to float in [0, 1], then (x - mean) / std per channel, NCHW",
        },
        "tokenizer": _tokenizer_info(tokenizer, context),
        "parity": {
            "tolerance": tolerance,
            "image_max_abs_diff": towers["image"].max_abs_diff,
            "text_max_abs_diff": towers["text"].max_abs_diff,
            "batch_size": check_batch_size if check else None,
        },
        "versions": _versions(),
    }
    config.update(extra or {})
    config_path = out_dir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        image=towers["image"], text=towers["text"], config_path=str(config_path), config=config
    )


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"torch": torch.__version__}
    for dist in ("open_clip_torch", "timm", "onnx", "onnxruntime", "mobileclip2"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def export(
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    pretrained: str | None = None,
    format: str = "onnx",
    opset: int = DEFAULT_OPSET,
    normalize: bool = False,
    check: bool = True,
    tolerance: float | None = DEFAULT_TOLERANCE,
    dynamo: bool = False,
) -> ExportResult:
    """Export ``model_name`` (with ``pretrained`` tag or local file) as image and text ONNX graphs.

    Writes ``<name>.image.onnx``, ``<name>.text.onnx`` and ``<name>.json`` (preprocessing: size,
    mean/std, interpolation, resize mode; tokenizer settings; embed dim; logit scale; parity) into
    ``out_dir``. With ``check`` (default) each graph is run in onnxruntime against PyTorch and an
    ExportParityError is raised when they differ by more than ``tolerance``.
    """
    if format not in FORMATS:
        raise ValueError(f"unsupported export format {format!r}; supported: {', '.join(FORMATS)}")
    from .loading import load_for_inference

    loaded = load_for_inference(model_name, pretrained)
    extra = {
        "pretrained": pretrained
        if pretrained is None or not os.path.isfile(pretrained)
        else Path(pretrained).name,
        "preprocess_source": loaded.preprocess_source,
    }
    return export_model(
        loaded.model,
        out_dir,
        name=model_name,
        preprocess_cfg=loaded.preprocess_cfg,
        tokenizer=loaded.tokenizer,
        extra=extra,
        opset=opset,
        normalize=normalize,
        check=check,
        tolerance=tolerance,
        dynamo=dynamo,
    )
