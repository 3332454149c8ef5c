"""Our backfilled models == upstream's, on the same random weights, through the public factory.

Reference: open_clip 3.3.0 + timm 1.0.31 (installed in this interpreter) build each name with
random weights; for MobileCLIP-S3/S4/L-14, which upstream lacks, the reference is Apple's
config built through open_clip's own factory (its JSON equals Apple's, see test_registration).
The weights go into an offline Hugging Face cache under each tag's real repo id and file name.

Candidates, each in a subprocess running tests/scripts/equivalence_worker.py:
  * newest pair, ``register(force_backfill=True)``: our configs/tags/backbones replace upstream's;
  * oldest pair (open_clip 2.24.0 + timm 0.9.16): ours are the only definitions there.
Both load the weights via ``create_model_and_transforms(name, pretrained=tag)`` and must match
the reference features, logits, tokens and preprocessing.
"""

from __future__ import annotations

import json

import pytest
import torch
from compat_env import NEWEST_PAIR, OLDEST_PAIR, ensure_pair, run_python
from hub_cache import offline_env, place_file

from mobileclip2.pretrained import hub_location, pretrained_table

ATOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram of a mobile network", "", "x"]
BIG = {"MobileCLIP-S3", "MobileCLIP-S4", "MobileCLIP-L-14", "MobileCLIP2-S3", "MobileCLIP2-S4", "MobileCLIP2-L-14"}
# (model name, tag) pairs: every name this package vouches for in the issue-3 scope.
CASES = [(name, next(iter(tags))) for name, tags in pretrained_table().items() if name != "MobileCLIP-S0"]


def _hub_file_name(cfg: dict) -> tuple[str, str]:
    """Where open_clip (2.24 and 3.3 alike) looks: org/repo/ entries -> the .bin default name."""
    return hub_location(cfg)


@pytest.fixture(scope="module")
def reference_bundle(tmp_path_factory):
    """Reference weights, inputs and outputs per model, plus the offline Hub cache holding them."""
    import open_clip
    from PIL import Image

    from scripts.equivalence_worker import describe_transform, normalized

    root = tmp_path_factory.mktemp("equivalence")
    cache = root / "hub"
    probe_path = root / "probe.png"
    generator = torch.Generator().manual_seed(0)
    probe = (torch.rand(240, 320, 3, generator=generator) * 255).to(torch.uint8).numpy()
    Image.fromarray(probe).save(probe_path)

    by_config: dict[str, dict] = {}  # identical architectures share one weights file
    manifest = []
    for name, tag in CASES:
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
        place_file(cache, *_hub_file_name(cfg), shared["weights"])
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


def _run_worker(bundle, pair, force_backfill: bool) -> dict:
    target = None if pair == NEWEST_PAIR else ensure_pair(*pair)
    output = bundle["root"] / f"result_{'-'.join(pair)}.json"
    args = ["tests/scripts/equivalence_worker.py", str(bundle["manifest"]), str(output)]
    if force_backfill:
        args.append("--force-backfill")
    proc = run_python(target, args, **offline_env(bundle["cache"]), MOBILECLIP2_AUTOLOAD="0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def newest_forced(reference_bundle):
    return _run_worker(reference_bundle, NEWEST_PAIR, force_backfill=True)


@pytest.fixture(scope="module")
def oldest(reference_bundle):
    return _run_worker(reference_bundle, OLDEST_PAIR, force_backfill=False)


def _assert_equivalent(result: dict, entry: dict) -> None:
    assert "error" not in result, result.get("error")
    assert result["tokens_equal"]
    assert result["state_keys_equal"]
    assert result["image_max_abs"] <= ATOL, result
    assert result["text_max_abs"] <= ATOL, result
    assert result["logits_max_abs"] <= ATOL * 100, result  # logits carry the x100 logit scale
    assert result["pixels_max_abs"] <= 1e-6, result
    assert result["transform"] == entry["transform"]


def _marks(name):
    return [pytest.mark.big] if name in BIG else []


@pytest.mark.compat
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_forced_backfill_matches_upstream_newest_pair(newest_forced, reference_bundle, name):
    result = newest_forced["models"][name]
    assert (newest_forced["open_clip"], newest_forced["timm"]) == NEWEST_PAIR
    assert result.get("config_backfilled"), "the worker must build from our config, not upstream's"
    if result["backbone"] != "vit_large_patch14_clip_224":  # a plain timm ViT, never ours
        assert result["backbone_backfilled"]
    _assert_equivalent(result, reference_bundle["entries"][name])


@pytest.mark.compat
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_backfill_on_oldest_pair_matches_upstream(oldest, reference_bundle, name):
    result = oldest["models"][name]
    assert (oldest["open_clip"], oldest["timm"]) == OLDEST_PAIR
    # open_clip 2.24.0 has no MobileCLIP names and timm 0.9.16 no MCi backbones: all ours.
    assert result.get("config_backfilled") and result.get("tag_backfilled")
    if result["backbone"] != "vit_large_patch14_clip_224":
        assert result["backbone_backfilled"]
    _assert_equivalent(result, reference_bundle["entries"][name])
