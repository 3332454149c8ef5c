"""Measuring inference speed honestly: shared helpers of `mobileclip2 bench` and benchmarks/inference.py.

Three runtimes of the same model are compared in one process, on the same inputs:

* ``upstream``: ``open_clip.create_model`` + ``timm.utils.reparameterize_model`` (what a user of
  plain open_clip + timm would run), eager PyTorch;
* ``ours``: :func:`mobileclip2.optimize`;
* ``onnxruntime``: the graphs :mod:`mobileclip2.export` writes, in an onnxruntime CPU session.

Timings interleave the runtimes round by round (a slow spell of a shared machine hits all of them)
and report the median of wall-clock times after warm-up. FLOPs are counted once per tower with
``torch.utils.flop_counter.FlopCounterMode`` on the upstream model (nn.MultiheadAttention's fused
fast path is switched off while counting, since the counter does not see inside it), and achieved
GFLOP/s are compared with dense-matmul GFLOP/s measured in the same process.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Measurement",
    "cpu_description",
    "count_flops",
    "interleaved_samples",
    "matmul_gflops",
    "tower_inputs",
    "upstream_model",
]


def cpu_description() -> str:
    """CPU model name as the OS reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(*dists: str) -> dict[str, str]:
    """Python, torch and each distribution's installed version, for benchmark reports."""
    from importlib import metadata

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def write_doc_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the text
    between those markers in ``path``, or append it; each benchmark owns one section of the doc."""
    section = section.strip("\n")
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def count_flops(fn: Callable[[torch.Tensor], Any], inputs: torch.Tensor) -> int:
    """FLOPs of one call (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from .compat.export import mha_fastpath_disabled

    with torch.no_grad(), mha_fastpath_disabled(), FlopCounterMode(display=False) as counter:
        fn(inputs)
    return int(counter.get_total_flops())


def matmul_gflops(size: int = 2048, seconds: float = 1.0) -> dict[str, float]:
    """Dense fp32 matmul GFLOP/s of this machine at the current thread count.

    ``torch.mm`` is PyTorch's default path (MKL on x86 builds, which on AMD CPUs runs its AVX2
    kernels); ``onednn`` is the prepacked oneDNN matmul mobileclip2.optimize uses.
    """
    from .inference import _OneDNNLinear, onednn_available

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    flops = 2 * size**3
    results = {"torch.mm": flops / _best_time(lambda: torch.mm(a, b), seconds) / 1e9}
    if onednn_available():
        linear = nn.Linear(size, size, bias=False)
        with torch.no_grad():
            linear.weight.copy_(b.T)
        packed = _OneDNNLinear(linear)
        with torch.no_grad():
            results["onednn"] = flops / _best_time(lambda: packed(a), seconds) / 1e9
    return results


def _best_time(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def warmup_rounds(batch: int) -> int:
    """Untimed calls before the timed rounds of one batch size (also named in the benchmark report)."""
    return 2 if batch == 1 else 1


def interleaved_samples(
    runners: dict[str, Callable[[], Any]], warmup: int = 2, rounds: int = 10
) -> dict[str, list[float]]:
    """Wall-clock seconds of each runner, measured round-robin; returns all samples per runner.

    Each round times every runner once, so load changes on a shared machine spread over all of
    them instead of biasing one.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            begin = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - begin)
    return samples


@dataclass
class Measurement:
    model: str
    tower: str
    batch: int
    runtime: str
    seconds: float  # median
    flops: int
    samples: list[float] = field(default_factory=list)

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


def tower_inputs(model: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """Random image and token inputs of the sizes ``model`` expects (fixed seed)."""
    from .inference import example_inputs

    image, text = example_inputs(model)
    generator = torch.Generator().manual_seed(0)
    text_tower = getattr(model, "text", model)
    vocab = int(getattr(text_tower, "vocab_size", None) or getattr(model, "vocab_size", 49408))
    return {
        "image": torch.randn(batch, *image.shape[1:], generator=generator),
        "text": torch.randint(1, vocab, (batch, text.shape[1]), generator=generator),
    }


def upstream_model(model: nn.Module) -> nn.Module:
    """The baseline a user of plain open_clip + timm runs: eval, timm's reparameterize_model."""
    from timm.utils import reparameterize_model

    baseline = reparameterize_model(copy.deepcopy(model).eval())
    baseline.requires_grad_(False)
    return baseline


class OnnxTowers:
    """Both towers exported (reparameterized model) into a temporary directory, with ORT sessions."""

    def __init__(self, model: nn.Module, name: str):
        import onnxruntime as ort

        from .export.pipeline import export_loaded

        self._dir = tempfile.TemporaryDirectory(prefix="mobileclip2-bench-")
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        result = export_loaded(model, self._dir.name, name=name, preprocess_cfg=cfg, check=True)
        options = ort.SessionOptions()
        self.sessions = {
            "image": ort.InferenceSession(result.image.path, options, providers=["CPUExecutionProvider"]),
            "text": ort.InferenceSession(result.text.path, options, providers=["CPUExecutionProvider"]),
        }
        self.max_abs_diff = {"image": result.image.max_abs_diff, "text": result.text.max_abs_diff}

    def runner(self, tower: str, inputs: torch.Tensor) -> Callable[[], Any]:
        session = self.sessions[tower]
        feed = {session.get_inputs()[0].name: inputs.numpy()}
        return lambda: session.run(None, feed)

    def close(self) -> None:
        self.sessions.clear()
        self._dir.cleanup()


def _encode(model: nn.Module, tower: str, inputs: torch.Tensor) -> Callable[[], Any]:
    encode = model.encode_image if tower == "image" else model.encode_text

    def run():
        with torch.inference_mode():
            return encode(inputs)

    return run


def benchmark_model(
    name: str,
    batches: tuple[int, ...] = (1, 32),
    towers: tuple[str, ...] = ("image", "text"),
    runtimes: tuple[str, ...] = ("upstream", "ours", "onnxruntime"),
    pretrained: str | None = None,
    rounds: Callable[[int], int] = lambda batch: 15 if batch == 1 else 4,
    log: Callable[[str], None] = print,
) -> list[Measurement]:
    """Median latency of each runtime for each tower and batch size of one model."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=pretrained).eval()
    model.requires_grad_(False)
    built: dict[str, Any] = {}
    if "upstream" in runtimes:
        built["upstream"] = upstream_model(model)
    if "ours" in runtimes:
        from .inference import optimize

        started = time.perf_counter()
        built["ours"] = optimize(model)
        log(f"  {name}: optimize() took {time.perf_counter() - started:.1f} s")
    onnx = None
    if "onnxruntime" in runtimes:
        started = time.perf_counter()
        onnx = OnnxTowers(model, name)
        log(
            f"  {name}: ONNX export + parity took {time.perf_counter() - started:.1f} s "
            f"(max abs diff image {onnx.max_abs_diff['image']:.1e}, text {onnx.max_abs_diff['text']:.1e})"
        )
    results = []
    try:
        for tower in towers:
            for batch in batches:
                inputs = tower_inputs(model, batch)[tower]
                flops = count_flops(model.encode_image if tower == "image" else model.encode_text, inputs)
                runners = {}
                for runtime in runtimes:
                    if runtime == "onnxruntime":
                        runners[runtime] = onnx.runner(tower, inputs)
                    else:
                        runners[runtime] = _encode(built[runtime], tower, inputs)
                samples = interleaved_samples(runners, warmup=warmup_rounds(batch), rounds=rounds(batch))
                for runtime, times in samples.items():
                    results.append(
                        Measurement(name, tower, batch, runtime, statistics.median(times), flops, times)
                    )
                log(
                    f"  {name} {tower} batch {batch}: "
                    + ", ".join(f"{r.runtime} {r.seconds * 1e3:.1f} ms" for r in results[-len(runtimes) :])
                )
    finally:
        if onnx is not None:
            onnx.close()
    return results


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
