"""``optimize(model, backend="onnxruntime" | "openvino")``: both towers as graphs of a CPU runtime,
built once per model and cached on disk, behind the model's own ``encode_image`` / ``encode_text`` /
``forward`` (:class:`RuntimeCLIP`).

Build: the prepared model (:func:`mobileclip2.export.towers.prepared`: reparameterized, affines
folded; never an ``optimize()``d model, whose oneDNN weights tracing cannot read) -> one ONNX graph
per tower (:func:`mobileclip2.export.onnx.write`, dynamic batch) -> ONNX Runtime runs it as it is;
OpenVINO converts it to an IR (:mod:`mobileclip2.export.openvino`). The same loaders as the exports
run them (``load`` of each format module: the runtime's threads follow ``torch.get_num_threads()``
unless ``threads`` is given, and no thread pool spins after a call).

int8 (``int8=True``): the text tower only, where x86 int8 pays off without calibration images:
ONNX Runtime dynamic quantization (no calibration data) or NNCF calibrated on built-in captions
(:func:`~mobileclip2.export.calibration.builtin_calibration_captions`). Image towers gain from int8
only with calibration on real images (NNCF, 3.2x upstream at batch 1; ONNX Runtime QDQ gains nothing
on x86): ``mobileclip2 export --format openvino --int8 --calibration-images DIR``.

Every graph is checked once, when it is built, against the prepared model in PyTorch: fp32 within
1e-4 (max abs difference on random inputs at a batch size other than the traced one), int8 by the
minimum cosine to fp32 on the built-in evaluation captions
(:func:`~mobileclip2.export.calibration.evaluation_captions`), which is
recorded in the cache entry and compared with ``min_cosine`` on every later use.

Cache: ``<cache_dir>/<key>/`` holds ``image.*``, ``text.*`` and ``meta.json`` (what the key was made
of, the checks). The key is a sha256 over the prepared model's tensors (every parameter and buffer,
non-persistent buffers such as a causal mask included) and its structure (each submodule's class and
plain attributes: pooling type, heads, eps, ...), the input geometry, backend, int8 recipe, opset,
:data:`RECIPE_VERSION` and the versions of the packages that shape the graph. So a changed weight, a
changed option or an upgrade never reuses a stale graph; a second process with the same model reuses
it. An entry is built in a staging folder and renamed into place whole; two processes building the
same key take turns on a lock, and the second reuses the first one's entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExporterUnavailableError, ExportParityError
from ..export import onnx as onnx_format
from ..export.calibration import builtin_calibration_captions, evaluation_captions
from ..export.formats import DEFAULT_MIN_COSINE, DEFAULT_OPSET, DEFAULT_TOLERANCE, FORMATS
from ..export.parity import check_max_abs_diff, cosines
from ..export.pipeline import format_module
from ..export.towers import TOWERS, Geometry, embed, geometry, prepared, tower_module
from ..files import default_dir_mode, exclusive_lock, fsync_dir, staging_dir
from ..system import captured_output, package_versions, thread_count

__all__ = [
    "BACKENDS",
    "CACHE_ENV",
    "RECIPE_VERSION",
    "RuntimeCLIP",
    "build_runtime_model",
    "default_cache_dir",
    "require_backend",
]

BACKENDS = {"onnxruntime": "onnx", "openvino": "openvino"}
"""Runtime backends of ``optimize`` -> the export format whose module writes and loads their graphs
(and whose :class:`~mobileclip2.export.formats.FormatSpec` row names the extra to install)."""

RECIPE_VERSION = 2
"""Part of the cache key: raise it when the way graphs are built changes what they compute."""

CACHE_ENV = "MOBILECLIP2_CACHE"
"""A folder for the graph cache, overriding ``$XDG_CACHE_HOME/mobileclip2/graphs``."""

_SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}
_VERSIONED = {
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "openvino", "nncf"),
}
_CLIP_VOCAB = 49408  # OpenAI's CLIP BPE, the tokenizer of every MobileCLIP / MobileCLIP2 model


def default_cache_dir() -> Path:
    """``$MOBILECLIP2_CACHE``, else ``$XDG_CACHE_HOME/mobileclip2/graphs`` (``~/.cache`` without it)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mobileclip2" / "graphs"


def require_backend(backend: str, int8: bool = False) -> None:
    """Raise ValueError for an unknown backend, and ExporterUnavailableError naming the extra for a
    runtime (or, with ``int8``, a quantizer) that is not installed; before any work is done."""
    if backend not in BACKENDS:
        raise ValueError(
            f"optimize(backend={backend!r}): use 'torch' (default), {', '.join(map(repr, BACKENDS))}"
        )
    spec = FORMATS[BACKENDS[backend]]
    missing = spec.missing_requirement(int8)
    if missing is not None:
        what = f"optimize(backend={backend!r}{', int8=True' if int8 else ''})"
        raise ExporterUnavailableError(spec.name, missing, spec.extra, needed_for=what)


