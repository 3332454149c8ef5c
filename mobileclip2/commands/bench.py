"""`mobileclip2 bench NAME`: speed of upstream eager and mobileclip2.optimize's backends, one model.

A quick, single-model version of benchmarks/inference.py (which runs the documented comparison
across models and writes docs/benchmarks.md), with the same method (mobileclip2.benchmarking):
each runtime in its own worker process, alternated calls, median of per-round ratios, and a
self-check that marks a measurement invalid when the runtimes disturbed each other. Random weights
unless --pretrained is given: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse

HELP = "Time one model's towers: upstream open_clip+timm vs mobileclip2.optimize and its CPU backends."
RUNTIMES = ("upstream", "ours", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
DEFAULT_RUNTIMES = ("upstream", "ours", "onnxruntime")
TOWERS = ("image", "text", "text-full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="open_clip model name, e.g. MobileCLIP2-S0")
    parser.add_argument(
        "--pretrained", default=None, help="pretrained tag or local file (default: random weights)"
    )
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    parser.add_argument(
        "--tower",
        choices=(*TOWERS, "all"),
        default="all",
        help="image, text (a 12-token caption), text-full (all 77 tokens) or all (default)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(DEFAULT_RUNTIMES),
        help="what to compare: ours = optimize(model); onnxruntime / openvino = "
        "optimize(model, backend=...); -int8 = with int8=True, timed on text only (default: %(default)s; "
        "upstream is always included: ratios are against it; openvino needs mobileclip2[openvino])",
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per runtime (default 10)")


def format_rows(results) -> str:
    lines = [
        f"{'tower':<9} {'batch':>5} {'runtime':<16} {'median ms':>10} {'GFLOP/s':>8} "
        f"{'vs upstream':>11}  check"
    ]
    for r in results:
        check = "ok" if r.valid else f"INVALID ({r.interference:+.0%} upstream drift)"
        lines.append(
            f"{r.tower:<9} {r.batch:>5} {r.runtime:<16} {r.seconds * 1e3:>10.1f} {r.gflops_per_s:>8.1f} "
            f"{r.speedup:>10.2f}x  {check}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    from mobileclip2.benchmarking import benchmark_model

    towers = TOWERS if args.tower == "all" else (args.tower,)
    runtimes = ("upstream", *(r for r in args.runtimes if r != "upstream"))
    results = benchmark_model(
        args.name,
        batches=tuple(args.batch_size),
        towers=towers,
        runtimes=runtimes,
        pretrained=args.pretrained,
        rounds=lambda batch: args.rounds,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_rows(results))
    return 0 if all(r.valid for r in results) else 3
