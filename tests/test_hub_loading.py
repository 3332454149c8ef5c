"""Pretrained tags load exactly the tensors in the (offline) Hugging Face cache, with the tag's
preprocessing; local files load too; and every way of asking for weights that cannot be had
fails with a clear error instead of a randomly initialised model."""

from __future__ import annotations

import open_clip
import pytest
import torch
from hub_cache import assert_same_tensors, load_tag_in_subprocess, write_state_dict

from mobileclip2.errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnknownModelError,
    UnknownPretrainedTagError,
)


@pytest.fixture(scope="module")
def s0_state():
    torch.manual_seed(1)
    return open_clip.create_model("MobileCLIP2-S0").state_dict()


@pytest.fixture(scope="module")
def s0_pt_file(s0_state, tmp_path_factory):
    """``s0_state`` as a torch pickle checkpoint, written once for the tests that only read it."""
    path = tmp_path_factory.mktemp("s0_pt") / "s0.pt"
    torch.save(s0_state, path)
    return path


@pytest.mark.parametrize(
    "name, tag, filename",
    [
        # open_clip 3.3 prefers the safetensors file of an 'org/repo/' entry...
        ("MobileCLIP2-S0", "dfndr2b", "open_clip_model.safetensors"),
        # ...and falls back to the .bin name; MobileCLIP-S1/B entries are 'apple/...-OpenCLIP/'.
        pytest.param("MobileCLIP-S1", "datacompdr", "open_clip_pytorch_model.bin", marks=pytest.mark.slow),
        pytest.param("MobileCLIP-B", "datacompdr_lt", "open_clip_pytorch_model.bin", marks=pytest.mark.slow),
    ],
)
def test_tag_loads_exactly_the_cached_tensors(tmp_path, name, tag, filename):
    from mobileclip2.compat.registry import hub_location

    cfg = open_clip.get_pretrained_cfg(name, tag)
    repo_id, _ = hub_location(cfg)
    torch.manual_seed(2)
    expected = open_clip.create_model(name).state_dict()
    expected = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in expected.items()}
    cache = tmp_path / "hub"
    write_state_dict(cache, repo_id, filename, expected)

    result, loaded = load_tag_in_subprocess(tmp_path, cache, name, tag)
    assert "error" not in result, result
    assert_same_tensors(loaded, expected)
    pp = result["preprocess_cfg"]
    assert pp["mean"] == list(cfg["mean"]) and pp["std"] == list(cfg["std"])
    assert pp["interpolation"] == cfg["interpolation"] and pp["resize_mode"] == cfg["resize_mode"]
    assert pp["size"] in (256, [256, 256]) if name != "MobileCLIP-B" else pp["size"] in (224, [224, 224])


def test_missing_from_offline_cache_is_a_clear_error(tmp_path):
    result, state = load_tag_in_subprocess(tmp_path, tmp_path / "empty-hub", "MobileCLIP2-S0", "dfndr2b")
    assert state is None
    assert result["error_type"] == "WeightsUnavailableError" and result["is_runtime_error"]
    assert "HF_HUB_OFFLINE is set" in result["error"]
    assert "hf download timm/MobileCLIP2-S0-OpenCLIP open_clip_pytorch_model.bin" in result["error"]
    assert "pretrained='/path/to/file'" in result["error"]


def test_local_file_loads_exactly(tmp_path, s0_state):
    from mobileclip2.convert import save_safetensors

    path = tmp_path / "my_s0.safetensors"
    save_safetensors(s0_state, path)
    model = open_clip.create_model("MobileCLIP2-S0", pretrained=str(path))
    assert_same_tensors(model.state_dict(), s0_state)


def test_local_file_gets_the_models_preprocessing_unless_overridden(s0_pt_file):
    path = s0_pt_file
    _, _, preprocess = open_clip.create_model_and_transforms("MobileCLIP2-S0", pretrained=str(path))
    model = open_clip.create_model("MobileCLIP2-S0", pretrained=str(path))
    tag_cfg = open_clip.get_pretrained_cfg("MobileCLIP2-S0", "dfndr2b")
    for key in ("mean", "std", "interpolation", "resize_mode"):
        assert model.visual.preprocess_cfg[key] == tag_cfg[key], key
    assert preprocess.transforms[-1].mean == (0.0, 0.0, 0.0)  # open_clip alone would use OpenAI's mean
    explicit = open_clip.create_model(
        "MobileCLIP2-S0", pretrained=str(path), force_preprocess_cfg={"mean": (0.5,) * 3}
    )
    assert (
        explicit.visual.preprocess_cfg["mean"] == (0.5,) * 3
        and explicit.visual.preprocess_cfg["std"] == (1.0,) * 3
    )
    # Random init keeps open_clip's defaults (training from scratch is the user's choice).
    assert (
        open_clip.create_model("MobileCLIP2-S0").visual.preprocess_cfg["mean"]
        == open_clip.OPENAI_DATASET_MEAN
    )


def test_hub_repo_style_name_points_at_the_tag():
    with pytest.raises(UnknownModelError, match="'MobileCLIP-B' with pretrained='datacompdr_lt'"):
        open_clip.create_model("MobileCLIP-B-LT")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as info:
        open_clip.create_model_and_transforms("MobileCLIP2-SO", pretrained="dfndr2b")
    assert info.value.suggestions[0] == "MobileCLIP2-S0"  # O/0 look alike: the best guess comes first
    assert isinstance(info.value, RuntimeError)  # what open_clip raises for this, so old handlers still work


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(UnknownPretrainedTagError) as info:
        open_clip.create_model("MobileCLIP-B", pretrained="datacomp_lt")
    assert info.value.valid_tags == ["datacompdr", "datacompdr_lt"]
    assert "'datacompdr', 'datacompdr_lt'" in str(info.value)


def test_nonexistent_path_is_not_silently_ignored():
    with pytest.raises(UnknownPretrainedTagError, match="neither a pretrained tag"):
        open_clip.create_model("MobileCLIP2-S0", pretrained="/no/such/checkpoint.pt")


def test_checkpoint_of_another_model_is_summarized(s0_pt_file):
    path = s0_pt_file
    with pytest.raises(CheckpointMismatchError) as info:
        open_clip.create_model("MobileCLIP2-S2", pretrained=str(path))
    message = str(info.value)
    assert "detected format: OpenCLIP state_dict (timm image tower)" in message
    # MCi2 (S2) has more blocks and wider stages than MCi0 (S0): missing blocks and shape changes.
    assert "788 missing, 0 unexpected, 669 mis-shaped of 1722 model tensors" in message
    assert "visual.trunk.final_conv.conv_kxk.0.bn.bias: checkpoint (1024,) vs model (1280,)" in message
    assert len(message) < 2000  # a summary, not torch's list of every key


def test_checkpoint_with_missing_keys_is_summarized(tmp_path, s0_state):
    path = tmp_path / "s0_image_only.pt"
    torch.save({k: v for k, v in s0_state.items() if k.startswith("visual.")}, path)
    with pytest.raises(CheckpointMismatchError, match=r"\d+ missing, 0 unexpected, 0 mis-shaped") as info:
        open_clip.create_model("MobileCLIP2-S0", pretrained=str(path))
    assert "Missing: text." in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04truncated-zip"])
def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="could not be read as a model checkpoint"):
        open_clip.create_model("MobileCLIP2-S0", pretrained=str(path))


def test_truncated_download_is_a_clear_error(tmp_path, s0_pt_file):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(s0_pt_file.read_bytes()[: s0_pt_file.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        open_clip.create_model("MobileCLIP2-S0", pretrained=str(truncated))
