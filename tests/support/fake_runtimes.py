"""Runtime builders for tests of mobileclip2.benchmarking's isolated runner (no model is built).

Each is named in a ``Recipe(builder="fake_runtimes:...")`` and runs in a spawned worker process,
which finds this module through the ``sys.path`` it inherits (tests/support is on pytest's pythonpath).
"""

from __future__ import annotations

import mmap
import os

import numpy as np


def build_double(recipe):
    """A "runtime" whose output is its input times two (upstream in these tests)."""
    return lambda tower, inputs: lambda: np.asarray(inputs) * 2.0


def build_pid(recipe):
    """Outputs like ``build_double`` and appends this worker's pid and the call to a log file (the
    options' ``log``), so a test can see which process ran which call, in which order."""
    log = dict(recipe.options)["log"]

    def prepare(tower, inputs):
        def run():
            with open(log, "a", encoding="utf-8") as file:
                file.write(f"{recipe.runtime} {os.getpid()}\n")
            return np.asarray(inputs) * 2.0

        return run

    return prepare


def build_wrong(recipe):
    """Fast and wrong: its output differs from upstream's."""
    return lambda tower, inputs: lambda: np.asarray(inputs) * 2.0 + 1.0


def build_broken(recipe):
    raise RuntimeError("fake runtime could not be built")


def build_threads(recipe):
    """Outputs the torch thread count the worker runs with (set before building)."""
    import torch

    return lambda tower, inputs: lambda: np.full_like(np.asarray(inputs), torch.get_num_threads())


def build_allocating(recipe):
    """Outputs like ``build_double`` and writes to every page of a fresh anonymous mapping of the
    options' ``megabytes`` on each call, unmapped again after it: a fault per page on every call
    whatever the allocator (an mmap of its own, not malloc) and with huge pages refused for it
    (MADV_NOHUGEPAGE: transparent huge pages set to "always" would fault once per 2 MB)."""
    size = int(dict(recipe.options)["megabytes"]) << 20

    def prepare(tower, inputs):
        def run():
            with mmap.mmap(-1, size) as mapping:
                if hasattr(mmap, "MADV_NOHUGEPAGE"):
                    mapping.madvise(mmap.MADV_NOHUGEPAGE)
                for offset in range(0, size, mmap.PAGESIZE):
                    mapping[offset] = 1
            return np.asarray(inputs) * 2.0

        return run

    return prepare
