"""Inference benchmark: upstream open_clip + timm reparam vs mobileclip2.optimize and its CPU backends.

CPU (default): batch 1 (and more with --batches), image tower, text tower on a 12-token caption and
on all 77 tokens, of MobileCLIP2-S0, MobileCLIP-S0 and MobileCLIP2-S4, plus a batch-32 throughput
group for MobileCLIP2-S0 (--throughput-batch / --throughput-models). Runtimes: upstream,
``optimize(model)`` (ours), ``optimize(model, backend="onnxruntime" | "openvino")`` (fp32) and the
same with ``int8=True`` (int8 text tower, timed on the text towers only), with the
method of mobileclip2.benchmarking (each runtime in its own worker process, alternated calls,
median of per-round ratios, onnxruntime threads not spinning, upstream timed alone too: a group
whose upstream time moves more than 10% is marked invalid), the image towers' GFLOP/s against this
machine's dense-matmul GFLOP/s measured in the same run, each runtime's page faults per call, and
the plugin overheads (paired fresh interpreters). Writes the CPU section of docs/benchmarks.md when
the run has the documented scope and every group is valid (the section keeps the latest such run;
--write-anyway records any run):

    nice -n -5 python benchmarks/inference.py          # the documented CPU run (see docs for its time)
    python benchmarks/inference.py --quick             # MobileCLIP2-S0 only, few rounds, no docs

CUDA (--device cuda): bf16 (--dtype), upstream = reparameterize_model + .to(cuda, dtype,
channels_last), ours = mobileclip2.optimize(dtype=..., channels_last); with --compile both sides
get torch.compile of each tower (upstream: model.visual / model.text) in the mode given, per batch.
Throughput at batch 256 (128 for L-14) and batch-1 latency, cosine to the fp32 embeddings. Writes
the GPU section(s) after every model, so a run stopped by a time limit keeps what it measured:

    python benchmarks/inference.py --device cuda
    python benchmarks/inference.py --device cuda --compile --towers image --models MobileCLIP2-S0

Random weights: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _support  # noqa: E402
import torch  # noqa: E402

from mobileclip2 import benchmarking as bm  # noqa: E402
from mobileclip2.system import package_versions, usable_cores  # noqa: E402

CPU_MODELS = ("MobileCLIP2-S0", "MobileCLIP-S0", "MobileCLIP2-S4")
GPU_MODELS = ("MobileCLIP2-S0", "MobileCLIP2-S4", "MobileCLIP2-L-14")
TOWERS = ("image", "text", "text-full")
CPU_RUNTIMES = ("upstream", "ours", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
THROUGHPUT_BATCH, THROUGHPUT_MODELS = 32, ("MobileCLIP2-S0",)
CPU_ROUNDS = 20  # at batch 1
CPU_MARKERS = ("<!-- inference:begin -->", "<!-- inference:end -->")
RUNTIME_LABEL = {
    "upstream": "upstream open_clip + timm reparameterize_model (eager)",
    "ours": "`optimize(model)` (PyTorch)",
    "onnxruntime": '`optimize(model, backend="onnxruntime")`',
    "openvino": '`optimize(model, backend="openvino")`',
    "onnxruntime-int8": '`optimize(model, backend="onnxruntime", int8=True)` (text int8)',
    "openvino-int8": '`optimize(model, backend="openvino", int8=True)` (text int8)',
}


# ---------------------------------------------------------------------------------------------
# Plugin overhead: paired fresh processes.
# ---------------------------------------------------------------------------------------------

IMPORT_SNIPPET = "import time; t = time.perf_counter(); import open_clip; print(time.perf_counter() - t)"
REGISTER_SNIPPET = """
import time, open_clip, mobileclip2.plugin as plugin
t = time.perf_counter()
plugin.register()
print(time.perf_counter() - t)
"""


def _python_stdout(code: str, autoload: str) -> str:
    env = dict(os.environ, MOBILECLIP2_AUTOLOAD=autoload, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=str(REPO)
    )
    return proc.stdout.strip().splitlines()[-1]


def plugin_overhead(pairs: int) -> dict[str, float]:
    """`import open_clip` with the plugin off (A) and on (B), fresh interpreters, A B / B A alternated."""
    off, on = [], []
    for index in range(pairs):
        order = [("0", off), ("1", on)]
        for env, sink in order if index % 2 == 0 else reversed(order):
            sink.append(float(_python_stdout(IMPORT_SNIPPET, env)))
    register = statistics.median(float(_python_stdout(REGISTER_SNIPPET, "0")) for _ in range(3))
    return {
        "off": statistics.median(off),
        "on": statistics.median(on),
        "ratio": bm.median_ratio(on, off),
        "pairs": pairs,
        "register": register,
    }


# ---------------------------------------------------------------------------------------------
# CPU.
# ---------------------------------------------------------------------------------------------


def output_check(r: bm.Measurement) -> str:
    """How the runtime's output compared with upstream's: the lowest cosine for int8, else max abs diff."""
    return f"cos {r.min_cosine:.4f}" if bm.int8_text_runtime(r.runtime) else f"{r.max_abs_diff:.0e}"


def cpu_table(results: list[bm.Measurement], peak: dict[str, float]) -> str:
    lines = [
        "| model | tower | batch | runtime | median ms | per s | vs upstream (median of paired ratios) "
        "| GFLOP/s | % of oneDNN mm | page faults / call | output vs upstream | check |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        share = (
            f"{100 * r.gflops_per_s / peak['onednn']:.0f}%"
            if "onednn" in peak and r.tower == "image"
            else "-"
        )
        faults = "-" if r.page_faults is None else f"{r.page_faults:,.0f}"
        check = "ok" if r.valid else f"**invalid** (upstream {r.interference:+.0%} among the others)"
        lines.append(
            f"| {r.model} | {r.tower} | {r.batch} | {r.runtime} | {r.seconds * 1e3:.1f} | "
            f"{r.batch / r.seconds:.1f} | {r.speedup:.2f}x | {r.gflops_per_s:.0f} | {share} | {faults} | "
            f"{output_check(r)} | {check} |"
        )
    return "\n".join(lines)


def fastest_per_tower(results: list[bm.Measurement]) -> list[str]:
    """One line per model and batch: the runtime with the highest speedup on each tower (valid groups
    only), the line README quotes."""
    best: dict[tuple[str, int], dict[str, bm.Measurement]] = {}
    for r in results:
        if r.runtime == "upstream" or not r.valid:
            continue
        towers = best.setdefault((r.model, r.batch), {})
        if r.tower not in towers or r.speedup > towers[r.tower].speedup:
            towers[r.tower] = r
    lines = ["Fastest runtime per tower (vs upstream, same run):", ""]
    for (model, batch), towers in best.items():
        lines.append(
            f"- {model}, batch {batch}: "
            + "; ".join(f"{tower} {r.runtime} **{r.speedup:.2f}x**" for tower, r in towers.items())
        )
    return lines


IMAGE_TARGETS = {1: 2.0, THROUGHPUT_BATCH: 1.5}  # best runtime vs upstream on the image towers
INT8_TEXT_TARGET = 1.8  # int8 text vs fp32 upstream


def cpu_targets(results: list[bm.Measurement]) -> list[str]:
    """Issue 25's targets, read off this run: the best runtime on each image tower (>= 2.0x at batch 1,
    >= 1.5x at the throughput batch) and the best int8 text runtime (>= 1.8x)."""
    lines = [
        f"Targets: best runtime on the image tower >= {IMAGE_TARGETS[1]}x upstream at batch 1 and "
        f">= {IMAGE_TARGETS[THROUGHPUT_BATCH]}x at batch {THROUGHPUT_BATCH}; "
        f"int8 text >= {INT8_TEXT_TARGET}x upstream (fp32):",
        "",
    ]

    def verdict(rows: list[bm.Measurement], target: float) -> str:
        best = max(rows, key=lambda r: r.speedup)
        met = ("met" if best.speedup >= target else "missed") if all(r.valid for r in rows) else "run invalid"
        return f"**{best.speedup:.2f}x** {best.runtime} ({met})"

    groups: dict[tuple[str, str, int], list[bm.Measurement]] = {}
    for r in results:
        if r.runtime != "upstream":
            groups.setdefault((r.model, r.tower, r.batch), []).append(r)
    for (model, tower, batch), rows in groups.items():
        if tower == "image" and batch in IMAGE_TARGETS:
            lines.append(f"- {model} image, batch {batch}: {verdict(rows, IMAGE_TARGETS[batch])}")
        int8 = [r for r in rows if bm.int8_text_runtime(r.runtime)]
        if tower == "text" and int8:
            lines.append(f"- {model} int8 text, batch {batch}: {verdict(int8, INT8_TEXT_TARGET)}")
    return lines


def shortens_text(model: str, runtime: str) -> bool:
    """Whether ``runtime`` computes fewer tokens for a caption than for 77: only ``optimize`` on a causal
    text tower (open_clip config ``no_causal_mask`` false; mobileclip2.inference.causal_text)."""
    import open_clip

    return runtime == "ours" and not open_clip.get_model_config(model)["text_cfg"].get(
        "no_causal_mask", False
    )


def noise_gauge(results: list[bm.Measurement]) -> list[str]:
    """The ``text`` / ``text-full`` pairs that are the same work, as one line: how much the run's noise
    alone moves a ratio (bm.same_work_pairs)."""
    pairs = bm.same_work_pairs(results, shortens_text)
    if not pairs:
        return []
    spread = max(abs(text / full - 1) for _, _, text, full in pairs)
    return [
        "",
        "Noise gauge: for these runtimes `text` and `text-full` are the same work (a bidirectional tower, or "
        "a runtime that does not stop at the end-of-text token), so each pair should agree; "
        f"here they differ by up to {spread:.0%}: "
        + "; ".join(f"{model} {runtime} {text:.2f}x / {full:.2f}x" for model, runtime, text, full in pairs)
        + ".",
    ]


def render_cpu(results, peak, overhead, meta) -> str:
    v = meta["versions"]
    valid = all(r.valid for r in results)
    lines = [
        CPU_MARKERS[0],
        "## Inference on CPU: upstream vs mobileclip2.optimize and its backends",
        "",
        f"Measured {meta['date']} with `{meta['command']}` in {meta['seconds']:.0f} s "
        + (
            "(valid)."
            if valid
            else "(**INVALID: some groups failed the interference check; do not quote them**)."
        ),
        "",
        f"- device: CPU, {meta['cpu']}, {meta['cores']} cores visible, torch threads {meta['threads']}; "
        f"load average (1, 5, 15 min) before / after: {meta['load_before']} / {meta['load_after']}; "
        + _support.bandwidth_text(meta["bandwidth"])
        + " (batch-1 towers stream their weights from memory every call)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- runtimes: "
        + "; ".join(f"{name} = {label}" for name, label in RUNTIME_LABEL.items() if name in meta["runtimes"])
        + ". The backends build their graphs once per worker (not timed) with as many threads as torch; "
        "ONNX Runtime's threads do not spin. fp32 except the int8 text towers, timed on text only (their "
        "image tower is the fp32 backend's). Random weights; 256x256 images; text = a 12-token caption "
        "(start, 10 words, end) padded to 77, text-full = 77 real tokens (worst case; `optimize` stops "
        "causal text towers at the end-of-text token, so the caption row is where that shows).",
        "- isolation: each runtime is built and called in its own process (spawned worker, "
        f"{meta['threads']} threads each, OMP_WAIT_POLICY {meta['omp_wait_policy']}; the others wait "
        "blocked on a pipe while one is timed; the worker times its own call, the pipe is not in the "
        "timing); before timing, each runtime's output is checked against "
        f"upstream's on the same input (max abs diff <= {bm.PARITY_LIMIT:g}; int8: lowest cosine >= "
        f"{bm.INT8_MIN_COSINE:g}).",
        "- timing: runtimes called alternately, order rotated every round (no runtime twice in a row), "
        f"{meta['rounds']}; speedup = median over rounds of upstream time / runtime time; check = upstream's "
        "median time alone, alternated with a twin upstream worker so its weights are as cold as among the "
        "others (half the rounds before, half after), vs among the other runtimes, invalid beyond 10%; "
        "page faults / call = median minor page faults of one call, counted in each worker over "
        f"{bm.FAULT_CALLS} untimed calls after the timing "
        "(a cost the machine prices: the count is stable, its price is not; '-': not countable here).",
        f"- dense fp32 matmul, same run ({meta['mm_size']}^3): torch.mm {peak['torch.mm']:.0f} GFLOP/s"
        + (
            f", oneDNN prepacked {peak['onednn']:.0f} GFLOP/s (the peak the % column uses)"
            if "onednn" in peak
            else ""
        ),
        "",
        cpu_table(results, peak),
        "",
        *fastest_per_tower(results),
        "",
        *cpu_targets(results),
        *noise_gauge(results),
    ]
    if overhead:
        lines += [
            "",
            f"Plugin overhead: `import open_clip` {overhead['off'] * 1e3:.0f} ms with "
            f"MOBILECLIP2_AUTOLOAD=0, {overhead['on'] * 1e3:.0f} ms with 1 (medians of {overhead['pairs']} "
            f"alternated fresh-interpreter pairs, median paired ratio {overhead['ratio']:.3f}x, "
            "target <= 1.05x); `mobileclip2.plugin.register()` "
            f"itself takes {overhead['register'] * 1e3:.1f} ms in-process.",
        ]
    lines.append(CPU_MARKERS[1])
    return "\n".join(lines)


def run_cpu(args) -> int:
    date, load_before = _support.utc_stamp(), _support.load_average()
    started = time.time()
    peak = _support.cpu_matmul_gflops(2048)
    bandwidth_before = _support.cpu_copy_gbytes()
    print("dense matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), flush=True)
    print(f"copy bandwidth: {bandwidth_before:.1f} GB/s", flush=True)

    def rounds(batch: int) -> int:
        return (args.rounds if batch == 1 else max(3, args.rounds // 2)) if not args.quick else 4

    all_batches = sorted({b for name in args.models for b in batches_for(args, name)})
    results: list[bm.Measurement] = []
    for name in args.models:
        results += bm.benchmark_model(
            name,
            batches=batches_for(args, name),
            towers=tuple(args.towers),
            runtimes=tuple(args.runtimes),
            rounds=rounds,
            log=lambda line: print(line, flush=True),
        )
    overhead = None if args.no_overhead else plugin_overhead(args.pairs)
    meta = {
        "date": date,
        "command": " ".join(["python", "benchmarks/inference.py", *args.argv]),
        "seconds": time.time() - started,
        "cpu": _support.cpu_description(),
        "cores": usable_cores(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "load_before": load_before,
        "load_after": _support.load_average(),
        "bandwidth": (bandwidth_before, _support.cpu_copy_gbytes()),
        "versions": package_versions(
            "open_clip_torch", "timm", "onnxruntime", "openvino", "nncf", "mobileclip2"
        ),
        "rounds": "; ".join(f"batch {b}: {rounds(b)} rounds" for b in all_batches),
        "runtimes": list(args.runtimes),
        "mm_size": 2048,
    }
    section = render_cpu(results, peak, overhead, meta)
    print(section)
    print(f"total {meta['seconds']:.0f} s", flush=True)
    if args.json:
        print(
            json.dumps(
                {"meta": meta, "peak": peak, "overhead": overhead, "results": [vars(r) for r in results]}
            )
        )
    valid = all(r.valid for r in results)
    held_back = doc_hold_reason(args, valid)
    if not args.no_docs and (held_back is None or args.write_anyway):
        _support.write_doc_section(Path(args.doc), *CPU_MARKERS, section)
        print(f"updated {args.doc}")
    elif not args.no_docs:  # the section holds the latest full valid run, which README quotes
        print(f"not written to {args.doc}: {held_back}; pass --write-anyway to record this run there")
    return 0 if valid else 3


def batches_for(args, model: str) -> tuple[int, ...]:
    """``--batches``, plus the throughput batch for the throughput models."""
    extra = [args.throughput_batch] if args.throughput_batch and model in args.throughput_models else []
    return tuple(dict.fromkeys([*args.batches, *extra]))


def doc_hold_reason(args, valid: bool) -> str | None:
    """Why this CPU run must not replace the docs section (None: it may). The section holds the latest
    run of the documented scope that passed every check, and README quotes it: a run with an invalid
    group, or of a narrower scope (fewer models, towers, runtimes, batches or rounds), would replace it
    with less."""
    if not valid:
        return "some groups failed the interference check (rerun on a quieter machine)"
    scope = {
        "models": (sorted(args.models), sorted(CPU_MODELS)),
        "towers": (sorted(args.towers), sorted(TOWERS)),
        "runtimes": (sorted(args.runtimes), sorted(CPU_RUNTIMES)),
        "batches": (sorted(args.batches), [1]),
        "throughput": (
            (args.throughput_batch, sorted(args.throughput_models)),
            (THROUGHPUT_BATCH, sorted(THROUGHPUT_MODELS)),
        ),
        "rounds": (args.rounds, CPU_ROUNDS),
    }
    narrower = [name for name, (given, documented) in scope.items() if given != documented]
    return f"not the documented scope ({', '.join(narrower)} differ)" if narrower else None


# ---------------------------------------------------------------------------------------------
# CUDA.
# ---------------------------------------------------------------------------------------------


def gpu_markers(compiled: bool) -> tuple[str, str]:
    kind = "inference-gpu-compile" if compiled else "inference-gpu"
    return f"<!-- {kind}:begin -->", f"<!-- {kind}:end -->"


def upstream_gpu(model, device: str, dtype: torch.dtype):
    """Issue 12's upstream: reparameterize_model(model).to(device, dtype).to(channels_last)."""
    up = bm.upstream_model(model).to(device, dtype).to(memory_format=torch.channels_last)
    return up


