"""MobileCLIP-S0 as an ordinary OpenCLIP name: the MCt text tower's structure and semantics,
parameter counts against Apple's table, tokenizer, shapes, precision, locking, and its tag.

Numerical equality with Apple's V1 code is in test_convert.py; fusing in test_reparam.py.
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from model_support import randomize_inference_statistics
from torch import nn

from mobileclip2.models.text_mct import (
    MCtCfg,
    MCtTextEncoder,
    RepMixer1d,
    RepMixerBlock1d,
    TransformerBlock,
    build_text_tower,
)

NAME = "MobileCLIP-S0"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_inference_statistics(open_clip.create_model(NAME))


@pytest.fixture(scope="module")
def tokens():
    return open_clip.get_tokenizer(NAME)(["a photo of a cat", "a diagram of a mobile network", "", "x"])


def test_config_selects_the_mct_tower_and_fastvit_mci0():
    config = open_clip.get_model_config(NAME)
    assert config["embed_dim"] == 512 and config["custom_text"] is True
    assert config["vision_cfg"]["timm_model_name"] == "fastvit_mci0"
    assert config["vision_cfg"]["image_size"] == 256
    assert config["text_cfg"]["text_tower"] == "mobileclip_mct"
    assert MCtCfg.from_text_cfg(config["text_cfg"]) == MCtCfg()  # the defaults are Apple's S0 text config


def test_mct_structure(model):
    text = model.text
    assert isinstance(text, MCtTextEncoder)
    kinds = [type(block) for block in text.transformer.resblocks]
    assert kinds == [RepMixerBlock1d] + [TransformerBlock] * 4 + [RepMixerBlock1d]
    mixer = text.transformer.resblocks[0].token_mixer
    assert isinstance(mixer, RepMixer1d)
    assert mixer.mixer.conv_kxk[0].conv.weight.shape == (
        512,
        1,
        1,
        11,
    )  # depthwise, kernel 11 along the sequence
    assert text.transformer.resblocks[0].mlp.fc1.out_channels == 2048
    assert text.positional_embedding.shape == (77, 512)  # learned absolute positions
    assert text.text_projection.shape == (512, 512)  # a bare matrix: no bias
    layer_norms = [m for m in text.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == 4 * 2 + 1
    # open_clip's choice for its own text towers: LayerNorm in fp32, LayerNormFp32 under a cast dtype.
    assert all(type(m).__name__ == "LayerNorm" for m in layer_norms)
    assert (text.context_length, text.vocab_size, text.output_tokens) == (77, 49408, False)
    assert (model.context_length, model.vocab_size) == (77, 49408)


def test_parameter_counts_match_apples_table(model):
    """Apple's README: 11.4M image + 42.4M text. The image number counts the *fused* tower
    (11.357M; un-fused 11.407M would also round to 11.4); the text number counts the whole MCt
    tower including its 25.3M-parameter token embedding, and is 42.4M fused or not."""
    from mobileclip2 import reparameterize
    from mobileclip2.commands.info import tower_parameter_counts

    counts = tower_parameter_counts(model)
    assert (counts["image"], counts["text"], counts["other"]) == (11_406_976, 42_441_216, 1)
    fused = tower_parameter_counts(reparameterize(model))
    assert (fused["image"], fused["text"]) == (11_357_504, 42_435_072)
    assert (round(fused["image"] / 1e6, 1), round(fused["text"] / 1e6, 1)) == (11.4, 42.4)
    assert model.text.token_embedding.weight.numel() == 49408 * 512


def test_tokenizer_is_clip_bpe_at_context_77(tokens):
    tokenizer = open_clip.get_tokenizer(NAME)
    assert type(tokenizer).__name__ == "SimpleTokenizer" and tokenizer.context_length == 77
    assert tokens.shape == (4, 77)
    assert tokens[0, 0] == 49406 and tokens[0].argmax() == 6  # <start_of_text> a photo of a cat <end_of_text>
    assert tokens[2, :3].tolist() == [49406, 49407, 0]  # "" is just the two markers, then padding


def test_forward_shapes(model, tokens):
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        image_features, text_features, logit_scale = model(images, tokens)
    assert image_features.shape == (2, 512) and text_features.shape == (4, 512)
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(4))
    assert logit_scale.shape == ()


def test_pooling_is_at_the_end_of_text_token(model, tokens):
    """Recompute MCt by hand: embeddings + positions, blocks, LayerNorm, EOT row, projection."""
    text = model.text
    with torch.no_grad():
        x = text.token_embedding(tokens) + text.positional_embedding
        for block in text.transformer.resblocks:
            x = block(x)
        x = text.ln_final(x)
        expected = x[torch.arange(4), tokens.argmax(dim=-1)] @ text.text_projection
        torch.testing.assert_close(model.encode_text(tokens), expected, atol=1e-6, rtol=0)


def test_attention_is_bidirectional_and_unmasked(model, tokens):
    """No causal and no padding mask: a token *after* <end_of_text> changes the pooled feature."""
    changed = tokens.clone()
    changed[0, 10] = 320  # inside the padding, far below the EOT id so pooling stays at position 6
    with torch.no_grad():
        before, after = model.encode_text(tokens[:1]), model.encode_text(changed[:1])
    assert changed[0].argmax() == tokens[0].argmax()
    assert (before - after).abs().max() > 1e-4


def test_low_precision_keeps_layer_norms_in_fp32():
    torch.manual_seed(0)
    model = open_clip.create_model(NAME, precision="bf16").eval()
    norms = [m for m in model.text.modules() if isinstance(m, nn.LayerNorm)]
    assert all(m.weight.dtype == torch.float32 for m in norms)
    assert model.text.token_embedding.weight.dtype == torch.bfloat16
    with torch.no_grad():
        features = model.encode_text(open_clip.get_tokenizer(NAME)(["a cat"]))
    assert features.dtype == torch.bfloat16 and torch.isfinite(features.float()).all()


def test_lock_freezes_weights_and_batchnorm_statistics(model, tokens):
    text = copy.deepcopy(model.text)
    text.lock(unlocked_layers=0)
    assert not any(p.requires_grad for p in text.parameters())
    text.train()
    bn = text.transformer.resblocks[0].mlp.conv.bn
    before = bn.running_mean.clone()
    text(tokens)
    assert not bn.training and torch.equal(bn.running_mean, before)

    text.lock(unlocked_layers=2)  # open_clip's groups: ..., [last block + ln_final], [projection]
    trainable = {name for name, p in text.named_parameters() if p.requires_grad}
    assert trainable == {"text_projection", "ln_final.weight", "ln_final.bias"} | {
        f"transformer.resblocks.5.{name}" for name, _ in text.transformer.resblocks[5].named_parameters()
    }
    text.train()
    assert text.transformer.resblocks[5].mlp.conv.bn.training  # unlocked BatchNorms keep learning


def test_grad_checkpointing_gives_the_same_gradients(model, tokens):
    grads = []
    for enable in (False, True):
        text = copy.deepcopy(model.text).train()
        for module in text.modules():  # same batch statistics path in both runs
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        text.set_grad_checkpointing(enable)
        text(tokens).square().sum().backward()
        grads.append(text.transformer.resblocks[0].token_mixer.mixer.conv_kxk[0].conv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_repmixer_reparameterize_is_exact_and_idempotent(model):
    block = copy.deepcopy(model.text.transformer.resblocks[0])
    x = torch.randn(2, 77, 512)
    with torch.no_grad():
        expected = block(x)
        block.token_mixer.reparameterize()
        assert block.token_mixer.reparam_conv is not None and not hasattr(block.token_mixer, "mixer")
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=0)
        state = {k: v.clone() for k, v in block.state_dict().items()}
        block.token_mixer.reparameterize()
        assert all(torch.equal(v, block.state_dict()[k]) for k, v in state.items())


def test_text_cfg_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown MCt text_cfg keys \['hf_model_name'\]"):
        build_text_tower(512, {"text_tower": "mobileclip_mct", "hf_model_name": "bert"})
    with pytest.raises(ValueError, match="no_causal_mask' must be true"):
        build_text_tower(512, {"text_tower": "mobileclip_mct", "no_causal_mask": False})


def test_too_long_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="got 78 tokens, but MCt has 77 positions"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_datacompdr_tag_points_at_apples_v1_file():
    from mobileclip2.compat.registry import hub_location

    assert open_clip.list_pretrained_tags_by_model(NAME) == ["datacompdr"]
    cfg = open_clip.get_pretrained_cfg(NAME, "datacompdr")
    assert hub_location(cfg) == ("apple/MobileCLIP-S0", "mobileclip_s0.pt")
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)  # V1: no normalization
    assert (cfg["interpolation"], cfg["resize_mode"]) == ("bilinear", "shortest")
