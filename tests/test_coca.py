"""Apple's MobileCLIP2 CoCa captioners through OpenCLIP without copying configs by hand.

Context-77 captioners use open_clip's own coca_ViT-L-14; the context-256 ones (Apple's README:
"copy config.json to .../coca_ViT-L-14-context$len.json") are registered here as
coca_ViT-L-14-context256. Context naming follows coca_ViT-L-14, Apple's "context77": its config
says 76 because CoCa appends a CLS position to the text, so "context256" is context_length 255
and a 256-row text positional embedding.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from model_support import initialize_what_upstream_leaves_empty
from train_support import COCA_SAMPLING_CASES as SAMPLING_CASES

from mobileclip2 import plugin

NAME = "coca_ViT-L-14-context256"
UPSTREAM = "coca_ViT-L-14"
SOT, EOT, VOCAB = 49406, 49407, 49408


def test_config_is_upstream_coca_l14_with_a_longer_context():
    ours = open_clip.get_model_config(NAME)
    upstream = open_clip.get_model_config(UPSTREAM)
    assert upstream["text_cfg"]["context_length"] == upstream["multimodal_cfg"]["context_length"] == 76
    assert ours["text_cfg"].pop("context_length") == ours["multimodal_cfg"].pop("context_length") == 255
    del upstream["text_cfg"]["context_length"], upstream["multimodal_cfg"]["context_length"]
    assert ours == upstream
    assert NAME in plugin.registration_state()[1].configs_backfilled
    assert open_clip.get_tokenizer(NAME).context_length == 255


def test_parameters_equal_upstream_except_the_positional_embedding():
    with torch.device("meta"):  # shapes only: no 2.5 GB of random weights
        ours = open_clip.create_model(NAME, device="meta")
        upstream = open_clip.create_model(UPSTREAM, device="meta")
    assert type(ours).__name__ == "CoCa"
    shapes = {name: tuple(p.shape) for name, p in ours.named_parameters()}
    upstream_shapes = {name: tuple(p.shape) for name, p in upstream.named_parameters()}
    assert sorted(shapes) == sorted(upstream_shapes)
    differing = {
        name: (shapes[name], upstream_shapes[name])
        for name in shapes
        if shapes[name] != upstream_shapes[name]
    }
    assert differing == {"text.positional_embedding": ((256, 768), (77, 768))}
    total = sum(p.numel() for p in ours.parameters())
    assert total - sum(p.numel() for p in upstream.parameters()) == (256 - 77) * 768
    assert total == 638_587_649


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    """A random ctx-256 CoCa saved to a local file and loaded back the way Apple's README loads one."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(NAME)
    initialize_what_upstream_leaves_empty(model)
    path = tmp_path_factory.mktemp("coca") / "mobileclip2_coca_context256.safetensors"
    state = {key: value.to(torch.bfloat16).contiguous() for key, value in model.state_dict().items()}
    del model
    save_file(state, str(path))
    loaded, _, preprocess = open_clip.create_model_and_transforms(NAME, pretrained=str(path))
    probe = "text.positional_embedding"
    assert torch.equal(loaded.state_dict()[probe], state[probe].float())
    return loaded.eval(), preprocess


