"""Reference bundles and worker runs shared by tests/test_equivalence.py and tools/matrix.py.

A *reference bundle* holds, for each (model name, tag): random weights built by the reference
open_clip/timm in this interpreter, reference outputs on fixed inputs, the tag's reference
preprocessing of a probe image, and an offline Hugging Face cache that serves those weights
under the tag's real repo id and file name. A *worker run* builds every name through the
factory of another open_clip/timm pair (tests/scripts/equivalence_worker.py) and reports how
far it is from the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from compat_env import NEWEST_PAIR, ensure_pair, run_python
from hub_cache import offline_env, place_file

from mobileclip2.pretrained import hub_location, pretrained_table

ATOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram of a mobile network", "", "x"]
BIG = {
    "MobileCLIP-S3",
    "MobileCLIP-S4",
    "MobileCLIP-L-14",
    "MobileCLIP2-S3",
    "MobileCLIP2-S4",
    "MobileCLIP2-L-14",
}


def default_cases() -> list[tuple[str, str]]:
    """(model name, first tag) for every name in the tag table."""
    return [(name, next(iter(tags))) for name, tags in pretrained_table().items()]


def build_reference_bundle(root: Path, cases: list[tuple[str, str]]) -> dict:
    """Write weights, reference outputs, a probe image, a manifest and the Hub cache under `root`.

    Names whose configs are identical (e.g. MobileCLIP-S4 / MobileCLIP2-S4) share one weights
    file and one set of reference outputs; each name still gets its own cache entry and
    preprocessing reference, and each is built by name in the workers.
    """
    import open_clip
    from PIL import Image
    from scripts.equivalence_worker import describe_transform, normalized

    cache = root / "hub"
    probe_path = root / "probe.png"
    generator = torch.Generator().manual_seed(0)
    probe = (torch.rand(240, 320, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(probe).save(probe_path)

    by_config: dict[str, dict] = {}  # identical architectures share one weights file
    manifest = []
    for name, tag in cases:
        config_key = json.dumps(open_clip.get_model_config(name), sort_keys=True)
        if config_key not in by_config:
            torch.manual_seed(len(by_config))
            model = open_clip.create_model(name).eval()
            size = model.visual.image_size
            images = torch.rand(2, 3, *size, generator=generator)
            tokens = open_clip.get_tokenizer(name)(CAPTIONS)
            with torch.no_grad():
                image_features = model.encode_image(images)
                text_features = model.encode_text(tokens)
                logits = model.logit_scale.exp() * normalized(image_features) @ normalized(text_features).T
            weights = root / f"weights_{len(by_config)}.pt"
            torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
            by_config[config_key] = dict(
                weights=weights,
                size=size,
                outputs=dict(
                    images=images,
                    tokens=tokens,
                    image_features=image_features,
                    text_features=text_features,
                    logits=logits,
                    state_keys=sorted(model.state_dict()),
                ),
                backbone=open_clip.get_model_config(name)["vision_cfg"]["timm_model_name"],
            )
            del model
        shared = by_config[config_key]
        cfg = open_clip.get_pretrained_cfg(name, tag)
        transform = open_clip.image_transform(
            shared["size"],
            is_train=False,
            mean=cfg["mean"],
            std=cfg["std"],
            resize_mode=cfg["resize_mode"],
            interpolation=cfg["interpolation"],
        )
        reference = dict(shared["outputs"], pixels=transform(Image.open(probe_path).convert("RGB")))
        reference_path = root / f"{name}.ref.pt"
        torch.save(reference, reference_path)
        place_file(cache, *hub_location(cfg), shared["weights"])
        manifest.append(
            dict(
                name=name,
                tag=tag,
                reference=str(reference_path),
                captions=CAPTIONS,
                probe_image=str(probe_path),
                backbone=shared["backbone"],
                transform=describe_transform(transform),
            )
        )
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps({"models": manifest}))
    return dict(root=root, cache=cache, manifest=manifest_path, entries={e["name"]: e for e in manifest})


def run_worker(bundle: dict, pair: tuple[str, str], force_backfill: bool, timeout: float = 1800) -> dict:
    """Run the equivalence worker under `pair` (None target = this interpreter's own packages)."""
    target = None if pair == NEWEST_PAIR else ensure_pair(*pair)
    output = Path(bundle["root"]) / f"result_{'-'.join(pair)}{'_forced' if force_backfill else ''}.json"
    args = ["tests/scripts/equivalence_worker.py", str(bundle["manifest"]), str(output)]
    if force_backfill:
        args.append("--force-backfill")
    proc = run_python(target, args, timeout=timeout, **offline_env(bundle["cache"]), MOBILECLIP2_AUTOLOAD="0")
    if proc.returncode != 0:
        raise RuntimeError(f"equivalence worker failed under {pair}:\n{proc.stderr[-4000:]}")
    return json.loads(output.read_text())


def problems(result: dict, entry: dict) -> list[str]:
    """Why `result` does not match its reference entry (empty when equivalent)."""
    if "error" in result:
        return [result["error"]]
    found = []
    if not result["tokens_equal"]:
        found.append("tokenizer output differs")
    if not result["state_keys_equal"]:
        found.append("state_dict keys differ")
    for key, limit in (
        ("image_max_abs", ATOL),
        ("text_max_abs", ATOL),
        ("logits_max_abs", ATOL * 100),
        ("pixels_max_abs", 1e-6),
    ):
        if not result[key] <= limit:
            found.append(f"{key}={result[key]:.3g} > {limit:g}")
    if result["transform"] != entry["transform"]:
        found.append(f"preprocessing differs: {result['transform']} vs {entry['transform']}")
    return found
