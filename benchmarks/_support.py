"""What only the benchmark scripts use: machine description, peak matmul rates, doc sections.

Imported by the scripts in this folder as ``import _support`` (Python puts a script's own folder
first on ``sys.path``); the package keeps only what ``mobileclip2 bench`` needs
(mobileclip2.benchmarking).
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from mobileclip2.benchmarking import seconds_per_call

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"


def utc_stamp() -> str:
    """Now, as every section's "Measured ..." line writes it. Scripts take it when they *start*, so a
    section's date and the load/bandwidth "before" figures describe the same moment."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_description() -> str:
    """CPU model name as the OS reports it (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_doc_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the text
    between those markers in ``path``, or append it; each benchmark owns one section of the doc.
    Written to a temporary name first, then moved into place (no half-written doc)."""
    section = section.strip("\n")
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def cpu_matmul_gflops(size: int = 2048, seconds: float = 1.0) -> dict[str, float]:
    """Dense fp32 matmul GFLOP/s at the current thread count: ``torch.mm`` (MKL on x86 builds, AVX2
    kernels on AMD CPUs) and the prepacked oneDNN matmul mobileclip2.optimize uses."""
    import torch
    from torch import nn

    from mobileclip2.inference.onednn import OneDNNLinear, onednn_available

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    flops = 2 * size**3
    results = {"torch.mm": flops / seconds_per_call(lambda: torch.mm(a, b), seconds, best=True) / 1e9}
    if onednn_available():
        linear = nn.Linear(size, size, bias=False)
        with torch.no_grad():
            linear.weight.copy_(b.T)
        packed = OneDNNLinear(linear)
        with torch.no_grad():
            results["onednn"] = flops / seconds_per_call(lambda: packed(a), seconds, best=True) / 1e9
    return results


def cpu_copy_gbytes(megabytes: int = 256, seconds: float = 0.5) -> float:
    """Memory bandwidth of a large fp32 copy (read + write, GB/s) at the current thread count.

    Batch-1 towers stream their weights from memory on every call (MobileCLIP2-S0's text tower:
    151 MB), so on a shared machine a neighbour's memory traffic moves them even when the cores
    are idle: the bandwidth available to one VM can change several-fold between runs, so each
    report states it, measured before and after.
    """
    import torch

    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / seconds_per_call(lambda: target.copy_(source), seconds, best=True) / 1e9


def bandwidth_text(before_after: tuple[float, float]) -> str:
    """The header phrase both CPU benchmark sections print for :func:`cpu_copy_gbytes` before / after."""
    return (
        "fp32 copy bandwidth (read + write) before / after: "
        + " / ".join(f"{g:.1f}" for g in before_after)
        + " GB/s"
    )


def cuda_matmul_tflops(size: int = 8192, dtype_name: str = "bfloat16") -> float:
    """Dense matmul TFLOP/s of the current CUDA device on random data (the arithmetic ceiling)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    seconds = seconds_per_call(lambda: torch.mm(a, b), 1.0, sync=torch.cuda.synchronize, best=True)
    return 2 * size**3 / seconds / 1e12


def gpu_description() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