@pytest.mark.slow
def test_generate_top_p_returns_token_ids_of_the_requested_length(captioner):
    from PIL import Image

    model, preprocess = captioner
    pixels = (torch.rand(180, 240, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    image = preprocess(Image.fromarray(pixels.numpy())).unsqueeze(0)
    assert image.shape == (1, 3, 224, 224)
    torch.manual_seed(2)
    tokens = model.generate(image, generation_type="top_p", top_p=0.9, seq_len=12, fixed_output_length=True)
    assert tokens.shape == (1, 12) and tokens.dtype == torch.long
    assert tokens[0, 0] == SOT
    assert ((tokens >= 0) & (tokens < VOCAB)).all()
    assert isinstance(open_clip.decode(tokens[0]), str)


@pytest.mark.slow
def test_the_full_255_token_context_fits(captioner):
    model, _ = captioner
    image = torch.rand(1, 3, 224, 224)
    text = torch.randint(0, SOT, (1, 255))
    from mobileclip2.compat.sampling import _forward_options

    with torch.no_grad():  # open_clip <= 3.3 shift the text by one unless output_labels=False; 4.x never
        logits = model(image, text, **_forward_options(model))["logits"]
    assert logits.shape == (1, 255, VOCAB) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_beam_search_without_beam_scorer_is_a_clear_error(captioner):
    """Without transformers (or with transformers 5, which removed BeamSearchScorer) open_clip
    would refuse all generation; sampling works through mobileclip2.compat.sampling, beam search
    says why not."""
    from open_clip import coca_model

    from mobileclip2.errors import GenerationUnavailableError

    if hasattr(coca_model, "BeamSearchScorer"):
        pytest.skip("open_clip imported transformers' BeamSearchScorer itself: beam search works here")
    model, _ = captioner
    with pytest.raises(GenerationUnavailableError, match="generation_type='top_p'"):
        model.generate(torch.rand(1, 3, 224, 224))  # open_clip's default generation_type is beam search


def test_listed_as_one_of_our_names():
    from mobileclip2.catalog import model_info

    info = model_info(NAME)
    assert info.source == "backfilled" and info.tags == () and info.embed_dim == 768


# Sampling on a tiny CoCa: our loop (every open_clip) against open_clip 3.x's own loop.


@pytest.fixture(scope="module")
def tiny_coca(tmp_path_factory):
    from train_support import COCA_CONFIG

    folder = tmp_path_factory.mktemp("coca_tiny")
    (folder / "open_clip_config.json").write_text(json.dumps(COCA_CONFIG))
    torch.manual_seed(0)
    return open_clip.create_model(f"local-dir:{folder}").eval()


def test_sampling_gives_open_clip_3s_tokens(tiny_coca, monkeypatch):
    """Same seed, same tokens as open_clip's own loop (with transformers' helpers when installed,
    else the standard helpers of compat.sampling in their place, as they were handed to it before)."""
    from open_clip import coca_model

    from mobileclip2.compat import sampling

    if not hasattr(coca_model, "GENERATION_TYPES"):
        pytest.skip(
            "open_clip >= 4 has no sampling loop of its own: tests/test_upstream_main.py compares "
            "its tokens with 3.3.0's"
        )
    if not coca_model._has_transformers:
        for name in sampling.__all__:
            monkeypatch.setattr(coca_model, name, getattr(sampling, name), raising=False)
        types = dict(top_k=sampling.TopKLogitsWarper, top_p=sampling.TopPLogitsWarper)
        monkeypatch.setattr(coca_model, "GENERATION_TYPES", types)
        monkeypatch.setattr(coca_model, "_has_transformers", True)
    upstream = coca_model.CoCa.generate.__wrapped__
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for kwargs in SAMPLING_CASES:
        torch.manual_seed(2)
        ours = tiny_coca.generate(image, **kwargs)
        torch.manual_seed(2)
        reference = upstream(tiny_coca, image, **kwargs)
        assert torch.equal(ours, reference), kwargs
    assert tiny_coca.training is False


def test_beam_search_without_transformers_says_what_to_do(tiny_coca):
    import inspect

    from open_clip import coca_model

    from mobileclip2.compat.coca import _upstream_generation_available
    from mobileclip2.errors import GenerationUnavailableError

    takes_config = "generation_config" in inspect.signature(coca_model.CoCa.generate.__wrapped__).parameters
    if _upstream_generation_available(coca_model, takes_config):
        pytest.skip("transformers is importable here: upstream runs beam search itself")
    with pytest.raises(GenerationUnavailableError, match="generation_type='top_p' or 'top_k'"):
        tiny_coca.generate(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="generation_type must be one of"):
        tiny_coca.generate(torch.rand(1, 3, 32, 32), generation_type="greedy")