# --- the cache key ------------------------------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module: nn.Module) -> dict[str, str]:
    """A module's configuration as far as plain attributes hold it (``pool_type``, ``num_heads``,
    ``eps``, ``normalized_shape``...): what changes the computation without being a tensor."""
    found = {}
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, _PLAIN) or (
            isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)
        ):
            found[name] = repr(value)
    return found


def model_digest(model: nn.Module) -> str:
    """sha256 of every tensor (parameters and all buffers, by name, shape, dtype and bytes) and of
    the module tree (each submodule's class and plain attributes)."""
    digest = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))  # non-persistent ones too (open_clip's causal mask)
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for name, module in model.named_modules():
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        digest.update(json.dumps([name, kind, _plain_attributes(module)]).encode())
    return digest.hexdigest()


def _tokens_digest(tokens: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, rows in sorted(tokens.items()):
        digest.update(name.encode() + rows.numpy().tobytes())
    return digest.hexdigest()


def cache_key(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


# --- building and checking the graphs -----------------------------------------------------------


def _default_tokenizer(geo: Geometry) -> Callable[[Sequence[str]], torch.Tensor]:
    if geo.vocab != _CLIP_VOCAB:
        raise ValueError(
            f"optimize(int8=True) calibrates and checks the int8 text graph on built-in captions, and "
            f"this model's vocabulary ({geo.vocab} ids) is not CLIP's BPE ({_CLIP_VOCAB}): pass its "
            "tokenizer, optimize(..., tokenizer=open_clip.get_tokenizer(name))"
        )
    import open_clip

    return lambda texts: open_clip.tokenize(list(texts), context_length=geo.context)


def _caption_tokens(geo: Geometry, tokenizer) -> dict[str, torch.Tensor]:
    tokenizer = tokenizer or _default_tokenizer(geo)
    return {
        "calibration": tokenizer(builtin_calibration_captions()).long(),
        "check": tokenizer(evaluation_captions()).long(),
    }


def _int8_check(label: str, summary: dict[str, Any], min_cosine: float | None) -> None:
    if min_cosine is not None and not summary["min_cosine"] >= min_cosine:
        raise ExportParityError(
            f"{label}: the int8 text graph's embeddings of {summary['captions']} built-in captions reach a "
            f"minimum cosine of {summary['min_cosine']:.4f} to fp32, below min_cosine={min_cosine}. "
            "Use the fp32 graph (int8=False), or the other backend's int8 recipe; pass a lower "
            "min_cosine only if you measured that your task tolerates it."
        )


def _build_tower(
    backend: str,
    module: nn.Module,
    geo: Geometry,
    tower: str,
    int8: bool,
    work: Path,
    tokens: dict[str, torch.Tensor] | None,
    threads: int,
    min_cosine: float | None,
) -> dict[str, Any]:
    """Write one tower's graph into ``work`` and check it; returns its record for meta.json."""
    quantized = int8 and tower == "text"
    fp32 = work / f"{tower}.fp32.onnx"
    final = work / f"{tower}{_SUFFIX[backend]}"
    with captured_output():  # tracer notes, quantizer and NNCF progress: shown only on failure
        onnx_format.write(module, geo.example(tower), fp32, tower, opset=DEFAULT_OPSET)
        if backend == "onnxruntime":
            if quantized:
                onnx_format.quantize_text_dynamic(fp32, final)
            else:
                os.replace(fp32, final)
        else:
            from ..export import openvino

            rows = [row.numpy() for row in tokens["calibration"].split(1)] if quantized else ()
            openvino.write_from_onnx(fp32, final, tower, rows)
        fp32.unlink(missing_ok=True)
        run = _load(backend, final, threads)
    files = sorted(p.name for p in work.glob(f"{tower}.*"))
    label = f"optimize(backend={backend!r}) {tower} graph"
    if quantized:
        want = embed(module, tokens["check"]).numpy()
        values = cosines(run(tokens["check"].numpy()), want)
        summary = {
            "int8": "dynamic" if backend == "onnxruntime" else "nncf",
            "captions": len(values),
            "min_cosine": float(values.min()),
            "mean_cosine": float(values.mean()),
        }
        _int8_check(label, summary, min_cosine)
        return {"files": files, **summary}
    inputs = geo.random(tower, 3, torch.Generator().manual_seed(0))  # traced at batch 2
    diff = check_max_abs_diff(label, run(inputs.numpy()), embed(module, inputs).numpy(), DEFAULT_TOLERANCE)
    return {"files": files, "max_abs_diff": diff}


def _load(backend: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The graph in its runtime, through the loader the exports use."""
    return format_module(BACKENDS[backend]).load(path, threads)


def _complete(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json when it and every file it lists exist, else None."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = [name for record in meta.get("towers", {}).values() for name in record.get("files", [])]
    return meta if files and all((entry / name).is_file() for name in files) else None


def _cached_entry(
    root: Path, key: str, build: Callable[[Path], dict[str, Any]], description: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """The complete cache entry ``root/key``, building it first when there is none."""
    entry = root / key
    meta = _complete(entry)
    if meta is not None:
        return entry, meta
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(entry, wait=math.inf):  # a second builder waits, then reuses the first's entry
        meta = _complete(entry)
        if meta is not None:
            return entry, meta
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (a file deleted by hand)
        with staging_dir(entry) as work:
            meta = {"key": key, **description, "towers": build(work)}
            (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            os.chmod(work, default_dir_mode())  # mkdtemp's 0700 would hide a shared cache from others
            os.replace(work, entry)
            fsync_dir(root)
    return entry, meta


def build_runtime_model(
    model: nn.Module,
    backend: str,
    *,
    int8: bool = False,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None,
    min_cosine: float | None = DEFAULT_MIN_COSINE,
) -> RuntimeCLIP:
    """:class:`RuntimeCLIP` of ``model`` on ``backend``, its graphs from the cache or built into it
    (see the module docs); the implementation of ``optimize(model, backend=...)``."""
    if not isinstance(int8, bool):
        raise ValueError(
            f"optimize(int8={int8!r}): True (int8 text tower) or False; an int8 image tower needs real "
            "calibration images: mobileclip2 export --format openvino --int8 --calibration-images DIR"
        )
    require_backend(backend, int8)
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors) or any(
        t.is_floating_point() and t.dtype != torch.float32 for t in tensors
    ):
        raise ValueError(
            f"optimize(backend={backend!r}) builds CPU graphs from a float32 model on the CPU; pass "
            "model.float().cpu() (the graphs compute in fp32 whatever the model's dtype was)"
        )
    threads = thread_count(threads)
    ready = prepared(model)
    geo = geometry(ready, dict(getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}))
    tokens = _caption_tokens(geo, tokenizer) if int8 else None
    description = {
        "model": model_digest(ready),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "geometry": [geo.height, geo.width, geo.context, geo.vocab],
        "backend": backend,
        "int8": ("text-dynamic" if backend == "onnxruntime" else "text-nncf") if int8 else None,
        "captions": _tokens_digest(tokens) if tokens else None,
        "opset": DEFAULT_OPSET,
        "recipe": RECIPE_VERSION,
        "versions": package_versions(*_VERSIONED[backend], "open_clip_torch", "timm", "mobileclip2"),
    }
    key = cache_key(description)

    def build(work: Path) -> dict[str, Any]:
        return {
            tower: _build_tower(
                backend, tower_module(ready, tower), geo, tower, int8, work, tokens, threads, min_cosine
            )
            for tower in TOWERS
        }

    entry, meta = _cached_entry(
        Path(cache_dir) if cache_dir else default_cache_dir(), key, build, description
    )
    if int8:  # built under another threshold, maybe
        _int8_check(f"{entry / meta['towers']['text']['files'][0]}", meta["towers"]["text"], min_cosine)
    runners = {}
    for tower in TOWERS:
        graph = next(n for n in meta["towers"][tower]["files"] if n.endswith(_SUFFIX[backend]))
        runners[tower] = _load(backend, entry / graph, threads)
    return RuntimeCLIP(model, runners, geo, {"cache_entry": str(entry), "threads": threads, **meta})


class RuntimeCLIP(nn.Module):
    """An open_clip CLIP's ``encode_image`` / ``encode_text`` / ``forward`` computed by a CPU runtime.

    Takes torch tensors of any batch size (images of the model's size, float; token ids, any integer
    dtype) and returns float32 torch tensors on the input's device. ``info`` says where the graphs are
    cached, with how many threads they run, and how they checked against PyTorch. An inference
    artifact: no parameters to train, nothing to save (the graphs live in the cache)."""

    def __init__(
        self,
        model: nn.Module,
        runners: dict[str, Callable[[np.ndarray], np.ndarray]],
        geo: Geometry,
        info: dict[str, Any],
    ):
        super().__init__()
        self._runners = runners
        self.geometry = geo
        self.info = info
        self.backend = info["backend"]
        self.output_dict = bool(getattr(model, "output_dict", False))
        for name in ("logit_scale", "logit_bias"):
            value = getattr(model, name, None)
            if isinstance(value, torch.Tensor):
                value = nn.Parameter(value.detach().cpu().clone().float(), requires_grad=False)
            setattr(self, name, value)
        self.eval()

    def _run(self, tower: str, inputs: torch.Tensor, normalize: bool) -> torch.Tensor:
        geo = self.geometry
        want = (3, geo.height, geo.width) if tower == "image" else (geo.context,)
        if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape[1:]) != want or len(inputs) == 0:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(
                f"encode_{tower} of this {self.backend} graph takes a [batch, {', '.join(map(str, want))}] "
                f"tensor with batch >= 1, got {got}"
            )
        array = inputs.detach().cpu()
        array = array.float() if tower == "image" else array.long()
        out = torch.from_numpy(self._runners[tower](np.ascontiguousarray(array.numpy())))
        if normalize:
            out = nn.functional.normalize(out, dim=-1)
        return out.to(inputs.device)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._run("image", image, normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._run("text", text, normalize)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """As open_clip's ``CLIP.forward``: normalized features and the logit scale (and bias)."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = self.logit_scale.exp() if isinstance(self.logit_scale, torch.Tensor) else None
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, scale, self.logit_bias
        return image_features, text_features, scale

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, cache_entry={self.info['cache_entry']!r}"
