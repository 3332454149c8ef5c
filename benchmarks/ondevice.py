"""On-device runtimes on this CPU: size on disk and batch-1 latency per tower, 1 and 2 threads.

    python benchmarks/ondevice.py                       # MobileCLIP2-S0, MobileCLIP-S0, MobileCLIP2-S4
    python benchmarks/ondevice.py --models MobileCLIP2-S0 --rounds 30

Runtimes per tower: PyTorch eager as a plain open_clip + timm user runs it (``upstream``:
``timm.utils.reparameterize_model``), :func:`mobileclip2.optimize`, ONNX Runtime fp32 and int8
(QDQ U8S8), ExecuTorch XNNPACK fp32 and int8 (PT2E) -- the artifacts ``mobileclip2 export`` writes
(parity-checked while exporting). Random weights (latency does not depend on their values); the
int8 artifacts are exported with the package's defaults: calibrated on its synthetic inputs (noise
images, caption-shaped word sequences) and gated like any export (the minimum cosine to fp32 over the
held-out rows and, for the text tower, the built-in captions; docs/deployment.md), so an int8
artifact that misses real captions fails its export here instead of reaching the table.

Method (mobileclip2.benchmarking): artifacts are exported once per model in this process; for each
(model, thread count) every runtime is then built in its own worker process (ExecuTorch's
threadpool is sized once, before the first program loads; no runtime's threads or caches touch
another's), checked against ``upstream`` first (fp32: max abs diff, int8: cosine), then timed
round-robin, one call each per round, order rotated every round, no runtime twice in a row (a slow
spell of the shared machine hits all of them); ONNX Runtime runs with thread spinning off. Upstream
is also timed with no other runtime called, alternated with a twin (upstream again, in a worker of
its own: the same cache state as among the others), half the rounds before and half after: if its
median alone and among the others differ by more than 10%, the (model, tower, threads) group is
marked invalid. Reported: median ms, and the median over rounds of the per-round ratio upstream /
runtime (speed-up). The results section of docs/benchmarks.md is rewritten by this command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- ondevice:begin -->", "<!-- ondevice:end -->"
MODELS = ("MobileCLIP2-S0", "MobileCLIP-S0", "MobileCLIP2-S4")
RUNTIMES = ("upstream", "optimize", "ort-fp32", "ort-int8", "et-fp32", "et-int8")
LABELS = {
    "upstream": "PyTorch eager (open_clip + timm reparameterize_model)",
    "optimize": "`mobileclip2.optimize`",
    "ort-fp32": "ONNX Runtime fp32",
    "ort-int8": "ONNX Runtime int8 (QDQ U8S8)",
    "et-fp32": "ExecuTorch XNNPACK fp32",
    "et-int8": "ExecuTorch XNNPACK int8",
}
ARTIFACTS = {
    "ort-fp32": ("onnx", False),
    "ort-int8": ("onnx", True),
    "et-fp32": ("executorch", False),
    "et-int8": ("executorch", True),
}


def _model(name: str):
    from mobileclip2.benchmarking import seeded_model

    return seeded_model(name)  # the weights every worker builds too


def export_all(name: str, directory: Path) -> dict[str, dict]:
    """Every artifact of ``name`` into ``directory``; returns the sidecars by runtime.

    An artifact whose sidecar is already in ``directory`` (``--workdir`` of an earlier run, e.g.
    ``--export-only`` while the machine was busy) is reused: the export pipeline writes a sidecar
    only after its artifacts passed their checks, so a sidecar means complete artifacts.
    """
    import open_clip

    from mobileclip2.export.pipeline import export_loaded, file_names

    model = _model(name)
    tokenizer = open_clip.get_tokenizer(name)  # int8 text towers are gated on the built-in captions
    sidecars = {}
    for runtime, (format, int8) in ARTIFACTS.items():
        existing = directory / file_names(name, format, int8)["sidecar"]
        config = json.loads(existing.read_text(encoding="utf-8")) if existing.is_file() else None
        # an int8 sidecar without a text evaluation on the built-in captions predates the current
        # recipes and gate: export again
        if config is not None and (not int8 or "captions" in config["fidelity"].get("text", {})):
            sidecars[runtime] = config
            print(f"  reusing {runtime} ({existing.name})", flush=True)
            continue
        with warnings.catch_warnings():
            # synthetic calibration: the unmeasured-fidelity warning is expected; the gate still applies
            warnings.simplefilter("ignore")
            result = export_loaded(
                model,
                directory,
                name=name,
                preprocess_cfg=dict(model.visual.preprocess_cfg),
                tokenizer=tokenizer,
                format=format,
                int8=int8,
            )
        sidecars[runtime] = result.config
        print(f"  exported {runtime}", flush=True)
    return sidecars


def build_runtime(recipe) -> object:
    """``prepare(tower, inputs) -> run`` of one runtime, built in its own worker process
    (mobileclip2.benchmarking.IsolatedRuntime): both towers' artifacts are loaded here, before any
    program runs (ExecuTorch's threadpool is sized once, at the first load)."""
    from mobileclip2 import benchmarking
    from mobileclip2.export.pipeline import file_names, format_module

    if recipe.runtime in ("upstream", benchmarking.TWIN):
        return benchmarking.build_upstream(recipe)
    if recipe.runtime == "optimize":
        return benchmarking.build_ours(recipe)
    directory = Path(dict(recipe.options)["directory"])
    format, int8 = ARTIFACTS[recipe.runtime]
    names = file_names(recipe.model, format, int8)  # what export_all wrote
    load = format_module(format).load
    sessions = {tower: load(directory / names[tower], recipe.threads) for tower in ("image", "text")}

    def prepare(tower: str, inputs):
        session, array = sessions[tower], inputs.numpy()
        return lambda: session(array)

    return prepare


INT8_FLOOR = 0.5  # below this an int8 artifact computes something else: not worth timing
INT8_NOTE = 0.99  # below this the row says so: the export's own gate (0.995 on captions) should make it rare


def check(runtime: str, got, want) -> dict:
    """fp32: max abs diff vs upstream (must be < PARITY_LIMIT); int8: lowest cosine to upstream (must
    be > INT8_FLOOR; below INT8_NOTE the table says so). A runtime that fails is an error, not a row."""
    import numpy as np

    from mobileclip2.benchmarking import PARITY_LIMIT
    from mobileclip2.errors import BenchmarkWorkerError
    from mobileclip2.export.parity import cosines

    if runtime.endswith("int8"):
        found = {"cosine": float(cosines(got, want).min())}
        ok = found["cosine"] > INT8_FLOOR
    else:
        found = {"max_abs_diff": float(np.abs(got - want).max())}
        ok = found["max_abs_diff"] < PARITY_LIMIT
    if not ok:
        raise BenchmarkWorkerError(f"{runtime} disagrees with upstream before timing: {found}; fix it first")
    return found


def time_model(name: str, directory: Path, threads: int, rounds: int) -> dict:
    """Check then time every runtime of ``name`` at ``threads`` threads, each in its own process."""
    from mobileclip2 import benchmarking as bm

    inputs = bm.tower_inputs(_model(name), batch=1)
    recipes = [
        bm.Recipe(
            name, runtime, threads, builder="ondevice:build_runtime", options=(("directory", str(directory)),)
        )
        for runtime in (*RUNTIMES, bm.TWIN)  # the twin: upstream again, the interference check's partner
    ]
    out: dict = {"towers": {}}
    with contextlib.ExitStack() as stack:
        workers = bm.start_isolated(recipes, stack)
        for tower in ("image", "text"):
            outputs = {runtime: workers[runtime].prepare(tower, inputs[tower]) for runtime in RUNTIMES}
            workers[bm.TWIN].prepare(tower, inputs[tower])
            checks = {runtime: check(runtime, got, outputs["upstream"]) for runtime, got in outputs.items()}
            timers = {runtime: workers[runtime].time_call for runtime in RUNTIMES}
            rows = bm.measure_group(
                name, tower, 1, timers, flops=0, rounds=rounds, warmup=3, twin=workers[bm.TWIN].time_call
            )
            out["towers"][tower] = {
                row.runtime: {
                    "ms": 1e3 * row.seconds,
                    "speedup": row.speedup,
                    "valid": row.valid,
                    "interference": row.interference,
                    **checks[row.runtime],
                }
                for row in rows
            }
            up = out["towers"][tower]["upstream"]
            print(
                f"  {name} {tower} {threads} thr: upstream alone vs among others {up['interference']:+.1%}"
                + ("" if up["valid"] else " -> INVALID"),
                flush=True,
            )
    return out


def _eager_bytes(name: str) -> dict[str, int]:
    from mobileclip2.benchmarking import upstream_model

    model = upstream_model(_model(name))
    towers = {"image": model.visual, "text": getattr(model, "text", None)}
    sizes = {}
    for tower, module in towers.items():
        if module is None:  # open_clip's built-in text tower lives on the CLIP module itself
            params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
        else:
            params = list(module.parameters())
        sizes[tower] = sum(p.numel() * p.element_size() for p in params)
    return sizes


def section(results: dict, meta: dict) -> str:
    from _support import bandwidth_text

    lines = [
        BEGIN,
        "## On-device runtimes: size and batch-1 latency per tower (CPU)",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (regenerates this section).",
        "",
        f"- device: {meta['cpu']}, {meta['cores']} cores visible; `uptime` before/after: "
        f"{meta['uptime_before']} / {meta['uptime_after']}; {bandwidth_text(meta['bandwidth'])} "
        "(the machine is shared: absolute ms are noisy, ratios less so)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        "- method: each runtime built and called in its own process (spawned worker per runtime, model "
        f"and thread count, OMP_WAIT_POLICY {meta['omp_wait_policy']}; the others wait blocked on a pipe "
        "while one is timed; the worker times its own call); runtimes alternated, one call each per round, "
        f"order rotated every round (no runtime twice in a row), {meta['rounds']} rounds after 3 warm-up; "
        "ONNX Runtime thread spinning off; speed-up = median over rounds of upstream time / runtime time; "
        "check = upstream's median time alone, alternated with a twin upstream worker (half the rounds "
        "before, half after), vs among the other runtimes, a group beyond 10% is marked invalid (do not "
        "quote it). Random weights; int8 calibrated on synthetic inputs "
        "(latency and size only; fidelity: docs/deployment.md). Every runtime is checked against upstream "
        f"before timing (fp32 max abs diff < {meta['parity_limit']:g}, int8 cosine > {INT8_FLOOR}; the check "
        f"column notes an int8 cosine below {INT8_NOTE} on the timed input).",
        "- size: on-disk artifact; for the PyTorch rows, fp32 parameter bytes of the tower.",
        "",
    ]
    for name, result in results.items():
        lines += [f"### {name}", ""]
        header = "| tower | runtime | size MB |"
        rule = "|---|---|---:|"
        for t in meta["threads"]:
            header += f" {t} thr ms | {t} thr speed-up |"
            rule += "---:|---:|"
        header += " check |"
        rule += "---|"
        lines += [header, rule]
        for tower in ("image", "text"):
            for runtime in RUNTIMES:
                size = (
                    result["sizes"][tower]
                    if runtime in ("upstream", "optimize")
                    else result["artifacts"][runtime][tower]
                )
                row = f"| {tower} | {LABELS[runtime]} | {size / 1e6:.1f} |"
                for t in meta["threads"]:
                    cell = result["timing"][str(t)]["towers"][tower][runtime]
                    row += f" {cell['ms']:.1f} | {cell['speedup']:.2f}x |"
                lines.append(row + f" {_check_cell(result, tower, runtime, meta['threads'])} |")
        lines.append("")
        lines += _targets(name, result, meta["threads"])
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def _check_cell(result: dict, tower: str, runtime: str, threads: list[int]) -> str:
    """ok, or which thread counts' groups failed the alone-vs-among-others check (and by how much);
    plus an int8 artifact's cosine to upstream when it is below INT8_NOTE."""
    cells = {t: result["timing"][str(t)]["towers"][tower] for t in threads}
    notes = [
        f"{t} thr: **invalid**, upstream {cell['upstream']['interference']:+.0%} among the others"
        for t, cell in cells.items()
        if not cell["upstream"]["valid"]
    ]
    cosine = min(cell[runtime].get("cosine", 1.0) for cell in cells.values())
    if cosine < INT8_NOTE:
        notes.append(f"cosine to upstream {cosine:.3f} on this input")
    return "; ".join(notes) or "ok"


def _targets(name: str, result: dict, threads: list[int]) -> list[str]:
    """The deployment targets (int8 vs fp32 speed and size, ExecuTorch fp32 vs optimize), stated with
    this run's numbers (1 thread)."""
    t = str(threads[0])
    image = result["timing"][t]["towers"]["image"]
    out = []
    for runtime in ("et", "ort"):
        fp32, int8 = image[f"{runtime}-fp32"], image[f"{runtime}-int8"]
        speed = fp32["ms"] / int8["ms"]
        size = (
            result["artifacts"][f"{runtime}-int8"]["image"] / result["artifacts"][f"{runtime}-fp32"]["image"]
        )
        met = "met" if speed >= 1.5 and size <= 1 / 3 else "not met"
        out.append(
            f"- {name} image tower int8 vs fp32 ({LABELS[runtime + '-fp32'].rsplit(' ', 1)[0]}, {t} thread): "
            f"**{speed:.2f}x** faster at **{size:.2f}x** the size (target >= 1.5x at <= 0.33x: {met})"
        )
    for tower in ("image", "text"):
        cell = result["timing"][t]["towers"][tower]
        ratio = cell["et-fp32"]["ms"] / cell["optimize"]["ms"]
        out.append(
            f"- {name} {tower} tower ExecuTorch fp32 / `mobileclip2.optimize` time: **{ratio:.2f}x** "
            f"(target <= 1.2x: {'met' if ratio <= 1.2 else 'not met'})"
        )
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the exported artifacts here and reuse those already there (default: a temporary folder)",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="export into --workdir and stop (time later, on an idle machine, with the same --workdir)",
    )
    args = parser.parse_args(argv)
    if args.export_only and args.workdir is None:
        parser.error("--export-only needs --workdir (where the artifacts are kept for the timing run)")

    from _support import cpu_copy_gbytes, cpu_description, utc_stamp, write_doc_section

    from mobileclip2.benchmarking import PARITY_LIMIT
    from mobileclip2.export.sidecar import artifact_size
    from mobileclip2.system import package_versions

    meta = {
        "date": utc_stamp(),
        "command": "python benchmarks/ondevice.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "uptime_before": _uptime(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "parity_limit": PARITY_LIMIT,
        "rounds": args.rounds,
        "versions": package_versions(
            "open_clip_torch", "timm", "onnxruntime", "executorch", "torchao", "mobileclip2"
        ),
    }
    bandwidth_before = cpu_copy_gbytes()
    results = {}
    for name in args.models:
        print(f"{name}: exporting", flush=True)
        with contextlib.ExitStack() as stack:
            if args.workdir is None:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mobileclip2-ondevice-"))
            else:
                tmp = str(args.workdir / name)
            directory = Path(tmp)
            directory.mkdir(parents=True, exist_ok=True)
            sidecars = export_all(name, directory)
            if args.export_only:
                continue
            result = {
                "sizes": _eager_bytes(name),
                "artifacts": {
                    runtime: {t: artifact_size(directory / config[t]["file"]) for t in ("image", "text")}
                    for runtime, config in sidecars.items()
                },
                "timing": {},
            }
            for threads in args.threads:
                print(f"{name}: timing at {threads} thread(s)", flush=True)
                result["timing"][str(threads)] = time_model(name, directory, threads, args.rounds)
        results[name] = result
    if args.export_only:
        return 0
    meta["uptime_after"] = _uptime()
    meta["bandwidth"] = (bandwidth_before, cpu_copy_gbytes())
    text = section(results, meta)
    write_doc_section(args.doc, BEGIN, END, text)
    print(text)
    valid = all(
        cell["upstream"]["valid"]
        for result in results.values()
        for timing in result["timing"].values()
        for cell in timing["towers"].values()
    )
    return 0 if valid else 3


if __name__ == "__main__":
    sys.exit(main())
