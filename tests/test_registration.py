"""Registration: our data equals upstream's where upstream has it, and fills the gaps otherwise."""

from __future__ import annotations

import json
import subprocess

import open_clip
import pytest
import timm
from compat_env import REPO_ROOT

from mobileclip2 import plugin
from mobileclip2.compat import registry
from mobileclip2.configs import config_files
from mobileclip2.models import BACKBONE_MODULES
from mobileclip2.pretrained import pretrained_table

ISSUE3_MODELS = [
    "MobileCLIP-S1",
    "MobileCLIP-S2",
    "MobileCLIP-B",
    "MobileCLIP-S3",
    "MobileCLIP-S4",
    "MobileCLIP-L-14",
    "MobileCLIP2-S0",
    "MobileCLIP2-S2",
    "MobileCLIP2-B",
    "MobileCLIP2-S3",
    "MobileCLIP2-S4",
    "MobileCLIP2-L-14",
]


def native_model_config_names() -> set[str]:
    """Names open_clip's own config directory defines (ignoring anything added at runtime)."""
    from pathlib import Path

    return {path.stem for path in (Path(open_clip.factory.__file__).parent / "model_configs").glob("*.json")}


def _our_config(name: str) -> dict:
    return json.loads((REPO_ROOT / "model_configs" / f"{name}.json").read_text())


def test_every_name_is_registered_with_open_clip():
    names = set(open_clip.list_models())
    assert set(ISSUE3_MODELS) <= names
    for name in ISSUE3_MODELS:
        assert open_clip.list_pretrained_tags_by_model(name), name


@pytest.mark.parametrize("name", ISSUE3_MODELS)
def test_configs_equal_upstream_where_upstream_ships_them(name):
    ours = _our_config(name)
    if name in native_model_config_names():
        # open_clip 3.3.0 ships it: ours must be identical, and the registry must hold upstream's.
        assert ours == open_clip.get_model_config(name)
    else:
        assert name in plugin.registration_state()[1].configs_backfilled


# Apple's configs for the V1 architectures released with MobileCLIP2 (apple/ml-mobileclip
# mobileclip2/model_configs at 4144bb1f): the numbers that define the architecture.
APPLE_S3_S4_L14 = {
    "MobileCLIP-S3": ("fastvit_mci3", "avg", 256, 0.0),
    "MobileCLIP-S4": ("fastvit_mci4", "avg", 256, 0.0),
    "MobileCLIP-L-14": ("vit_large_patch14_clip_224", "token", 224, 0.1),
}


@pytest.mark.parametrize("name", sorted(APPLE_S3_S4_L14))
def test_new_v1_architectures_follow_apple_config(name):
    backbone, pool, size, drop_path = APPLE_S3_S4_L14[name]
    config = _our_config(name)
    assert config["embed_dim"] == 768 and config["custom_text"] is True
    assert config["vision_cfg"] == {
        "timm_model_name": backbone,
        "timm_model_pretrained": False,
        "timm_pool": pool,
        "timm_proj": None,
        "timm_drop": 0.0,
        "timm_drop_path": drop_path,
        "image_size": size,
    }
    assert config["text_cfg"] == {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 768,
        "heads": 12,
        "layers": 12,
        "no_causal_mask": True,
    }


def test_pretrained_entries_equal_open_clip_330_entries():
    from open_clip.pretrained import _PRETRAINED

    compared = 0
    for name, tags in pretrained_table().items():
        for tag, cfg in tags.items():
            if (
                name in _PRETRAINED
                and tag in _PRETRAINED[name]
                and (name, tag) not in plugin.registration_state()[1].tags_backfilled
            ):
                assert cfg == _PRETRAINED[name][tag], (name, tag)
                compared += 1
    assert compared == 10  # MobileCLIP-S1/S2/B(+LT) and the six MobileCLIP2 tags


def test_new_tags_point_at_apple_repos():
    table = pretrained_table()
    assert table["MobileCLIP-S3"]["datacompdr"]["hf_hub"] == "apple/MobileCLIP-S3/mobileclip_s3.pt"
    assert table["MobileCLIP-S4"]["datacompdr"]["hf_hub"] == "apple/MobileCLIP-S4/mobileclip_s4.pt"
    assert table["MobileCLIP-L-14"]["datacompdr"]["hf_hub"] == "apple/MobileCLIP-L-14/mobileclip_l14.pt"
    # S3/S4/L-14 were trained with OpenAI normalization (Apple README: only the others use 0/1).
    assert table["MobileCLIP-S3"]["datacompdr"]["mean"] == open_clip.OPENAI_DATASET_MEAN
    assert table["MobileCLIP-L-14"]["datacompdr"]["interpolation"] == "bicubic"


