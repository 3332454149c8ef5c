"""Runtime builders for tests of mobileclip2.benchmarking's isolated runner (no model is built).

Each is named in a ``Recipe(builder="fake_runtimes:...")`` and runs in a spawned worker process,
which finds this module through the ``sys.path`` it inherits (tests/support is on pytest's pythonpath).
"""

from __future__ import annotations

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
    """Outputs like ``build_double`` and writes to every page of a fresh buffer of the options'
    ``megabytes`` on each call: above glibc's largest mmap threshold (32 MB), so every call maps new
    pages and faults on each one (a bytearray, not numpy, which may ask for huge pages)."""
    size = int(dict(recipe.options)["megabytes"]) << 20
    page = 4096

    def prepare(tower, inputs):
        def run():
            buffer = bytearray(size)
            buffer[::page] = b"\x01" * (size // page)
            return np.asarray(inputs) * 2.0

        return run

    return prepare
