"""`mobileclip2 check`: build every registered model through open_clip's factory and run it once.

A smoke test a user can run after installing: it proves the entry point fired, every config
resolves (native or backfilled), every tower builds with random weights, and one image and one
caption produce finite embeddings of the configured width. A second table lists each feature of the
registration (mobileclip2.plugin.FEATURES) and the training hooks: ``ok``, ``skipped: why`` (it does not fit
the installed open_clip / timm; registration warned about it) or ``not installed: why`` (an optional
extra is missing). Exit status 1 if any model fails; a skipped feature fails the check only with
``--strict`` (the models still work without it, and the warning already said what does not).
"""

from __future__ import annotations

import argparse
import time

HELP = (
    "Build each model through open_clip.create_model, run one forward, print a table and the features; "
    "exit 1 on failure."
)
SKIPPED = "skipped: "
NOT_INSTALLED = "not installed: "


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="model names (default: all MobileCLIP/MobileCLIP2 names)")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 also when a feature was skipped (CI on new upstreams)"
    )


def training_status() -> str:
    """Whether ``python -m mobileclip2.train`` can hook the installed open_clip_train (imports it)."""
    import importlib

    from mobileclip2.compat import open_clip_train as hooks

    try:
        importlib.import_module("open_clip_train.main")
    except ImportError as error:
        return f"{NOT_INSTALLED}{error} (pip install 'mobileclip2[train]')"
    try:
        loop = hooks.training_loop(hooks.open_clip_train_main_module())
        if loop == "task":
            hooks.dr_task_class()
    except Exception as error:  # noqa: BLE001 - a row, not a crash
        return f"{SKIPPED}{type(error).__name__}: {error}"
    return "ok (task loop: DRCLIPTask)" if loop == "task" else "ok (create_loss loop)"


def feature_statuses() -> dict[str, str]:
    """Feature -> 'ok...', 'skipped: ...' or 'not installed: ...' (see the module docstring)."""
    from mobileclip2.compat.open_clip_train import TRAINING
    from mobileclip2.plugin import OK, registration_state

    found = {
        name: status if status == OK else SKIPPED + status
        for name, status in registration_state()[1].features.items()
    }
    found[TRAINING] = training_status()
    return found


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
FEATURE_ROW = "{:<45} {}"


def _catalog() -> dict:
    """Our names -> ModelInfo; by config file names when the catalog itself cannot be read (a skipped
    registration feature must leave this command working)."""
    from mobileclip2.catalog import list_models

    try:
        return {info.name: info for info in list_models()}
    except Exception as exc:  # noqa: BLE001 - a row per model below still says what fails
        from mobileclip2.configs import config_files

        print(f"(cannot read the catalog: {type(exc).__name__}: {exc})", flush=True)
        return {path.stem: None for path in config_files()}


def run(args: argparse.Namespace) -> int:
    infos = _catalog()
    names = args.models or list(infos)
    failures = 0
    print(ROW.format("model", "source", "params img + txt (unfused)", "time", "status"), flush=True)
    for name in names:
        try:
            result = check_one(name)
        except Exception as exc:  # noqa: BLE001 - report every model, then fail at the end
            result = {"name": name, "params": "-", "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}"}
        failures += bool(result["error"])
        source = infos[name].source if infos.get(name) is not None else ("?" if name in infos else "not ours")
        status = "ok" if not result["error"] else f"FAILED: {result['error']}"
        print(ROW.format(name, source, result["params"], f"{result['seconds']:.1f}s", status), flush=True)
    features = feature_statuses()
    skipped = sum(status.startswith(SKIPPED) for status in features.values())
    print()
    print(FEATURE_ROW.format("feature", "status"))
    for name, status in features.items():
        print(FEATURE_ROW.format(name, status), flush=True)
    note = f"; {skipped} feature{'s' if skipped != 1 else ''} skipped" if skipped else ""
    print(f"{len(names) - failures} passed, {failures} failed{note}")
    return 1 if failures or (skipped and args.strict) else 0
