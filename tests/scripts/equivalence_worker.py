"""Build each model by name through open_clip's factory and compare it with saved references.

A persistent worker started by tools/equivalence_support.py (for tests/test_equivalence.py and
tools/matrix.py), under either
  * the newest pair (open_clip 3.3.0 + timm 1.0.31) with ``--force-backfill``: our configs,
    tags and timm backbones replace upstream's own, or
  * another pair such as the oldest (open_clip 2.24.0 + timm 0.9.16), where ours are the only
    definitions.
Each model loads its reference weights through its *pretrained tag* from an offline Hugging
Face cache, so the tag table, the download path and strict loading are exercised too.

Protocol (why: the driver keeps only one model's weights on disk at a time, so it feeds the
worker one group of names at a time instead of one manifest up front):
  * on start, one line ``<MARKER> ready {"open_clip": ..., "timm": ...}``;
  * per request line on stdin, ``{"id": N, "entries": [manifest entries], "output": path}``, the
    per-name results go to ``path`` as JSON (written under a temporary name, then renamed), then
    one line ``<MARKER> done N``;
  * end of stdin ends the worker.
Only the protocol writes to the real stdout: file descriptor 1 is pointed at stderr, so library
prints (Python or C level) can never break a line of it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

MARKER = "mobileclip2-equivalence-worker:"

# Steps whose knobs define the preprocessing; RGB conversion and to-tensor helpers are named
# differently across open_clip releases (_convert_to_rgb/ToTensor vs MaybeConvertMode/MaybeToTensor)
# and are covered by comparing preprocessed pixels instead.
_DESCRIBED_ATTRS = ("size", "max_size", "interpolation", "antialias", "mean", "std")


def describe_transform(transform) -> list[list]:
    """Comparable description of a torchvision Compose: the resize/crop/normalize steps and their knobs."""
    steps = []
    for step in getattr(transform, "transforms", [transform]):
        fields = []
        for attr in _DESCRIBED_ATTRS:
            if hasattr(step, attr):
                value = getattr(step, attr)
                value = getattr(value, "value", value)  # InterpolationMode -> str
                fields.append([attr, list(value) if isinstance(value, (tuple, list)) else value])
        if fields:
            steps.append([type(step).__name__, *fields])
    return steps


def normalized(features):
    return features / features.norm(dim=-1, keepdim=True)


def compare_one(entry: dict, timm_state, state) -> dict:
    import open_clip
    import torch
    from PIL import Image

    name, tag = entry["name"], entry["tag"]
    reference = torch.load(entry["reference"], weights_only=True)
    result = {
        "name": name,
        "config_backfilled": name in state.configs_backfilled,
        "backbone": entry["backbone"],
        "backbone_backfilled": entry["backbone"] in timm_state.timm_backfilled,
        "tag_backfilled": [name, tag] in [list(item) for item in state.tags_backfilled],
    }
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
    model.eval()
    tokens = open_clip.get_tokenizer(name)(entry["captions"])
    with torch.no_grad():
        image_features = model.encode_image(reference["images"])
        text_features = model.encode_text(tokens)
        logits = model.logit_scale.exp() * normalized(image_features) @ normalized(text_features).T
    pixels = preprocess(Image.open(entry["probe_image"]).convert("RGB"))
    result.update(
        tokens_equal=bool(torch.equal(tokens, reference["tokens"])),
        image_max_abs=float((image_features - reference["image_features"]).abs().max()),
        text_max_abs=float((text_features - reference["text_features"]).abs().max()),
        logits_max_abs=float((logits - reference["logits"]).abs().max()),
        pixels_max_abs=float((pixels - reference["pixels"]).abs().max()),
        transform=describe_transform(preprocess),
        state_keys_equal=sorted(model.state_dict()) == reference["state_keys"],
    )
    return result


def protocol_stream():
    """A private copy of stdout for protocol lines; fd 1 and sys.stdout then go to stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


def compare_entries(entries: list[dict], timm_state, state) -> dict:
    """{name: result} for one request; an exception is that name's result, not the worker's end."""
    results = {}
    for entry in entries:
        try:
            results[entry["name"]] = compare_one(entry, timm_state, state)
        except Exception as exc:  # noqa: BLE001 - report per model
            results[entry["name"]] = {"name": entry["name"], "error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
    return results


def write_json(path: str, data: dict) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--force-backfill", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    protocol = protocol_stream()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mobileclip2.plugin import register, registration_state

    register(force_backfill=args.force_backfill)
    timm_state, state = registration_state()
    import open_clip.version
    import timm

    versions = {"open_clip": open_clip.version.__version__, "timm": timm.__version__}
    print(MARKER, "ready", json.dumps(versions), file=protocol)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        write_json(request["output"], compare_entries(request["entries"], timm_state, state))
        print(MARKER, "done", request["id"], file=protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
