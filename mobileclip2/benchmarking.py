"""Measuring inference speed honestly: what `mobileclip2 bench` and benchmarks/inference.py share.

Runtimes of the same model are compared on the same inputs, each built and called in its own
worker process (:class:`IsolatedRuntime`, from a picklable :class:`Recipe`): no allocator, cache
or thread pool is shared between them, so one runtime cannot slow down the next one timed.

* ``upstream``: ``open_clip.create_model`` + ``timm.utils.reparameterize_model`` (what a user of
  plain open_clip + timm runs), eager PyTorch;
* ``ours``: :func:`mobileclip2.optimize`;
* ``onnxruntime`` / ``openvino``: ``optimize(model, backend=...)``, both towers as graphs of that
  runtime; ``onnxruntime-int8`` / ``openvino-int8``: the same with ``int8=True`` (int8 text tower;
  timed on the text towers only, checked by cosine). ONNX Runtime's intra-op threads must not spin
  after a call (``session.intra_op.allow_spinning = 0``, as the backend sets it): spinning threads
  keep the cores busy after ``run`` returns and slow down whichever runtime is timed next.

Method (:func:`paired_samples`): the runtimes are called alternately (the driver asks one worker
at a time; the others wait blocked on their pipe; each worker times its own call, so the pipe is
not in the timing), one call each per round, the order rotated every round so that no runtime
runs twice in a row (:func:`round_order`); each runtime's speed is the median over rounds of the
per-round ratio ``upstream time / its time`` (a slow spell of a shared machine hits one round, not
one runtime). The benchmark checks itself (:func:`interference_check`): upstream is also timed
with no other runtime called in between, alternated with a twin (a second upstream worker, same
model) so that its weights are as far out of cache as among the others; if its median there and
among the others differ by more than 10%, the others disturbed it and the measurement is marked
invalid. (Timed back to back instead, upstream would find its own weights still in cache and run
faster than among the others, failing the check for a reason that is not interference.)

Text inputs are captions of ``caption_tokens`` tokens (start, words, end-of-text) padded to the
context length, as a tokenizer gives them, plus a full-context row (77 tokens, the worst case).
This module imports torch lazily (a fake runtime in a test never pays for the import).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import multiprocessing
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BenchmarkWorkerError
from .system import set_threads

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CAPTION_TOKENS",
    "INTERFERENCE_LIMIT",
    "IsolatedRuntime",
    "Measurement",
    "Recipe",
    "benchmark_model",
    "count_flops",
    "faults_per_call",
    "interference_check",
    "minor_page_faults",
    "paired_samples",
    "round_order",
    "same_work_pairs",
    "seeded_model",
    "start_isolated",
    "call_timer",
    "seconds_per_call",
    "tower_inputs",
    "upstream_model",
]

CAPTION_TOKENS = 12  # "a photo of a golden retriever on a beach." with start and end tokens
INTERFERENCE_LIMIT = 0.10  # upstream alone vs among the other runtimes: beyond this, invalid
PARITY_LIMIT = 1e-3  # fp32 max abs diff of a runtime's output vs upstream's before it is timed
INT8_MIN_COSINE = 0.98
"""int8 runtimes: lowest per-row cosine to upstream's output before timing. Only a broken-graph check:
the timed rows are random token ids, which static int8 calibrated on real captions is not made for
(MobileCLIP2-S0 OpenVINO int8 reached 0.988 on 32 random full-context rows, 0.9985 on real 77-token
captions); fidelity is gated when the graph is built, on the built-in real captions."""
FAULT_CALLS = 3  # untimed calls per runtime and group whose page faults are counted (after the timing)


def count_flops(fn: Callable[[Any], Any], inputs: Any) -> int:
    """FLOPs of one call (multiply-add = 2 FLOPs), counted by torch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .compat.torch_ops import mha_fastpath_disabled

    with torch.no_grad(), mha_fastpath_disabled(), FlopCounterMode(display=False) as counter:
        fn(inputs)
    return int(counter.get_total_flops())


def _no_sync() -> None:
    return None


def call_timer(run: Callable[[], Any], sync: Callable[[], None] = _no_sync) -> Callable[[], float]:
    """``run`` as a timer: a function that calls ``run`` once and returns the seconds it took."""

    def timer() -> float:
        begin = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - begin

    return timer