def test_registration_is_idempotent_and_defers_to_upstream():
    before_configs = dict(open_clip.factory._MODEL_CONFIGS)
    before_tags = {k: dict(v) for k, v in open_clip.pretrained._PRETRAINED.items()}
    first = plugin.register()
    second = plugin.register()
    assert first is second
    assert open_clip.factory._MODEL_CONFIGS == before_configs
    assert open_clip.pretrained._PRETRAINED == before_tags
    # On open_clip 3.3.0 / timm 1.0.31: the three new V1 architectures, MobileCLIP-S0 (MCt text
    # tower, refused upstream) and the context-256 CoCa captioner need backfilling.
    assert sorted(first.configs_backfilled) == [
        "MobileCLIP-L-14",
        "MobileCLIP-S0",
        "MobileCLIP-S3",
        "MobileCLIP-S4",
        "coca_ViT-L-14-context256",
    ]
    assert plugin.registration_state()[0].timm_backfilled == []
    for name in BACKBONE_MODULES:  # timm's own definitions stay in place
        assert timm.models.model_entrypoint(name).__module__.startswith("timm.models.")


def test_adding_again_changes_nothing():
    assert registry.add_model_config_files(config_files()) == []
    assert registry.add_pretrained_cfgs(pretrained_table()) == []


def test_config_files_survive_an_upstream_rescan():
    open_clip.factory._rescan_model_configs()
    assert {"MobileCLIP-S3", "MobileCLIP-S4", "MobileCLIP-L-14"} <= set(open_clip.list_models())
    # ...and upstream's own files still win for the names it ships.
    assert open_clip.get_model_config("MobileCLIP2-S0") == _our_config("MobileCLIP2-S0")


def test_tokenizer_is_the_clip_bpe_at_context_77():
    tokenizer = open_clip.get_tokenizer("MobileCLIP-S3")
    tokens = tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77)
    assert tokens[0, 0].item() == 49406 and tokens[0].argmax().item() == 6  # <sot> ... <eot>


# Seed table (Apple README): S3 125.1 + 123.6M, S4 321.6 + 123.6M, L-14 304.3 + 123.6M. Apple counts
# the image tower *after* reparameterization (MobileOne/RepMixer branches fused): that is what
# reproduces 125.1 and 321.6 (and 11.4/21.5/35.7 for S0/S1/S2). For L-14 Apple's own config
# (224 px, 257 position embeddings) gives 304.0M; the seed's 304.3M matches a 577-entry (336 px)
# position table instead, so we assert the config's exact count and document the gap.
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, reference, image_params, image_params_fused, text_params, seed_image_m",
    [
        ("MobileCLIP-S3", "MobileCLIP2-S3", 125_235_648, 125_074_272, 123_650_304, 125.1),
        ("MobileCLIP-S4", "MobileCLIP2-S4", 321_784_832, 321_569_664, 123_650_304, 321.6),
        ("MobileCLIP-L-14", "MobileCLIP2-L-14", 303_966_976, 303_966_976, 123_650_304, None),
    ],
)
def test_new_v1_architectures_parameter_counts_and_keys(
    name, reference, image_params, image_params_fused, text_params, seed_image_m
):
    from model_support import meta_model
    from timm.utils import reparameterize_model

    from mobileclip2.commands.info import tower_parameter_counts

    model = meta_model(name).eval()
    counts = tower_parameter_counts(model)
    assert (counts["image"], counts["text"]) == (image_params, text_params)
    # Fusing needs real tensors, not their values: uninitialised CPU memory is enough to count.
    fused = sum(p.numel() for p in reparameterize_model(model.visual.to_empty(device="cpu")).parameters())
    assert fused == image_params_fused
    if seed_image_m is not None:
        assert round(fused / 1e6, 1) == seed_image_m
    assert abs(text_params / 1e6 - 123.6) < 0.1
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # unfused: timm fused a copy
    upstream = meta_model(reference)
    assert shapes == {k: tuple(v.shape) for k, v in upstream.state_dict().items()}


def test_cli_list_reports_sources():
    out = subprocess.run(["mobileclip2", "list", "--json"], capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(ISSUE3_MODELS) <= set(rows)
    assert rows["MobileCLIP-S3"]["source"] == "backfilled" and rows["MobileCLIP2-S0"]["source"] == "native"
    assert rows["MobileCLIP-B"]["tags"] == ["datacompdr", "datacompdr_lt"]


def test_example_image_is_a_public_constant():
    import mobileclip2

    assert mobileclip2.EXAMPLE_IMAGE.is_file() and mobileclip2.EXAMPLE_IMAGE.suffix == ".jpg"
    assert "EXAMPLE_IMAGE" in dir(mobileclip2)


def test_every_compat_module_names_the_versions_it_handles():
    """Each upstream concern has its own compat module whose docstring says which versions it handles."""
    import importlib
    import pkgutil

    import mobileclip2.compat as compat

    modules = [info.name for info in pkgutil.iter_modules(compat.__path__) if not info.name.startswith("_")]
    assert {"registry", "factory", "text_tower", "open_clip_train", "ddp", "coca", "timm_layers"} <= set(
        modules
    )
    for name in modules:
        doc = importlib.import_module(f"mobileclip2.compat.{name}").__doc__ or ""
        assert "Versions handled" in doc, (
            f"mobileclip2/compat/{name}.py does not name the versions it handles"
        )
