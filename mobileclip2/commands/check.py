"""`mobileclip2 check`: build every registered model through open_clip's factory and run it once.

A smoke test a user can run after installing: it proves the entry point fired, every config
resolves (native or backfilled), every tower builds with random weights, and one image and one
caption produce finite embeddings of the configured width. Exit status 1 if any model fails.
"""

from __future__ import annotations

import argparse
import time

HELP = "Build each model through open_clip.create_model, run one forward, print a table; exit 1 on failure."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="model names (default: all MobileCLIP/MobileCLIP2 names)")


def check_one(name: str) -> dict:
    """Build `name` with random weights, embed one image and one caption; returns a result row."""
    import open_clip
    import torch

    from mobileclip2.commands.info import tower_parameter_counts
    from mobileclip2.compat.factory import random_init_notice_silenced
    from mobileclip2.shapes import image_height_width

    started = time.perf_counter()
    with random_init_notice_silenced():  # random weights are the point here
        model = open_clip.create_model(name).eval()
    tokenizer = open_clip.get_tokenizer(name)
    height, width = image_height_width(model)
    with torch.no_grad():
        image = model.encode_image(torch.rand(1, 3, height, width))
        text = model.encode_text(tokenizer(["a photo of a cat"]))
    embed_dim = image.shape[-1]
    problems = []
    if image.shape != (1, embed_dim) or text.shape != (1, embed_dim):
        problems.append(f"embedding shapes {tuple(image.shape)} / {tuple(text.shape)}")
    if not (torch.isfinite(image).all() and torch.isfinite(text).all()):
        problems.append("non-finite embeddings")
    counts = tower_parameter_counts(model)
    return {
        "name": name,
        "params": f"{counts['image'] / 1e6:.1f}M + {counts['text'] / 1e6:.1f}M",
        "seconds": time.perf_counter() - started,
        "error": "; ".join(problems),
    }


ROW = "{:<26} {:<11} {:<26} {:>7}  {}"


def run(args: argparse.Namespace) -> int:
    from mobileclip2.catalog import list_models

    infos = {info.name: info for info in list_models()}
    names = args.models or list(infos)
    failures = 0
    print(ROW.format("model", "source", "params img + txt (unfused)", "time", "status"), flush=True)
    for name in names:
        try:
            result = check_one(name)
        except Exception as exc:  # noqa: BLE001 - report every model, then fail at the end
            result = {"name": name, "params": "-", "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}"}
        failures += bool(result["error"])
        source = infos[name].source if name in infos else "not ours"
        status = "ok" if not result["error"] else f"FAILED: {result['error']}"
        print(ROW.format(name, source, result["params"], f"{result['seconds']:.1f}s", status), flush=True)
    print(f"{len(names) - failures} passed, {failures} failed")
    return 1 if failures else 0