def seconds_per_call(
    run: Callable[[], Any],
    window: float,
    minimum: int = 3,
    sync: Callable[[], None] = _no_sync,
    best: bool = False,
) -> float:
    """One warm-up call, then calls of ``run`` for ``window`` seconds (at least ``minimum``): the mean
    seconds per call (a throughput), or with ``best`` the fastest call (a peak rate, for machine
    descriptions such as copy bandwidth)."""
    timer = call_timer(run, sync)
    timer()
    times: list[float] = []
    deadline = time.perf_counter() + window
    while len(times) < minimum or time.perf_counter() < deadline:
        times.append(timer())
    return min(times) if best else sum(times) / len(times)


def paired_samples(
    timers: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each timer: one call each per round, in :func:`round_order`."""
    names = list(timers)
    for _ in range(warmup):
        for name in names:
            timers[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in round_order(names, index):
            samples[name].append(timers[name]())
    return samples


def round_order(names: Sequence[str], index: int) -> list[str]:
    """Round ``index``'s call order: the list rotated by ``index``, plain alternation for two.

    Every runtime takes every position equally often, and no runtime is ever called twice in a
    row, also across rounds: a call right after the same runtime's previous call finds its weights
    still in cache and is markedly faster than one after another runtime, so an order that repeats
    a runtime (reversing every other round repeats the first and last at each turn) favours it.
    """
    if len(names) <= 2:
        return list(names)
    shift = index % len(names)
    return [*names[shift:], *names[:shift]]


def alone_samples(
    timer: Callable[[], float], calls: int, twin: Callable[[], float] | None = None
) -> list[float]:
    """Seconds per call of one timer with no other runtime called in between: back to back, or
    alternated with ``twin`` (the same runtime in another worker) when given."""
    if twin is None:
        return [timer() for _ in range(calls)]
    return paired_samples({"timer": timer, "twin": twin}, calls, warmup=0)["timer"]


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
    max_abs_diff: float = 0.0  # of this runtime's output vs upstream's on the timed input
    min_cosine: float = 1.0  # lowest per-row cosine of this runtime's output to upstream's
    page_faults: float | None = None  # median minor page faults per call (None: not counted)

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


def same_work_pairs(
    results: Sequence[Measurement], shortens_text: Callable[[str, str], bool]
) -> list[tuple[str, str, float, float]]:
    """(model, runtime, ``text`` speedup, ``text-full`` speedup) at batch 1 wherever both rows are the
    same work measured twice: a noise gauge. Upstream never shortens a caption, so the two ratios of
    a runtime that does not either (``shortens_text(model, runtime)`` false: every runtime on a
    bidirectional text tower; all but ``optimize`` on a causal one) should agree; how far they differ
    is what the run's noise alone does to a ratio."""
    speedups = {
        (r.model, r.runtime, r.tower): r.speedup for r in results if r.batch == 1 and r.runtime != "upstream"
    }
    return [
        (model, runtime, speedup, speedups[(model, runtime, "text-full")])
        for (model, runtime, tower), speedup in speedups.items()
        if tower == "text" and (model, runtime, "text-full") in speedups and not shortens_text(model, runtime)
    ]


def tower_inputs(model: nn.Module, batch: int, caption: int = CAPTION_TOKENS) -> dict[str, torch.Tensor]:
    """Random image, caption and full-context token inputs of the sizes ``model`` expects (fixed seed)."""
    import torch

    from .inference.onednn import example_inputs
    from .shapes import caption_tokens, token_geometry

    image, _ = example_inputs(model)
    generator = torch.Generator().manual_seed(0)
    context, vocab = token_geometry(model)
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
    timers: dict[str, Callable[[], float]],
    flops: int,
    rounds: int,
    warmup: int = 1,
    twin: Callable[[], float] | None = None,
) -> list[Measurement]:
    """Time ``timers`` (``upstream`` first) paired, plus upstream alone before and after; -> rows.

    A timer is a call returning the seconds of one call of its runtime: :func:`timed` in this
    process, :meth:`IsolatedRuntime.time_call` in a worker process. ``twin`` (a second upstream
    timer) makes "alone" mean upstream alternated with its twin rather than back to back: the
    same cache state as among the others, without them (:func:`alone_samples`).
    """
    upstream = timers["upstream"]
    for _ in range(warmup):
        upstream()
    half = max(1, rounds // 2)
    alone = alone_samples(upstream, half, twin)
    samples = paired_samples(timers, rounds, warmup)
    alone += alone_samples(upstream, half, twin)
    interference, valid = interference_check(alone, samples["upstream"])
    if len(timers) == 1:
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


# ---------------------------------------------------------------------------------------------
# Each runtime in its own process.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What a worker process needs to build one runtime (picklable: sent to a fresh interpreter).

    ``builder`` is ``"module:function"``, called as ``function(recipe)`` in the worker after the
    thread counts are set; it returns ``prepare(tower, inputs) -> run``, where ``run()`` is the
    no-argument call that gets timed and returns the embeddings. Empty: the built-in builder of
    ``runtime`` (:data:`BUILDERS`).
    """

    model: str
    runtime: str
    threads: int
    pretrained: str | None = None
    builder: str = ""
    options: tuple[tuple[str, Any], ...] = ()  # extra settings a builder reads (e.g. an artifact folder)


def seeded_model(name: str, pretrained: str | None = None) -> nn.Module:
    """The model every process of a benchmark builds: fixed seed, eval, no grad, so the driver
    (inputs, FLOPs, exports) and each worker hold the same random weights."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=pretrained).eval()
    model.requires_grad_(False)
    return model


def _built_model(recipe: Recipe) -> nn.Module:
    return seeded_model(recipe.model, recipe.pretrained)


def build_upstream(recipe: Recipe) -> Callable[[str, Any], Callable[[], Any]]:
    baseline = upstream_model(_built_model(recipe))
    return lambda tower, inputs: encoder_call(baseline, tower, inputs)


def build_ours(recipe: Recipe) -> Callable[[str, Any], Callable[[], Any]]:
    from .inference import optimize

    fast = optimize(_built_model(recipe))
    return lambda tower, inputs: encoder_call(fast, tower, inputs)


def build_backend(recipe: Recipe) -> Callable[[str, Any], Callable[[], Any]]:
    """``optimize(model, backend=...)`` for the runtime names ``onnxruntime`` / ``openvino`` (fp32 graphs)
    and ``onnxruntime-int8`` / ``openvino-int8`` (int8 text tower, :func:`int8_text_runtime`); the graphs
    are built into a folder that lives as long as the worker, so every run builds them afresh."""
    from .inference import optimize

    backend = recipe.runtime.removesuffix("-int8")
    folder = tempfile.TemporaryDirectory(prefix="mobileclip2-bench-")  # removed when the worker exits
    fast = optimize(
        _built_model(recipe),
        backend=backend,
        int8=int8_text_runtime(recipe.runtime),
        threads=recipe.threads,
        cache_dir=folder.name,
    )
    fast.cache_folder = folder
    return lambda tower, inputs: encoder_call(fast, tower, inputs)


def int8_text_runtime(runtime: str) -> bool:
    """Whether ``runtime`` is an ``optimize(..., int8=True)`` backend: its text tower is int8 (checked
    by cosine to upstream, not by max abs diff) and its image tower is the fp32 backend's (not timed
    twice)."""
    return runtime.endswith("-int8")


TWIN = "upstream-twin"  # the second upstream worker of the interference check (not a result row)

BUILDERS = {
    "upstream": "mobileclip2.benchmarking:build_upstream",
    "ours": "mobileclip2.benchmarking:build_ours",
    **{
        runtime: "mobileclip2.benchmarking:build_backend"
        for runtime in ("onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
    },
}


def _builder(recipe: Recipe) -> Callable[[Recipe], Callable[[str, Any], Callable[[], Any]]]:
    path = recipe.builder or BUILDERS.get(recipe.runtime, "")
    if ":" not in path:
        raise ValueError(
            f"runtime {recipe.runtime!r} has no builder: use one of {sorted(BUILDERS)} or give "
            "Recipe(builder='module:function')"
        )
    module, function = path.split(":", 1)
    return getattr(importlib.import_module(module), function)


def _as_array(output: Any) -> Any:
    import numpy as np

    return output.detach().float().cpu().numpy() if hasattr(output, "detach") else np.asarray(output)


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (all threads), or None where ``resource`` is missing
    (Windows).

    Counted because they are a part of a call's cost that the machine, not the code, prices: a call
    that touches freshly allocated memory (eager aten convs reorder large weights into a new buffer
    on every call; docs/benchmarks.md has the counts) pays the kernel, and on a virtual machine the
    host, for every page, at a price that moves with the host's state. A ratio between runtimes
    that fault differently moves with it; the count does not.
    """
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_per_call(run: Callable[[], Any], calls: int) -> float | None:
    """Median minor page faults of one call of ``run`` over ``calls`` calls (None: not countable)."""
    if calls < 1:
        raise ValueError(f"faults_per_call(calls={calls}): count at least one call")
    if minor_page_faults() is None:
        return None
    counts = []
    for _ in range(calls):
        before = minor_page_faults()
        run()
        counts.append(minor_page_faults() - before)
    return statistics.median(counts)


def _worker_main(recipe: Recipe, connection: Any) -> None:
    """A worker's life: set threads, build, then serve requests until told to stop.

    Requests: ``("prepare", tower, inputs, is_tensor)`` -> ``("output", array)`` (one untimed call
    whose output the driver checks); ``("time",)`` -> ``("seconds", s)`` with perf_counter around
    the call only; ``("faults", calls)`` -> ``("faults", median minor page faults per call)``;
    ``None`` -> exit. Any failure goes back as ``("error", traceback)``. Between requests the worker
    blocks in ``recv`` (no spinning).
    """
    try:
        set_threads(recipe.threads)
        prepare = _builder(recipe)(recipe)
        set_threads(recipe.threads)  # torch may have been imported by the builder
        connection.send(("ready",))
        run: Callable[[], Any] | None = None
        while (request := connection.recv()) is not None:
            if request[0] == "prepare":
                _, tower, inputs, is_tensor = request
                if is_tensor:  # sent as an array: a pickled tensor would land in shared memory
                    import torch

                    inputs = torch.from_numpy(inputs)
                run = prepare(tower, inputs)
                connection.send(("output", _as_array(run())))
            elif run is None:
                raise RuntimeError(f"request {request[0]!r} before any 'prepare': nothing to run yet")
            elif request[0] == "faults":
                connection.send(("faults", faults_per_call(run, request[1])))
            elif request[0] == "time":
                begin = time.perf_counter()
                run()
                connection.send(("seconds", time.perf_counter() - begin))
            else:
                raise ValueError(f"unknown request {request[0]!r}: expected 'prepare', 'time' or 'faults'")
    except EOFError:  # the driver went away: nothing to report to
        pass
    except BaseException:
        with contextlib.suppress(OSError):
            connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


class IsolatedRuntime:
    """One runtime built and called in its own process (spawned: a fresh interpreter)."""

    def __init__(self, recipe: Recipe):
        context = multiprocessing.get_context("spawn")
        self.recipe = recipe
        self._connection, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(recipe, child), name=f"bench-{recipe.runtime}", daemon=True
        )
        self.process.start()
        child.close()

    def _ask(self, *request: Any) -> Any:
        if request:
            self._connection.send(request)
        try:
            reply = self._connection.recv()
        except EOFError:
            self.process.join(5)
            raise BenchmarkWorkerError(
                f"the {self.recipe.runtime} worker for {self.recipe.model} died "
                f"(exit code {self.process.exitcode}) without a reply: out of memory, a crash in native "
                "code, or a main script that starts workers without `if __name__ == '__main__':` "
                "(spawned workers re-import it); the worker's stderr above says more"
            ) from None
        if reply[0] == "error":
            raise BenchmarkWorkerError(
                f"the {self.recipe.runtime} worker for {self.recipe.model} failed:\n{reply[1]}"
            )
        return reply[1] if len(reply) > 1 else None

    def wait_ready(self) -> None:
        self._ask()

    def prepare(self, tower: str, inputs: Any) -> Any:
        """Make ``inputs`` the input of the timed call; returns the output (as a numpy array)."""
        is_tensor = hasattr(inputs, "detach")
        return self._ask("prepare", tower, inputs.numpy() if is_tensor else inputs, is_tensor)

    def time_call(self) -> float:
        """Seconds of one call, measured in the worker (the pipe is not in the timing)."""
        return self._ask("time")

    def page_faults(self, calls: int = FAULT_CALLS) -> float | None:
        """Median minor page faults per call, counted in the worker over ``calls`` untimed calls
        (None where the platform cannot count them)."""
        if calls < 1:
            raise ValueError(f"page_faults(calls={calls}): count at least one call")
        return self._ask("faults", calls)

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()


def start_isolated(recipes: Sequence[Recipe], stack: Any) -> dict[str, IsolatedRuntime]:
    """A ready worker per recipe, by runtime name; each is closed by ``stack`` (an ExitStack).

    The workers build at the same time; each is asked only when all are ready.
    """
    workers = {}
    for recipe in recipes:
        worker = IsolatedRuntime(recipe)
        stack.callback(worker.close)
        workers[recipe.runtime] = worker
    for worker in workers.values():
        worker.wait_ready()
    return workers


def check_outputs(
    outputs: dict[str, Any], limit: float = PARITY_LIMIT, min_cosine: float = INT8_MIN_COSINE
) -> dict[str, dict[str, float]]:
    """Each runtime's output vs upstream's: ``{"max_abs_diff": ..., "min_cosine": ...}`` per runtime. A
    runtime beyond ``limit`` (max abs diff; int8 runtimes, :func:`int8_text_runtime`: below
    ``min_cosine``, the lowest per-row cosine) is an error: a fast wrong answer is not a result."""
    import numpy as np

    from .export.parity import cosines

    want = outputs["upstream"]

    def compared(got: Any) -> dict[str, float]:
        cosine = float(cosines(got.reshape(len(got), -1), want.reshape(len(want), -1)).min())
        return {"max_abs_diff": float(np.abs(got - want).max()), "min_cosine": cosine}

    checks = {runtime: compared(got) for runtime, got in outputs.items()}

    def failure(runtime: str, check: dict[str, float]) -> str | None:
        if int8_text_runtime(runtime):
            ok = check["min_cosine"] >= min_cosine
            return None if ok else f"cosine {check['min_cosine']:.4f} < {min_cosine}"
        ok = check["max_abs_diff"] <= limit
        return None if ok else f"max abs diff {check['max_abs_diff']:.2e} > {limit:.0e}"

    wrong = {runtime: why for runtime, check in checks.items() if (why := failure(runtime, check))}
    if wrong:
        raise BenchmarkWorkerError(
            "outputs disagree with upstream's before timing ("
            + ", ".join(f"{runtime}: {why}" for runtime, why in wrong.items())
            + "): fix that runtime first"
        )
    return checks


def benchmark_model(
    name: str,
    batches: tuple[int, ...] = (1,),
    towers: tuple[str, ...] = ("image", "text", "text-full"),
    runtimes: tuple[str, ...] = ("upstream", "ours", "onnxruntime", "openvino"),
    pretrained: str | None = None,
    rounds: Callable[[int], int] = lambda batch: 20 if batch == 1 else 6,
    log: Callable[[str], None] = print,
    threads: int | None = None,
    builders: dict[str, str] | None = None,
) -> list[Measurement]:
    """Median latency and paired speedup of each runtime for each tower and batch size (CPU, fp32;
    int8 runtimes on the text towers only).

    Each runtime runs in its own worker process (``threads`` torch / onnxruntime threads each;
    default: this process's torch thread count); ``builders`` maps a runtime name to a
    ``"module:function"`` builder for runtimes beyond :data:`BUILDERS`.
    """
    import torch

    if "upstream" not in runtimes:
        raise ValueError("benchmark_model: 'upstream' must be among the runtimes (every ratio is against it)")
    threads = threads or torch.get_num_threads()
    model = seeded_model(name, pretrained)  # inputs and FLOPs only
    recipes = [
        Recipe(name, runtime, threads, pretrained, (builders or {}).get(runtime, "")) for runtime in runtimes
    ]
    # The interference check's baseline partner: upstream again, in a worker of its own.
    recipes.append(
        Recipe(name, TWIN, threads, pretrained, (builders or {}).get("upstream", BUILDERS["upstream"]))
    )
    results: list[Measurement] = []
    with contextlib.ExitStack() as stack:
        started = time.perf_counter()
        workers = start_isolated(recipes, stack)
        log(f"  {name}: {len(workers)} worker processes built in {time.perf_counter() - started:.1f} s")
        for tower in towers:
            for batch in batches:
                inputs = tower_inputs(model, batch)[tower]
                encode = model.encode_image if tower == "image" else model.encode_text
                flops = count_flops(encode, inputs)
                timed = [r for r in runtimes if tower != "image" or not int8_text_runtime(r)]
                outputs = {
                    runtime: worker.prepare(tower, inputs)
                    for runtime, worker in workers.items()
                    if runtime in timed or runtime == TWIN
                }
                checks = check_outputs(outputs)
                timers = {runtime: workers[runtime].time_call for runtime in timed}
                rows = measure_group(
                    name,
                    tower,
                    batch,
                    timers,
                    flops,
                    rounds(batch),
                    warmup=2 if batch == 1 else 1,
                    twin=workers[TWIN].time_call,
                )
                faults = {runtime: workers[runtime].page_faults() for runtime in timed}  # after timing
                for row in rows:
                    row.max_abs_diff = checks[row.runtime]["max_abs_diff"]
                    row.min_cosine = checks[row.runtime]["min_cosine"]
                    row.page_faults = faults[row.runtime]
                results += rows
                log(
                    f"  {name} {tower} batch {batch}: "
                    + ", ".join(
                        f"{r.runtime} {r.seconds * 1e3:.1f} ms ({r.speedup:.2f}x, diff {r.max_abs_diff:.0e}, "
                        f"cos {r.min_cosine:.4f})"
                        for r in rows
                    )
                    + f"; upstream alone vs among others {rows[0].interference:+.1%}"
                    + ("" if rows[0].valid else " -> INVALID")
                )
    return results
