"""``optimize(model)``: the steps of this package put together, for CPU and CUDA.

Step 1 reparameterizes (:func:`mobileclip2.reparameterize`), step 2 folds affines
(:mod:`.fold`), step 3 stops causal text towers early (:mod:`.causal_text`), step 4 swaps in oneDNN
layers on CPU in fp32 (:mod:`.onednn`); on other devices and dtypes, step 5 (here) casts, switches
the image tower to channels-last and compiles each tower. ``backend="onnxruntime" | "openvino"``
hands both towers to a CPU runtime instead (:mod:`.backends`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..export.formats import DEFAULT_MIN_COSINE
from ..reparam import reparameterize
from .causal_text import CausalPrefixText, truncate_causal_text
from .common import ImageInput, block_types
from .fold import fold_affines
from .onednn import onednn_available, use_onednn

__all__ = ["BACKENDS", "COMPILE_MODES", "optimize"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)``, except norms that compute in fp32 (open_clip's LayerNormFp32) keep fp32
    weights: their forward upcasts the input and would otherwise meet low-precision weights."""
    model.to(dtype)
    for module in model.modules():
        if isinstance(module, block_types().fp32_norm):
            module.float()


def _compile_mode(compile: bool | str) -> str | None:
    if compile is False or compile is None:
        return None
    mode = "default" if compile is True else compile
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"optimize(compile={compile!r}): use True/False or one of {', '.join(COMPILE_MODES)}"
        )
    return mode


def _compile_towers(model: nn.Module, mode: str) -> None:
    """torch.compile each tower (``torch.compile(model)`` would compile only ``forward``, which
    ``encode_image`` / ``encode_text`` never call)."""
    for attr in ("visual", "text", "transformer"):
        tower = getattr(model, attr, None)
        if isinstance(tower, CausalPrefixText):  # the prefix length is decided outside the graph
            tower.encoder = torch.compile(tower.encoder, mode=mode, dynamic=False)
        elif isinstance(tower, nn.Module):
            setattr(model, attr, torch.compile(tower, mode=mode, dynamic=False))


