"""mobileclip2.reparameterize: fuses both towers of any open_clip-built MobileCLIP model, leaves
outputs unchanged, leaves no multi-branch block behind, and is a no-op the second time."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
from model_support import randomize_inference_statistics
from torch import nn

from mobileclip2 import reparameterize
from mobileclip2.compat.timm_layers import is_fused

ATOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram of a mobile network", "", "x"]
# Submodule names that exist only in un-fused (training-time) blocks, timm's names and ours.
BRANCH_NAMES = {"conv_kxk", "conv_scale", "identity", "large_conv", "small_conv", "pos_enc", "mixer"}
CASES = [
    # (name, parameters removed by fusing)
    pytest.param("MobileCLIP-S0", 49_472 + 6_144, id="MobileCLIP-S0"),  # ours: timm fastvit_mci0 + MCt text
    # native open_clip config, plain text tower (MobileCLIP-S0 covers the same image tower)
    pytest.param("MobileCLIP2-S0", 49_472, id="MobileCLIP2-S0", marks=pytest.mark.slow),
    pytest.param("MobileCLIP-B", 0, id="MobileCLIP-B", marks=pytest.mark.slow),  # ViT: nothing to fuse
    pytest.param("MobileCLIP2-S4", 215_168, id="MobileCLIP2-S4", marks=pytest.mark.slow),
]


def _outputs(model, name):
    size = model.visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = open_clip.get_tokenizer(name)(CAPTIONS)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _unfused_blocks(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if callable(getattr(m, "reparameterize", None)) and not is_fused(m)
    ]


@pytest.mark.parametrize("name, removed_params", CASES)
def test_fused_model_equals_unfused(name, removed_params):
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    randomize_inference_statistics(model, seed=1)
    expected = _outputs(model, name)
    unfused_state = {k: v.clone() for k, v in model.state_dict().items()}

    fused = reparameterize(model)

    assert fused is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unfused_state.items())  # original untouched
    for got, want in zip(_outputs(fused, name), expected):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # No multi-branch module left: every block holds its single fused conv, no branch remains.
    assert _unfused_blocks(fused) == []
    assert not [key for key in fused.state_dict() if BRANCH_NAMES & set(key.split("."))]
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in fused.parameters())
    assert removed == removed_params
    if name == "MobileCLIP-S0":  # the MCt text tower is fused too
        assert all(
            block.token_mixer.reparam_conv is not None for block in fused.text.transformer.resblocks[::5]
        )

    # Twice is a no-op (timm's own RepMixer / RepCPE / large-kernel blocks fail if fused twice).
    again = reparameterize(fused)
    assert sorted(again.state_dict()) == sorted(fused.state_dict())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fused.state_dict().items())
    in_place = reparameterize(fused, inplace=True)
    assert in_place is fused


def test_training_mode_warns_and_eval_does_not():
    torch.manual_seed(0)
    model = open_clip.create_model("MobileCLIP2-S0")
    with pytest.warns(UserWarning, match="training mode"):
        reparameterize(model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = reparameterize(model)
        reparameterize(fused)  # the new fused convs keep the eval mode: no warning the second time


def test_inplace_fuses_the_given_model():
    torch.manual_seed(0)
    model = open_clip.create_model("MobileCLIP-S0").eval()
    assert _unfused_blocks(model)
    assert reparameterize(model, inplace=True) is model
    assert _unfused_blocks(model) == []


def test_native_open_clip_model_without_fusable_blocks_is_unchanged():
    torch.manual_seed(0)
    model = open_clip.create_model("RN50").eval()  # open_clip's own ModifiedResNet: nothing to fuse
    fused = reparameterize(model)
    state, fused_state = model.state_dict(), fused.state_dict()
    assert sorted(state) == sorted(fused_state)
    assert all(torch.equal(v, fused_state[k]) for k, v in state.items())