def _compile_upstream(up, mode: str):
    for attr in ("visual", "text"):
        if isinstance(getattr(up, attr, None), torch.nn.Module):
            setattr(up, attr, torch.compile(getattr(up, attr), mode=mode, dynamic=False))
    return up


def _gpu_call(model, tower: str, inputs: torch.Tensor, dtype: torch.dtype, upstream: bool):
    """Upstream gets its inputs already in its dtype / memory format (no cast timed); ours casts itself."""
    if upstream and tower == "image":
        inputs = inputs.to(dtype=dtype, memory_format=torch.channels_last)
    return bm.encoder_call(model, tower, inputs)


def gpu_rows(args, name: str, device: str, dtype: torch.dtype, sync) -> list[dict]:
    import open_clip

    from mobileclip2.inference import optimize

    torch.manual_seed(0)
    model = open_clip.create_model(name).eval().to(device)
    model.requires_grad_(False)
    big_batch = 128 if "L-14" in name else args.gpu_batch
    rows = []
    for batch in (big_batch, 1) if not args.dry_run else (2, 1):
        inputs = {k: v.to(device) for k, v in bm.tower_inputs(model, batch).items()}
        mode = args.compile_mode or ("reduce-overhead" if batch == 1 else "default")
        started = time.perf_counter()
        up = upstream_gpu(model, device, dtype)
        ours = optimize(model, dtype=dtype, compile=mode if args.compile else False)
        if args.compile:
            up = _compile_upstream(up, mode)
        for tower in args.towers:
            x = inputs[tower]
            with torch.inference_mode():
                ref = (model.encode_image if tower == "image" else model.encode_text)(x).float()
            run_up = _gpu_call(up, tower, x, dtype, upstream=True)
            run_ours = _gpu_call(ours, tower, x, dtype, upstream=False)
            build_start = time.perf_counter()
            for _ in range(3):  # compile / capture outside the timed rounds
                run_up(), run_ours()
            sync()
            warm = time.perf_counter() - build_start
            cosine = float(torch.nn.functional.cosine_similarity(run_ours().float(), ref).min())
            cosine_up = float(torch.nn.functional.cosine_similarity(run_up().float(), ref).min())
            flops = (
                bm.count_flops(model.encode_image if tower == "image" else model.encode_text, x[:1]) * batch
            )
            group = bm.measure_group(
                name,
                tower,
                batch,
                {"upstream": bm.call_timer(run_up, sync), "ours": bm.call_timer(run_ours, sync)},
                flops,
                args.gpu_rounds,
                2,
            )
            up_row, ours_row = group
            rows.append(
                dict(
                    model=name, tower=tower, batch=batch, mode=mode if args.compile else "eager",
                    up_ms=up_row.seconds * 1e3, ours_ms=ours_row.seconds * 1e3,
                    speedup=ours_row.speedup,
                    up_per_s=batch / up_row.seconds, ours_per_s=batch / ours_row.seconds,
                    ours_tflops=ours_row.gflops_per_s / 1e3, cosine=cosine, cosine_up=cosine_up,
                    valid=up_row.valid, interference=up_row.interference, warm_s=warm,
                )
            )  # fmt: skip
            r = rows[-1]
            print(
                f"  {name} {tower} batch {batch} [{r['mode']}]: upstream {r['up_ms']:.2f} ms, "
                f"ours {r['ours_ms']:.2f} ms, {r['speedup']:.2f}x, cos {cosine:.6f}, warm-up {warm:.0f} s, "
                f"{'ok' if r['valid'] else 'INVALID'}",
                flush=True,
            )
        print(
            f"  {name} batch {batch}: built and measured in {time.perf_counter() - started:.0f} s", flush=True
        )
        del up, ours
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def render_gpu(args, rows, meta) -> str:
    begin, end = gpu_markers(args.compile)
    title = "torch.compile on both sides" if args.compile else "eager"
    lines = [
        begin,
        f"## Inference on {meta['device_kind']} ({args.dtype}, {title}): upstream vs mobileclip2.optimize",
        "",
        f"Measured {meta['date']} with `{meta['command']}`"
        + (" (DRY RUN on CPU: not a measurement)" if args.dry_run else ""),
        "",
        f"- device: {meta['device']}; dense {args.dtype} matmul on it, same run: {meta['peak']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- upstream = `reparameterize_model(model).to('cuda', {args.dtype})"
        ".to(memory_format=torch.channels_last)`"
        + (", then `torch.compile(model.visual)` / `torch.compile(model.text)`" if args.compile else "")
        + f"; ours = `mobileclip2.optimize(model, dtype=torch.{args.dtype}"
        + (", compile=mode)`" if args.compile else ")`")
        + " (folded affines, channels-last, causal text stops at the end-of-text token). Compile mode: "
        "`default` at the large batch, `reduce-overhead` (CUDA graphs) at batch 1, "
        "unless --compile-mode says otherwise.",
        f"- timing: alternated calls, synchronized, {args.gpu_rounds} rounds after warm-up; speedup = "
        "median of per-round ratios; check = upstream alone vs among the others within 10%. cosine = lowest "
        "per-row cosine of ours (and upstream) to the fp32 model's embeddings. Random weights; "
        "text = 12-token captions, text-full = 77 tokens.",
        "",
        "| model | tower | batch | mode | upstream / s | ours / s | speedup | ours TFLOP/s "
        "| cosine ours (upstream) | check |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tower']} | {r['batch']} | {r['mode']} | {r['up_per_s']:.0f} | "
            f"{r['ours_per_s']:.0f} | {r['speedup']:.2f}x | {r['ours_tflops']:.1f} | "
            f"{r['cosine']:.6f} ({r['cosine_up']:.6f}) | "
            + ("ok" if r["valid"] else f"**invalid** ({r['interference']:+.0%})")
            + " |"
        )
    lines.append(end)
    return "\n".join(lines)


