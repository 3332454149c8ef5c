"""The isolated runner of mobileclip2.benchmarking: each runtime in its own worker process.

Fake runtimes (tests/support/fake_runtimes.py) stand in for models: these tests prove the driver's
method (calls, order, validity logic, output check, errors, no leftover process), not any speed.
"""

from __future__ import annotations

import contextlib
import mmap
import os

import numpy as np
import pytest

from mobileclip2 import benchmarking as bm
from mobileclip2.errors import BenchmarkWorkerError


def recipe(runtime: str, builder: str, threads: int = 1, **options) -> bm.Recipe:
    return bm.Recipe(
        "fake", runtime, threads, builder=f"fake_runtimes:{builder}", options=tuple(options.items())
    )


def test_each_runtime_runs_in_its_own_process_in_the_paired_order(tmp_path):
    log = tmp_path / "calls.txt"
    names = ("upstream", "ours", "ort", bm.TWIN)
    recipes = [recipe(name, "build_pid", log=str(log)) for name in names]
    with contextlib.ExitStack() as stack:
        workers = bm.start_isolated(recipes, stack)
        processes = [worker.process for worker in workers.values()]
        inputs = np.arange(6.0).reshape(2, 3)
        outputs = {name: worker.prepare("image", inputs) for name, worker in workers.items()}
        checks = bm.check_outputs(outputs)
        assert {name: check["max_abs_diff"] for name, check in checks.items()} == dict.fromkeys(names, 0.0)
        log.write_text("")
        timers = {name: workers[name].time_call for name in names[:3]}
        rows = bm.measure_group(
            "fake", "image", 2, timers, flops=10, rounds=4, warmup=1, twin=workers[bm.TWIN].time_call
        )
    assert not any(process.is_alive() for process in processes)  # closed with the stack

    calls = [line.split() for line in log.read_text().splitlines()]
    pids = {name: {pid for runtime, pid in calls if runtime == name} for name in names}
    assert all(len(found) == 1 for found in pids.values())  # one process per runtime...
    assert len(set.union(*pids.values()) | {str(os.getpid())}) == 5  # ... none of them this one
    order = [runtime for runtime, _ in calls]
    up, ours, ort, twin = names
    alone = [up, twin, up, twin]  # "alone": alternated with the twin, never back to back
    rotated = [up, ours, ort, ours, ort, up, ort, up, ours, up, ours, ort]
    # warm-up of upstream, 2 alone, warm-up round, 4 rotated rounds, 2 alone
    assert order == [up] + alone + [up, ours, ort] + rotated + alone
    assert all(a != b for a, b in zip(order[1:], order[2:]))  # nobody twice in a row after warm-up
    assert [row.runtime for row in rows] == ["upstream", "ours", "ort"]
    assert all(len(row.samples) == 4 and all(isinstance(s, float) for s in row.samples) for row in rows)
    assert all(row.speedup == bm.median_ratio(rows[0].samples, row.samples) for row in rows)


def test_page_faults_per_call_are_counted_in_each_worker():
    if bm.minor_page_faults() is None:
        pytest.skip("no resource module here: page faults are not counted")
    megabytes = 64
    pages = (megabytes << 20) // mmap.PAGESIZE
    with contextlib.ExitStack() as stack:
        workers = bm.start_isolated(
            [
                recipe("upstream", "build_double"),
                recipe("allocating", "build_allocating", megabytes=megabytes),
            ],
            stack,
        )
        for worker in workers.values():
            worker.prepare("image", np.ones((1, 4)))
        faults = {name: worker.page_faults(calls=3) for name, worker in workers.items()}
    assert faults["allocating"] >= 0.9 * pages, faults  # a fresh mapping each call: a fault per page
    assert faults["upstream"] < 0.1 * pages, faults
    with pytest.raises(ValueError, match="at least one call"):
        bm.faults_per_call(lambda: None, calls=0)


def test_a_request_before_prepare_is_a_clear_error():
    with contextlib.ExitStack() as stack:
        worker = bm.start_isolated([recipe("upstream", "build_double")], stack)["upstream"]
        with pytest.raises(BenchmarkWorkerError, match="'faults' before any 'prepare'"):
            worker.page_faults()