def _parameter_devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def _parameters_on_cpu_fp32(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    return all(t.device.type == "cpu" for t in tensors) and all(t.dtype == torch.float32 for t in floats)


BACKENDS = ("torch", "onnxruntime", "openvino")


def optimize(
    model: nn.Module,
    *,
    backend: str = "torch",
    int8: bool = False,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None,
    min_cosine: float | None = DEFAULT_MIN_COSINE,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    onednn: bool | None = None,
    compile: bool | str = False,
    truncate_text: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """The fastest numerically faithful inference version of an open_clip CLIP model.

    Args:
        model: a model from ``open_clip.create_model`` (MobileCLIP/MobileCLIP2 or any other CLIP),
            fused or not, on the device it should run on; it is put in eval mode.
        backend: ``"torch"`` (default): the steps of the module docs, in PyTorch.
            ``"onnxruntime"`` / ``"openvino"``: both towers as graphs of that CPU runtime, built from
            the fp32 model once and cached on disk (:mod:`.backends`), behind the same
            ``encode_image`` / ``encode_text`` / ``forward``; fp32 graphs match the unfused model
            within 1e-4. Needs ``pip install 'mobileclip2[export]'`` / ``'mobileclip2[openvino]'``.
        int8: runtime backends only: an int8 text tower (ONNX Runtime: dynamic quantization;
            OpenVINO: NNCF calibrated on built-in captions), checked at build time against fp32 on
            held-out built-in captions; raises below ``min_cosine`` (minimum cosine).
        threads: runtime backends: the runtime's thread count (default: ``torch.get_num_threads()``).
        cache_dir: runtime backends: where graphs are cached (default: ``$MOBILECLIP2_CACHE``, else
            ``$XDG_CACHE_HOME/mobileclip2/graphs``, ``~/.cache/mobileclip2/graphs``).
        tokenizer: ``int8=True``: the model's tokenizer for the built-in captions (default: CLIP's,
            which every MobileCLIP model uses).
        min_cosine: ``int8=True``: the lowest acceptable cosine of int8 to fp32 text embeddings.
        dtype: cast to this dtype (``torch.bfloat16`` / ``torch.float16`` on GPUs); ``None`` keeps
            the model's. Images may still be passed in fp32: they are cast on the way in.
        channels_last: image tower in channels-last memory format; ``None`` (default) means yes
            on CUDA (the oneDNN path on CPU is channels-last anyway).
        onednn: use oneDNN layers with prepacked weights (step 4 of the module docs). ``None``
            (default) uses them when the model is on CPU in float32, not compiled, and this torch
            has the ops; ``True`` insists and raises if that is impossible; ``False`` skips them.
        compile: ``torch.compile`` each tower: ``True`` (mode ``"default"``) or a mode name;
            ``"reduce-overhead"`` adds CUDA graphs (small batches on CUDA). Does not compose with
            oneDNN layers, and on CPU is no faster than they are (so they are the CPU default).
        truncate_text: step 3 (causal text towers stop at the end-of-text token).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        A model with the same ``encode_image`` / ``encode_text`` / ``forward``; in fp32 its
        embeddings match the unfused model within 1e-4. Run it under ``torch.inference_mode()``;
        it cannot be trained or saved (see the module docs). Runtime backends return a
        :class:`~mobileclip2.inference.backends.RuntimeCLIP` (torch tensors in and out, any batch
        size; ``.info`` says where its graphs are cached and how they checked).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() needs a torch.nn.Module, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"optimize(backend={backend!r}): use one of {', '.join(map(repr, BACKENDS))}")
    if backend != "torch":
        given = {
            name: value
            for name, value, default in (
                ("dtype", dtype, None),
                ("channels_last", channels_last, None),
                ("onednn", onednn, None),
                ("compile", compile, False),
                ("inplace", inplace, False),
            )
            if value is not default
        }
        if given:
            raise ValueError(
                f"optimize(backend={backend!r}) builds fp32 CPU graphs; {', '.join(given)} applies to "
                "backend='torch' only"
            )
        from .backends import build_runtime_model

        return build_runtime_model(
            model,
            backend,
            int8=int8,
            threads=threads,
            cache_dir=cache_dir,
            tokenizer=tokenizer,
            min_cosine=min_cosine,
        )
    runtime_only = [
        name
        for name, value in (
            ("int8", int8),
            ("threads", threads),
            ("cache_dir", cache_dir),
            ("tokenizer", tokenizer),
        )
        if value not in (None, False)
    ]
    if runtime_only:
        raise ValueError(
            f"optimize({', '.join(runtime_only)}=...) applies to the runtime backends: pass "
            "backend='onnxruntime' or backend='openvino' (the torch backend runs fp32 or dtype=..., with "
            "torch's own threads)"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"optimize(dtype={dtype!r}): pass a floating torch.dtype such as torch.bfloat16")
    mode = _compile_mode(compile)
    if mode is not None and onednn:
        raise ValueError(
            "optimize(compile=...) compiles the plain folded model with torch.compile; the prepacked oneDNN "
            "layers cannot be traced by it. Pass onednn=None/False with compile."
        )
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    model.requires_grad_(False)
    model = reparameterize(model, inplace=True)
    fold_affines(model)
    if truncate_text:
        truncate_causal_text(model, multiple=16 if mode else 8)
    if dtype is not None and dtype != torch.float32:
        _cast(model, dtype)

    cpu_fp32 = _parameters_on_cpu_fp32(model)
    if onednn is None:
        onednn = mode is None and cpu_fp32 and onednn_available()
    elif onednn and not (cpu_fp32 and onednn_available()):
        raise ValueError(
            "optimize(onednn=True) needs a float32 model on CPU and a torch build with oneDNN (mkldnn); "
            f"got parameters on {sorted({str(p.device) for p in model.parameters()})} of dtype "
            f"{sorted({str(p.dtype) for p in model.parameters()})}, "
            f"oneDNN ops available: {onednn_available()}. "
            "Pass onednn=False to optimize for another device or dtype."
        )
    if onednn:
        return use_onednn(model)

    if channels_last is None:
        channels_last = "cuda" in _parameter_devices(model)
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module) and (channels_last or dtype is not None):
        if channels_last:
            visual.to(memory_format=torch.channels_last)
        model.visual = ImageInput(visual, dtype, channels_last)
    if mode is not None:
        _compile_towers(model, mode)
    return model
