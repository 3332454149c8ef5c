"""Measuring inference speed honestly: what `mobileclip2 bench` and benchmarks/inference.py share.

Runtimes of the same model are compared in one process, on the same inputs:

* ``upstream``: ``open_clip.create_model`` + ``timm.utils.reparameterize_model`` (what a user of
  plain open_clip + timm runs), eager PyTorch;
* ``ours``: :func:`mobileclip2.optimize`;
* ``onnxruntime``: both towers exported to ONNX, in an onnxruntime CPU session whose intra-op
  threads do not spin after a call (``session.intra_op.allow_spinning = 0``). Spinning threads
  keep the cores busy after ``run`` returns and made the next runtime timed look twice as slow.

Method (:func:`paired_samples`): the runtimes are called alternately, one call each per round, the
order reversed every other round; each runtime's speed is the median over rounds of the per-round
ratio ``upstream time / its time`` (a slow spell of a shared machine hits one round, not one
runtime). The benchmark checks itself (:func:`interference_check`): upstream is also timed with
no other runtime called in between; if its median alone and among the others differ by more
than 10%, the others disturbed it and the measurement is marked invalid.

Text inputs are captions of ``caption_tokens`` tokens (start, words, end-of-text) padded to the
context length, as a tokenizer gives them, plus a full-context row (77 tokens, the worst case).
This module imports torch lazily: :func:`package_versions` stays torch-free for light callers.
"""

from __future__ import annotations

import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CAPTION_TOKENS",
    "INTERFERENCE_LIMIT",
    "Measurement",
    "benchmark_model",
    "count_flops",
    "interference_check",
    "package_versions",
    "paired_samples",
    "tower_inputs",
    "upstream_model",
]

CAPTION_TOKENS = 12  # "a photo of a golden retriever on a beach." with start and end tokens
INTERFERENCE_LIMIT = 0.10  # upstream alone vs among the other runtimes: beyond this, invalid