def test_measure_group_marks_a_disturbed_upstream_invalid():
    # upstream takes 1 s alone and 2 s among the others: the scripted timers stand in for workers
    upstream_times = iter([1.0] * 1 + [1.0] * 2 + [9.0] + [2.0] * 4 + [1.0] * 2)
    timers = {"upstream": lambda: next(upstream_times), "ours": lambda: 1.0}
    rows = bm.measure_group("fake", "text", 1, timers, flops=1, rounds=4, warmup=1)
    assert all(not row.valid for row in rows) and rows[0].interference == pytest.approx(1.0)
    assert rows[1].speedup == 2.0


def test_outputs_are_compared_with_upstreams_before_timing():
    with contextlib.ExitStack() as stack:
        workers = bm.start_isolated(
            [recipe("upstream", "build_double"), recipe("wrong", "build_wrong")], stack
        )
        outputs = {name: worker.prepare("text", np.ones((1, 4))) for name, worker in workers.items()}
    with pytest.raises(BenchmarkWorkerError, match=r"wrong: max abs diff 1\.00e\+00"):
        bm.check_outputs(outputs)


def test_int8_runtimes_are_checked_by_cosine_and_fp32_runtimes_by_max_abs_diff():
    """An int8 text tower is never within 1e-3 of fp32; what must hold is its direction. The same
    output that passes as int8 fails as fp32, and an int8 output pointing elsewhere fails."""
    want = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    close = want + np.array([[0.0, 0.05, 0.0], [0.0, 0.0, 0.05]])  # cosine 0.9988, diff 5e-2
    checks = bm.check_outputs({"upstream": want, "openvino-int8": close})
    assert checks["openvino-int8"]["min_cosine"] == pytest.approx(1 / np.sqrt(1 + 0.05**2))
    with pytest.raises(BenchmarkWorkerError, match=r"openvino: max abs diff 5\.00e-02"):
        bm.check_outputs({"upstream": want, "openvino": close})
    with pytest.raises(BenchmarkWorkerError, match=r"onnxruntime-int8: cosine 0\.7071 < 0\.98"):
        bm.check_outputs({"upstream": want, "onnxruntime-int8": want + np.array([[0, 1.0, 0], [0, 0, 0]])})


def test_a_worker_error_is_a_clear_exception_and_no_worker_is_left_running():
    stack = contextlib.ExitStack()
    with pytest.raises(BenchmarkWorkerError, match="(?s)broken worker for fake failed.*could not be built"):
        with stack:
            bm.start_isolated([recipe("upstream", "build_double"), recipe("broken", "build_broken")], stack)
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_a_timing_request_before_any_input_is_an_error_not_a_hang():
    with contextlib.ExitStack() as stack:
        worker = bm.start_isolated([recipe("upstream", "build_double")], stack)["upstream"]
        with pytest.raises(BenchmarkWorkerError, match="'time' before any 'prepare'"):
            worker.time_call()


def test_threads_are_set_in_the_worker_before_it_builds():
    with contextlib.ExitStack() as stack:
        worker = bm.start_isolated([recipe("upstream", "build_threads", threads=3)], stack)["upstream"]
        assert worker.prepare("image", np.zeros(2)).tolist() == [3.0, 3.0]


def test_an_unknown_runtime_names_the_known_ones():
    with pytest.raises(ValueError, match="onnxruntime"):
        bm._builder(bm.Recipe("fake", "tensorrt", 1))


def test_noise_gauge_pairs_only_rows_that_are_the_same_work():
    def row(model, runtime, tower, speedup, batch=1):
        return bm.Measurement(model, tower, batch, runtime, 0.01, 0, speedup, True, 0.0)

    results = [
        row("bi", "upstream", "text", 1.0),
        row("bi", "upstream", "text-full", 1.0),
        row("bi", "ours", "text", 1.1),
        row("bi", "ours", "text-full", 0.9),
        row("bi", "ours", "image", 1.5),
        row("bi", "ours", "text", 3.0, batch=8),  # batch 8 has no text-full partner: left out
        row("causal", "ours", "text", 4.0),  # shortened caption: not the same work as text-full
        row("causal", "ours", "text-full", 1.0),
        row("causal", "onnxruntime", "text", 1.3),
        row("causal", "onnxruntime", "text-full", 1.2),
    ]
    pairs = bm.same_work_pairs(results, lambda model, runtime: model == "causal" and runtime == "ours")
    assert sorted(pairs) == [("bi", "ours", 1.1, 0.9), ("causal", "onnxruntime", 1.3, 1.2)]