def run_gpu(args) -> int:
    date = _support.utc_stamp()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(
            "--device cuda: no CUDA device visible to torch; "
            "use GPU_DRY_RUN / --dry-run to check the script on CPU"
        )
        return 2
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # the fp32 reference embeddings in true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        peak = f"{_support.cuda_matmul_tflops(8192, args.dtype):.0f} TFLOP/s"
        device_text = _support.gpu_description()
    else:
        peak, device_text = "not measured (dry run)", f"CPU {_support.cpu_description()} (dry run)"
    meta = {
        "date": date,
        "command": " ".join(["python", "benchmarks/inference.py", *args.argv]),
        "device": device_text,
        "device_kind": "GPU",
        "peak": peak,
        "versions": package_versions("open_clip_torch", "timm", "triton", "mobileclip2"),
    }
    rows: list[dict] = []
    for name in args.models:
        try:
            rows += gpu_rows(args, name, device, dtype, sync)
        except Exception as error:  # one model failing must not lose the others' rows
            print(f"  {name}: FAILED {type(error).__name__}: {error}", flush=True)
            rows.append(dict(model=name, tower="-", batch=0, mode=f"failed: {type(error).__name__}",
                             up_ms=0, ours_ms=0, speedup=float("nan"), up_per_s=0, ours_per_s=0,
                             ours_tflops=0, cosine=float("nan"), cosine_up=float("nan"), valid=False,
                             interference=float("nan"), warm_s=0))  # fmt: skip
        section = render_gpu(args, rows, meta)
        if not args.no_docs:
            _support.write_doc_section(Path(args.doc), *gpu_markers(args.compile), section)
    print(render_gpu(args, rows, meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--towers", nargs="+", default=list(TOWERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1], help="CPU batch sizes")
    parser.add_argument("--runtimes", nargs="+", default=list(CPU_RUNTIMES), help="CPU runtimes")
    parser.add_argument(
        "--throughput-batch", type=int, default=THROUGHPUT_BATCH, help="CPU throughput batch (0: none)"
    )
    parser.add_argument("--throughput-models", nargs="+", default=list(THROUGHPUT_MODELS))
    parser.add_argument("--rounds", type=int, default=CPU_ROUNDS, help="CPU rounds at batch 1")
    parser.add_argument(
        "--quick", action="store_true", help="CPU: MobileCLIP2-S0 only, few rounds, docs untouched"
    )
    parser.add_argument(
        "--pairs", type=int, default=8, help="fresh-interpreter pairs for the plugin overhead"
    )
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="CUDA dtype")
    parser.add_argument("--compile", action="store_true", help="CUDA: torch.compile both sides")
    parser.add_argument("--compile-mode", default=None, help="CUDA: one compile mode for every batch")
    parser.add_argument("--gpu-batch", type=int, default=256, help="CUDA throughput batch (L-14: 128)")
    parser.add_argument("--gpu-rounds", type=int, default=10)
    parser.add_argument("--dry-run", action="store_true", help="--device cuda code path on CPU, tiny batches")
    parser.add_argument("--doc", default=str(_support.DOCS))
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument(
        "--write-anyway",
        action="store_true",
        help="CPU: write the section even for a run with an invalid group or of a narrower scope than the "
        "documented run (by default such a run leaves the section, and the latest full valid run in it, "
        "as it is)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda":
        args.models = args.models or list(GPU_MODELS)
        return run_gpu(args)
    args.models = args.models or list(CPU_MODELS)
    if args.quick:
        args.models, args.no_docs, args.pairs, args.throughput_batch = ["MobileCLIP2-S0"], True, 2, 0
    return run_cpu(args)


if __name__ == "__main__":
    sys.exit(main())