def package_versions(*dists: str) -> dict[str, str]:
    """Python, torch and each distribution's installed version (torch-free: read from metadata)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("torch", *dists):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def count_flops(fn: Callable[[Any], Any], inputs: Any) -> int:
    """FLOPs of one call (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .compat.torch_ops import mha_fastpath_disabled

    with torch.no_grad(), mha_fastpath_disabled(), FlopCounterMode(display=False) as counter:
        fn(inputs)
    return int(counter.get_total_flops())


def _time_call(run: Callable[[], Any], sync: Callable[[], None]) -> float:
    begin = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - begin


def _no_sync() -> None:
    return None


def paired_samples(
    runners: dict[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = _no_sync,
) -> dict[str, list[float]]:
    """Seconds per call of each runner: one call each per round, order reversed every other round."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
        sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            samples[name].append(_time_call(runners[name], sync))
    return samples


def alone_samples(run: Callable[[], Any], calls: int, sync: Callable[[], None] = _no_sync) -> list[float]:
    """Seconds per call of one runner with nothing else called in between."""
    return [_time_call(run, sync) for _ in range(calls)]


def median_ratio(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Median over rounds of ``baseline / candidate`` (the speedup, paired round by round)."""
    return statistics.median(b / c for b, c in zip(baseline, candidate))


def interference_check(alone: Sequence[float], among_others: Sequence[float]) -> tuple[float, bool]:
    """(relative difference of upstream's median time alone vs among the other runtimes, valid?)."""
    difference = statistics.median(among_others) / statistics.median(alone) - 1
    return difference, abs(difference) <= INTERFERENCE_LIMIT


@dataclass
class Measurement:
    model: str
    tower: str  # image, text (a caption), text-full (all context tokens)
    batch: int
    runtime: str
    seconds: float  # median
    flops: int  # of the upstream model on the same input
    speedup: float  # median of per-round ratios upstream / this runtime (1.0 for upstream)
    valid: bool  # interference check of this (model, tower, batch) group passed
    interference: float  # upstream median among others / alone - 1
    samples: list[float] = field(default_factory=list)

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


def caption_tokens(
    batch: int, context: int, vocab: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """Token rows shaped like a tokenizer's: start, ``length - 2`` words, end-of-text, zero padding.

    Start and end use the two highest ids (CLIP's convention, so argmax pooling finds the end).
    """
    import torch

    length = min(length, context)
    tokens = torch.zeros(batch, context, dtype=torch.long)
    tokens[:, 1 : length - 1] = torch.randint(1, vocab - 2, (batch, length - 2), generator=generator)
    tokens[:, 0] = vocab - 2
    tokens[:, length - 1] = vocab - 1
    return tokens


def tower_inputs(model: nn.Module, batch: int, caption: int = CAPTION_TOKENS) -> dict[str, torch.Tensor]:
    """Random image, caption and full-context token inputs of the sizes ``model`` expects (fixed seed)."""
    import torch

    from .inference import example_inputs

    image, text = example_inputs(model)
    generator = torch.Generator().manual_seed(0)
    text_tower = getattr(model, "text", model)
    vocab = int(getattr(text_tower, "vocab_size", None) or getattr(model, "vocab_size", 49408))
    context = text.shape[1]
    return {
        "image": torch.randn(batch, *image.shape[1:], generator=generator),
        "text": caption_tokens(batch, context, vocab, caption, generator),
        "text-full": caption_tokens(batch, context, vocab, context, generator),
    }


def upstream_model(model: nn.Module) -> nn.Module:
    """The baseline a user of plain open_clip + timm runs: eval, timm's reparameterize_model."""
    from timm.utils import reparameterize_model

    baseline = reparameterize_model(copy.deepcopy(model).eval())
    baseline.requires_grad_(False)
    return baseline


def _encoder_module(model: nn.Module, tower: str) -> nn.Module:
    """``encode_image`` / ``encode_text`` as a module's forward, for the ONNX exporter."""
    from torch import nn

    class Encode(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.encode_image(x) if tower == "image" else self.model.encode_text(x)

    return Encode()


class OnnxTowers:
    """Both towers of the reparameterized model as ONNX graphs in onnxruntime CPU sessions with
    non-spinning intra-op threads (the thread count torch uses), checked against the model."""

    def __init__(self, model: nn.Module, inputs: dict[str, torch.Tensor], threads: int):
        import numpy as np
        import torch

        from .export import onnx

        self._dir = tempfile.TemporaryDirectory(prefix="mobileclip2-bench-")
        self.runs: dict[str, Callable[[Any], Any]] = {}
        self.max_abs_diff = {}
        for tower in ("image", "text"):
            path = f"{self._dir.name}/{tower}.onnx"
            example = inputs[tower][:1]
            onnx.write(_encoder_module(model, tower), example, path, tower)
            self.runs[tower] = run = onnx.load(path, threads)  # non-spinning session, torch's threads
            with torch.inference_mode():
                expected = (model.encode_image if tower == "image" else model.encode_text)(example).numpy()
            self.max_abs_diff[tower] = float(np.abs(run(example.numpy()) - expected).max())

    def runner(self, tower: str, inputs: torch.Tensor) -> Callable[[], Any]:
        run = self.runs["image" if tower == "image" else "text"]
        array = inputs.numpy()
        return lambda: run(array)

    def close(self) -> None:
        self.runs.clear()
        self._dir.cleanup()


def encoder_call(model: nn.Module, tower: str, inputs: torch.Tensor) -> Callable[[], Any]:
    """A no-argument call of the tower under inference mode (what gets timed)."""
    import torch

    encode = model.encode_image if tower == "image" else model.encode_text

    def run():
        with torch.inference_mode():
            return encode(inputs)

    return run


def measure_group(
    model_name: str,
    tower: str,
    batch: int,
    runners: dict[str, Callable[[], Any]],
    flops: int,
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = _no_sync,
) -> list[Measurement]:
    """Time ``runners`` (``upstream`` first) paired, plus upstream alone before and after; -> rows."""
    upstream = runners["upstream"]
    for _ in range(warmup):
        upstream()
    half = max(1, rounds // 2)
    alone = alone_samples(upstream, half, sync)
    samples = paired_samples(runners, rounds, warmup, sync)
    alone += alone_samples(upstream, half, sync)
    interference, valid = interference_check(alone, samples["upstream"])
    if len(runners) == 1:
        interference, valid = 0.0, True
    rows = []
    for runtime, times in samples.items():
        rows.append(
            Measurement(
                model=model_name,
                tower=tower,
                batch=batch,
                runtime=runtime,
                seconds=statistics.median(times),
                flops=flops,
                speedup=median_ratio(samples["upstream"], times),
                valid=valid,
                interference=interference,
                samples=times,
            )
        )
    return rows


def benchmark_model(
    name: str,
    batches: tuple[int, ...] = (1,),
    towers: tuple[str, ...] = ("image", "text", "text-full"),
    runtimes: tuple[str, ...] = ("upstream", "ours", "onnxruntime"),
    pretrained: str | None = None,
    rounds: Callable[[int], int] = lambda batch: 20 if batch == 1 else 6,
    log: Callable[[str], None] = print,
) -> list[Measurement]:
    """Median latency and paired speedup of each runtime for each tower and batch size (CPU, fp32)."""
    import open_clip
    import torch

    if "upstream" not in runtimes:
        raise ValueError("benchmark_model: 'upstream' must be among the runtimes (every ratio is against it)")
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=pretrained).eval()
    model.requires_grad_(False)
    built: dict[str, Any] = {"upstream": upstream_model(model)}
    if "ours" in runtimes:
        from .inference import optimize

        started = time.perf_counter()
        built["ours"] = optimize(model)
        log(f"  {name}: optimize() took {time.perf_counter() - started:.1f} s")
    onnx = None
    if "onnxruntime" in runtimes:
        started = time.perf_counter()
        onnx = OnnxTowers(built["upstream"], tower_inputs(model, 1), torch.get_num_threads())
        log(
            f"  {name}: ONNX export + check took {time.perf_counter() - started:.1f} s "
            f"(max abs diff image {onnx.max_abs_diff['image']:.1e}, text {onnx.max_abs_diff['text']:.1e})"
        )
    results: list[Measurement] = []
    try:
        for tower in towers:
            for batch in batches:
                inputs = tower_inputs(model, batch)[tower]
                encode = model.encode_image if tower == "image" else model.encode_text
                flops = count_flops(encode, inputs)
                runners = {
                    runtime: onnx.runner(tower, inputs)
                    if runtime == "onnxruntime"
                    else encoder_call(built[runtime], tower, inputs)
                    for runtime in runtimes
                }
                rows = measure_group(
                    name, tower, batch, runners, flops, rounds(batch), warmup=2 if batch == 1 else 1
                )
                results += rows
                log(
                    f"  {name} {tower} batch {batch}: "
                    + ", ".join(f"{r.runtime} {r.seconds * 1e3:.1f} ms ({r.speedup:.2f}x)" for r in rows)
                    + f"; upstream alone vs among others {rows[0].interference:+.1%}"
                    + ("" if rows[0].valid else " -> INVALID")
                )
    finally:
        if onnx is not None:
            onnx.close()
    return results
