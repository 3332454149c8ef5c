"""Every tower of every registered model runs after a whole-model cast to bf16 and fp16.

MobileCLIP-S0 is the case to watch: an MCt text tower that always used open_clip's LayerNormFp32,
whose weights must stay fp32, would fail ``model.to(torch.bfloat16)`` then ``encode_text`` ("mixed
dtype"). Like open_clip's own text towers, MCt uses plain LayerNorm unless a cast dtype is asked for.

Models have random weights; images are 64 px for the convolutional towers (any size works), the
configured size for ViTs. fp16 convolutions, matmuls and norms run on CPU in torch 2.14, so both
dtypes are tested for every name.
"""

from __future__ import annotations

import pytest
import torch

import mobileclip2

# MobileCLIP-S0 (MCt text tower, the case above) runs always; each other name is slow on CPU
# (model build plus fp16 kernels), so it runs with the big models.
_FAST = {"MobileCLIP-S0"}


def _names() -> list:
    from mobileclip2.configs import config_files

    return [
        pytest.param(path.stem, marks=pytest.mark.slow) if path.stem not in _FAST else path.stem
        for path in config_files()
    ]


@pytest.mark.parametrize("name", _names())
def test_whole_model_casts_run_both_towers(name):
    import open_clip

    mobileclip2.register()
    config = open_clip.get_model_config(name)
    size = config["vision_cfg"].get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    if "timm_model_name" in config["vision_cfg"] and "fastvit" in config["vision_cfg"]["timm_model_name"]:
        size = 64
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat"])
    for dtype, cast in (
        (torch.bfloat16, lambda m: m.to(torch.bfloat16)),
        (torch.float16, lambda m: m.half()),
    ):
        cast(model)
        with torch.no_grad():
            image = model.encode_image(torch.randn(1, 3, size, size).to(dtype))
            text = model.encode_text(tokens)
        assert (image.dtype, text.dtype) == (dtype, dtype), name
        assert image.shape == (1, config["embed_dim"]) and text.shape == (1, config["embed_dim"])
        assert torch.isfinite(image.float()).all() and torch.isfinite(text.float()).all()


def test_mct_under_a_cast_precision_keeps_fp32_norms():
    """precision='bf16' asks for a cast dtype: then MCt uses LayerNormFp32 with fp32 weights, as
    open_clip's own text towers do, and still encodes."""
    import open_clip
    from open_clip.transformer import LayerNorm, LayerNormFp32

    mobileclip2.register()
    torch.manual_seed(0)
    model = open_clip.create_model("MobileCLIP-S0", precision="bf16").eval()
    norms = [m for m in model.text.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is LayerNormFp32 and m.weight.dtype == torch.float32 for m in norms)
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer("MobileCLIP-S0")(["a photo of a cat"]))
    assert text.dtype == torch.bfloat16 and torch.isfinite(text.float()).all()
    plain = open_clip.create_model("MobileCLIP-S0").text
    assert all(type(m) is LayerNorm for m in plain.modules() if isinstance(m, torch.nn.LayerNorm))
