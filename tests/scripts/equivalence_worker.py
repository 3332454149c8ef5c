"""Build each model by name through open_clip's factory and compare it with saved references.

Run by tests/test_equivalence.py in a subprocess, under either
  * the newest pair (open_clip 3.3.0 + timm 1.0.31) with ``--force-backfill``: our configs,
    tags and timm backbones replace upstream's own, or
  * the oldest pair (open_clip 2.24.0 + timm 0.9.16), where ours are the only definitions.
Each model loads its reference weights through its *pretrained tag* from an offline Hugging
Face cache, so the tag table, the download path and strict loading are exercised too. The
script prints nothing but a JSON result file; the parent test asserts on it.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest")
    parser.add_argument("output")
    parser.add_argument("--force-backfill", action="store_true")
    args = parser.parse_args(argv)

    from mobileclip2.plugin import register, registration_state

    register(force_backfill=args.force_backfill)
    timm_state, state = registration_state()
    import open_clip.version
    import timm

    with open(args.manifest) as handle:
        manifest = json.load(handle)
    results = {"open_clip": open_clip.version.__version__, "timm": timm.__version__, "models": {}}
    for entry in manifest["models"]:
        try:
            results["models"][entry["name"]] = compare_one(entry, timm_state, state)
        except Exception as exc:  # noqa: BLE001 - report per model
            results["models"][entry["name"]] = {
                "name": entry["name"],
                "error": f"{type(exc).__name__}: {exc}",
            }
        gc.collect()
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
