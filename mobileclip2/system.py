"""The machine and environment as the package sees them: cores, thread counts, installed versions.

One place decides how many threads a runtime gets (:func:`thread_count`): the number asked for,
else torch's own (``torch.get_num_threads()``, which follows ``OMP_NUM_THREADS``), so PyTorch,
ONNX Runtime, OpenVINO and ExecuTorch run with the same count unless told otherwise. Nothing here
imports torch unless torch is already imported or a function needs it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Iterator

__all__ = [
    "PRECISIONS",
    "VERBOSE_ENV",
    "captured_output",
    "package_versions",
    "set_threads",
    "thread_count",
    "torch_dtype",
    "usable_cores",
]

# Set to 1 to see what third-party exporters and runtimes print while they work.
VERBOSE_ENV = "MOBILECLIP2_VERBOSE"


# The precision names the command line takes -> torch dtype names.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(precision: str):
    """The torch dtype of a precision name of :data:`PRECISIONS`."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return getattr(torch, PRECISIONS[precision])


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count(threads: int | None = None) -> int:
    """``threads`` when given, else the count torch runs with in this process."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    import torch

    return torch.get_num_threads()


def set_threads(threads: int) -> None:
    """Run this process (and the processes it starts) with ``threads`` threads.

    Sets ``OMP_NUM_THREADS`` (read by torch at import and inherited by subprocesses) and, when
    torch is already imported, torch's own count; torch is not imported for this.
    """
    threads = thread_count(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# Distribution -> the module whose own __version__ wins once it is imported (a source checkout on
# PYTHONPATH shadows the installed wheel, whose metadata would name the wrong version).
_IMPORT_NAMES = {"torch": "torch", "open_clip_torch": "open_clip", "timm": "timm"}


def package_versions(*dists: str) -> dict[str, str]:
    """Python, torch and each distribution's version: the imported module's own ``__version__`` where
    it is already imported (what actually runs), else the installed package metadata."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("torch", *dists):
        module = sys.modules.get(_IMPORT_NAMES.get(dist, ""))
        version = getattr(module, "__version__", None)
        if isinstance(version, str):
            found[dist] = version
            continue
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


@contextlib.contextmanager
def captured_output() -> Iterator[None]:
    """Hold back what the block prints, also from native code (file descriptors 1 and 2), and show it
    only if the block raises.

    Exporters and their runtimes (coremltools' progress bars and version notices, ExecuTorch's CPU
    probing, quantizer notes) print dozens of lines that are not the user's problem; when something
    fails, they are the diagnosis, so then they are printed. ``MOBILECLIP2_VERBOSE=1`` shows
    everything as it happens.
    """
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        python_streams = (sys.stdout, sys.stderr)
        text_sink = open(sink.fileno(), "w", closefd=False, encoding="utf-8", errors="replace")
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            sys.stdout = sys.stderr = text_sink
            try:
                yield
            finally:
                text_sink.flush()
                sys.stdout, sys.stderr = python_streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        except BaseException:
            sink.seek(0)
            held = sink.read().decode("utf-8", errors="replace")
            if held.strip():
                print(f"(output of the failed step)\n{held}", file=sys.stderr, flush=True)
            raise
        finally:
            text_sink.close()
            for handle in saved:
                os.close(handle)
