"""The benchmark scripts' own decisions (benchmarks/ is not part of the package; loaded by path)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def inference_script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its neighbour `_support`
    spec = importlib.util.spec_from_file_location("inference_benchmark", BENCHMARKS / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_args(script, **changes) -> argparse.Namespace:
    scope = dict(
        models=list(script.CPU_MODELS),
        towers=list(script.TOWERS),
        runtimes=list(script.CPU_RUNTIMES),
        batches=[1],
        throughput_batch=script.THROUGHPUT_BATCH,
        throughput_models=list(script.THROUGHPUT_MODELS),
        rounds=script.CPU_ROUNDS,
    )
    return argparse.Namespace(**{**scope, **changes})


def test_only_a_full_valid_cpu_run_replaces_the_docs_section(inference_script):
    """README quotes the section: an invalid or narrower run must not replace the full valid one."""
    hold = inference_script.doc_hold_reason
    assert hold(documented_args(inference_script), valid=True) is None
    assert "interference" in hold(documented_args(inference_script), valid=False)
    narrower = documented_args(inference_script, models=["MobileCLIP2-S4"], runtimes=["upstream", "ours"])
    assert hold(narrower, valid=True) == "not the documented scope (models, runtimes differ)"
    reordered = documented_args(inference_script, models=list(reversed(inference_script.CPU_MODELS)))
    assert hold(reordered, valid=True) is None  # the order of the names is not the scope
    no_throughput = documented_args(inference_script, throughput_batch=0)
    assert hold(no_throughput, valid=True) == "not the documented scope (throughput differ)"
