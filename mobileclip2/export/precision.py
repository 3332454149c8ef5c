"""Which compute precision a reduced-precision format (Core ML) uses per tower: fp16 where it is safe.

fp16's largest finite value is 65504. A tower whose activations come near it overflows to inf on a
device that computes in fp16 (Core ML's GPU and Neural Engine always do), and a LayerNorm over such a
residual stream turns the embedding into NaN; fp16's 11-bit mantissa can also cost accuracy on its
own. Nothing on Linux runs Core ML, so :func:`fp16_check` runs the tower in fp16 in PyTorch on the
CPU (``module.half()``) over the built-in evaluation captions and records

- the largest |activation| of every submodule's output and of every LayerNorm's input (the residual
  stream, whose adds are not modules), measured in fp32 so an overflow still has a number;
- the largest per-token sum of squares into a LayerNorm (what an fp16 accumulation of the variance
  would hold; recorded, not gated: Core ML's kernels accumulate in higher precision);
- the mean and minimum cosine of the fp16 embeddings to the fp32 ones, and whether all were finite.

:func:`fp16_safe` gates on :data:`FP16_ACTIVATION_BOUND` (65504 / 64: headroom for inputs larger
than the captions and for the device's own op fusions) and :data:`FP16_MIN_COSINE`. The image tower
stays fp16 by default (convolutional trunks with normalized inputs: the fp16 path Core ML is built
for); the text tower is fp16 when its check passes, else fp32. An explicit precision wins; an
explicit fp16 still records the check and warns when it fails.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from .parity import cosines

__all__ = [
    "AUTO",
    "FP16_ACTIVATION_BOUND",
    "FP16_MAX",
    "FP16_MIN_COSINE",
    "PRECISIONS",
    "choose",
    "fp16_check",
    "fp16_safe",
]

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_HEADROOM = 64.0
FP16_ACTIVATION_BOUND = FP16_MAX / FP16_HEADROOM
"""A tower is fp16-safe only while its largest |activation| on the captions stays below this."""
FP16_MIN_COSINE = 0.999
"""... and the minimum cosine of its fp16 embeddings to fp32 ones reaches this."""

AUTO = "auto"
PRECISIONS = ("fp16", "fp32")
CHECKED_TOWERS = ("text",)
"""Towers whose default precision the fp16 check decides (the image tower's default is fp16)."""


def fp16_check(module: nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """Activation peaks of ``module`` over ``inputs`` (fp32) and its fp16 embeddings' cosine to fp32."""
    peaks: dict[str, float] = {}
    sum_sq: dict[str, float] = {}

    def record(name: str, value: torch.Tensor) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            peaks[name] = max(peaks.get(name, 0.0), float(value.detach().abs().max()))

    def output_hook(name: str):
        def hook(_module: nn.Module, args: tuple, output: Any) -> None:
            for i, value in enumerate(output if isinstance(output, tuple) else (output,)):
                record(f"{name} (output{f' {i}' if i else ''})", value)

        return hook

    def norm_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                record(f"{name} (input)", args[0])
                values = args[0].detach().float()
                sum_sq[name] = max(sum_sq.get(name, 0.0), float((values * values).sum(-1).max()))

        return hook

    handles = []
    for name, sub in module.named_modules():
        if not name:
            continue
        handles.append(sub.register_forward_hook(output_hook(name)))
        if isinstance(sub, nn.LayerNorm):
            handles.append(sub.register_forward_pre_hook(norm_hook(name)))
    try:
        with torch.no_grad():
            want = module(inputs).float().numpy()
    finally:
        for handle in handles:
            handle.remove()
    half = copy.deepcopy(module).half()
    with torch.no_grad():
        got = half(inputs).float().numpy()
    finite = bool(np.isfinite(got).all())
    values = cosines(got, want)
    where, peak = max(peaks.items(), key=lambda item: item[1]) if peaks else ("", 0.0)
    norm_where, norm_sum = max(sum_sq.items(), key=lambda item: item[1]) if sum_sq else (None, None)
    return {
        "ran": True,
        "inputs": int(len(inputs)),
        "max_abs_activation": peak,
        "at": where,
        "layernorm_max_sum_of_squares": norm_sum,
        "layernorm_at": norm_where,
        "finite": finite,
        "cosine_mean": float(np.nan_to_num(values, nan=-1.0).mean()),
        "cosine_min": float(np.nan_to_num(values, nan=-1.0).min()),
        "activation_bound": FP16_ACTIVATION_BOUND,
        "min_cosine": FP16_MIN_COSINE,
    }


def fp16_safe(check: dict[str, Any]) -> tuple[bool, str]:
    """(safe, why) for a :func:`fp16_check` result."""
    problems = []
    if not check["finite"]:
        problems.append("the fp16 embeddings hold inf/NaN")
    if not check["max_abs_activation"] < check["activation_bound"]:
        problems.append(
            f"the largest |activation| {check['max_abs_activation']:.4g} (at {check['at']}) is not below "
            f"{check['activation_bound']:g} (fp16 max {FP16_MAX:g} / {FP16_HEADROOM:g})"
        )
    if not check["cosine_min"] >= check["min_cosine"]:
        problems.append(
            f"the fp16 embeddings' minimum cosine to fp32 is {check['cosine_min']:.6f}, "
            f"below {check['min_cosine']}"
        )
    if problems:
        return False, "; ".join(problems)
    return True, (
        f"largest |activation| {check['max_abs_activation']:.4g} < {check['activation_bound']:g}, "
        f"minimum cosine to fp32 {check['cosine_min']:.6f} >= {check['min_cosine']}"
    )


def choose(
    label: str, tower: str, requested: str, module: nn.Module, inputs: torch.Tensor | None
) -> tuple[str, dict[str, Any] | None]:
    """(precision, fp16 check or None) for one tower of a format that takes ``compute_precision``.

    ``requested``: :data:`AUTO` (image fp16; text fp16 when :func:`fp16_safe`, else fp32, logged),
    ``"fp16"`` (the check still runs for the checked towers and warns when unsafe) or ``"fp32"``.
    ``inputs``: the tokenized evaluation captions; needed when a check runs.
    """
    if requested not in (AUTO, *PRECISIONS):
        raise ValueError(f"compute precision {requested!r}: expected one of {', '.join((AUTO, *PRECISIONS))}")
    if requested == "fp32" or tower not in CHECKED_TOWERS:
        return ("fp16" if requested == AUTO else requested), None
    if inputs is None:
        raise ValueError(
            f"{label}: the fp16 check runs the {tower} tower over the built-in captions, which needs the "
            "model's tokenizer: pass tokenizer=open_clip.get_tokenizer(name), or compute_precision='fp32'"
        )
    try:
        check = fp16_check(module, inputs)
    except (RuntimeError, NotImplementedError) as error:  # an op PyTorch cannot run in fp16 on the CPU
        why = f"the fp16 check could not run the {tower} tower in fp16 on the CPU ({error})"
        if requested == AUTO:
            raise RuntimeError(
                f"{label}: {why}, so whether fp16 is safe for it is unknown: export with --precision fp32, "
                "or with --precision fp16 and check the artifact's embeddings on a Mac (docs/deployment.md)"
            ) from error
        warnings.warn(f"{label}: --precision fp16: {why}; the fp16 artifact is unchecked.", stacklevel=3)
        return "fp16", {"ran": False, "safe": None, "why": why}
    safe, why = fp16_safe(check)
    check["safe"], check["why"] = safe, why
    if requested == "fp16":
        if not safe:
            warnings.warn(
                f"{label}: --precision fp16 was asked for, but the {tower} tower is not fp16-safe: {why}. "
                "Its embeddings may overflow or lose accuracy on the device; export with --precision fp32, "
                "or leave --precision out to choose per tower.",
                stacklevel=3,
            )
        return "fp16", check
    if safe:
        return "fp16", check
    log.warning("%s: %s tower exported in fp32, not fp16: %s", label, tower, why)
    return "fp32", check
