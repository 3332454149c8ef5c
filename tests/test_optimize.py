"""mobileclip2.optimize: same embeddings as the unfused fp32 model (within 1e-4), faster layers underneath.

Random initialisation leaves BatchNorm statistics at (0, 1) and layer scales at 1e-5, which would
hide mistakes in fusing them; the fixtures randomize both so every folded op matters.
"""

from __future__ import annotations

import shutil
import sys

import open_clip
import pytest
import torch
from model_support import inputs, reference_model
from torch import nn

import mobileclip2
from mobileclip2 import benchmarking
from mobileclip2.inference import optimize
from mobileclip2.inference.causal_text import CausalPrefixText
from mobileclip2.inference.common import ImageInput, block_types
from mobileclip2.inference.fold import fold_affines
from mobileclip2.inference.onednn import (
    ExpandedDepthwise,
    OneDNNConv2d,
    OneDNNLinear,
    OneDNNSelfAttentionBlock,
    ResidualConvMlpBlock,
    onednn_available,
)

TOLERANCE = 1e-4


def max_diffs(reference: nn.Module, candidate: nn.Module, batch: int = 2) -> dict[str, float]:
    image, text = inputs(reference, batch)
    with torch.inference_mode():
        return {
            "image": float((candidate.encode_image(image) - reference.encode_image(image)).abs().max()),
            "text": float((candidate.encode_text(text) - reference.encode_text(text)).abs().max()),
            "image_scale": float(reference.encode_image(image).abs().max()),
            "text_scale": float(reference.encode_text(text).abs().max()),
        }


MODELS = [
    "MobileCLIP2-S0",
    "MobileCLIP-S0",
    pytest.param("MobileCLIP2-S4", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=MODELS)
def pair(request):
    reference = reference_model(request.param)
    return request.param, reference, optimize(reference)


def test_optimized_matches_unfused_fp32(pair):
    name, reference, optimized = pair
    diffs = max_diffs(reference, optimized, batch=3)  # a batch size the packing probe (1) never saw
    assert diffs["image"] < TOLERANCE and diffs["text"] < TOLERANCE, (name, diffs)
    # The comparison is meaningful: embeddings are O(0.1..1), not ~0.
    assert diffs["image_scale"] > 1e-2 and diffs["text_scale"] > 1e-1, diffs


def test_optimized_normalized_embeddings_match(pair):
    _, reference, optimized = pair
    image, text = inputs(reference)
    with torch.inference_mode():
        for encode in ("encode_image", "encode_text"):
            ours = getattr(optimized, encode)(image if encode == "encode_image" else text, normalize=True)
            theirs = getattr(reference, encode)(image if encode == "encode_image" else text, normalize=True)
            assert torch.allclose(ours, theirs, atol=TOLERANCE, rtol=0)


@pytest.mark.skipif(not onednn_available(), reason="torch build without oneDNN ops")
def test_optimized_uses_prepacked_onednn_layers(pair):
    name, _, optimized = pair
    kinds = {type(m) for m in optimized.modules()}
    assert OneDNNConv2d in kinds and OneDNNLinear in kinds
    assert OneDNNSelfAttentionBlock in kinds  # open_clip's text blocks and MCt's transformer layers
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MultiheadAttention)) for m in optimized.modules()), name
    fused_gelu = [m for m in optimized.modules() if getattr(m, "unary", None) == "gelu"]
    assert len(fused_gelu) > 10  # GELU runs as a oneDNN post-op, not a separate pass
    # Every MCi block's MLP adds its residual inside fc2; no grouped conv with a channel
    # multiplier is left for oneDNN's slow generic grouped kernel; images enter channels-last.
    assert sum(isinstance(m, ResidualConvMlpBlock) for m in optimized.modules()) >= 20, name
    assert ExpandedDepthwise in kinds
    assert not any(ExpandedDepthwise.applies_to(m) for m in optimized.modules())
    assert isinstance(optimized.visual, ImageInput) and optimized.visual.memory_format == torch.channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_expanded_depthwise_computes_the_grouped_conv(channels_last):
    """A 7x7 stride-2 conv with 2 outputs per input channel (FastViT's PatchEmbed) and its
    depthwise form agree to rounding, on either memory format and through oneDNN too."""
    grouped = nn.Conv2d(8, 16, 7, stride=2, padding=3, groups=8).eval()
    expanded = ExpandedDepthwise(grouped)
    assert ExpandedDepthwise.applies_to(grouped) and expanded.multiplier == 2
    image = torch.randn(2, 8, 15, 15)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = grouped(image)
        assert torch.allclose(expanded(image), want, atol=1e-6, rtol=0)
        if onednn_available():
            expanded.conv = OneDNNConv2d(expanded.conv, input_size=[1, 16, 15, 15])
            assert torch.allclose(expanded(image), want, atol=1e-5, rtol=0)
    for plain in (nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 1), nn.Conv2d(8, 16, 3, groups=4)):
        assert not ExpandedDepthwise.applies_to(plain)


def test_residual_fusion_only_takes_blocks_whose_forward_is_known():
    """A block whose layer scale was not folded (or with an unknown MLP) keeps its own forward."""
    optimized = optimize(reference_model("MobileCLIP2-S0"))
    fused = next(m for m in optimized.modules() if isinstance(m, ResidualConvMlpBlock))
    block = block_types().repmixer_block_2d[0].__new__(block_types().repmixer_block_2d[0])
    nn.Module.__init__(block)
    block.token_mixer, block.mlp = fused.token_mixer, fused.mlp
    block.layer_scale, block.drop_path = nn.Identity(), nn.Identity()
    assert ResidualConvMlpBlock.wrap(block) is not None
    block.layer_scale = nn.Dropout(0.5)  # anything that is not the identity
    assert ResidualConvMlpBlock.wrap(block) is None
    block.layer_scale, block.mlp = nn.Identity(), nn.Sequential(nn.Conv2d(2, 2, 1))
    assert ResidualConvMlpBlock.wrap(block) is None


def test_optimize_leaves_the_input_model_alone():
    reference = reference_model("MobileCLIP-S0")
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    optimize(reference)
    after = reference.state_dict()
    assert sorted(before) == sorted(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fold_affines_removes_batchnorm_and_layer_scales_exactly():
    reference = reference_model("MobileCLIP-S0")
    folded = fold_affines(mobileclip2.reparameterize(reference))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not any(type(m).__name__.startswith("LayerScale") for m in folded.modules())
    diffs = max_diffs(reference, folded)
    assert diffs["image"] < TOLERANCE and diffs["text"] < TOLERANCE, diffs


def test_fold_affines_folds_a_norm_followed_by_an_activation():
    """timm ConvNormAct whose BatchNormAct2d ends in GELU (MobileCLIP-B's convolutional stem): the
    BatchNorm goes into the conv, the GELU stays after it."""
    from timm.layers import ConvNormAct

    torch.manual_seed(3)
    block = ConvNormAct(3, 8, kernel_size=4, stride=4, act_layer=nn.GELU).eval()
    with torch.no_grad():
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.normal_()
        block.bn.bias.normal_()
    holder = nn.Sequential(block)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = holder(x)
        fold_affines(holder)
        got = holder(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in holder.modules())
    assert any(isinstance(m, nn.GELU) for m in holder.modules())
    assert float((got - want).abs().max()) < 1e-5


def test_without_onednn_the_result_is_a_plain_model():
    """onednn=False: reparameterize + fold only, still an ordinary module tree (any device, dtype)."""
    reference = reference_model("MobileCLIP2-S0")
    plain = optimize(reference, onednn=False)
    assert not any(isinstance(m, (OneDNNConv2d, OneDNNLinear)) for m in plain.modules())
    diffs = max_diffs(reference, plain)
    assert diffs["image"] < TOLERANCE and diffs["text"] < TOLERANCE, diffs


def captions(batch_ends: list[int], context: int = 77) -> torch.Tensor:
    """Tokenizer-shaped rows: start token, words, end-of-text (the highest id) at ``end``, zero padding."""
    generator = torch.Generator().manual_seed(2)
    text = torch.zeros(len(batch_ends), context, dtype=torch.long)
    for row, end in enumerate(batch_ends):
        text[row, 1:end] = torch.randint(1, 49000, (end - 1,), generator=generator)
        text[row, 0], text[row, end] = 49406, 49407
    return text


@pytest.mark.parametrize("onednn", [None, False])
def test_causal_text_stops_at_the_end_of_text_token(onednn):
    """The truncated text tower equals open_clip's full 77-token forward, rows of different lengths mixed.

    MobileCLIP2-B's text tower is causal (MobileCLIP2-S0/S4/L-14's are not: ``no_causal_mask``)."""
    reference = reference_model("MobileCLIP2-B")
    optimized = optimize(reference, onednn=onednn)
    assert isinstance(optimized.text, CausalPrefixText)
    text = captions([5, 40, 11])
    with torch.inference_mode():
        ours, theirs = optimized.encode_text(text), reference.encode_text(text)
        # Changing the tokens after the end-of-text token changes nothing upstream either.
        text_noise = text.clone()
        text_noise[:, 45:] = 7
        assert torch.allclose(reference.encode_text(text_noise), theirs, atol=1e-5)
    assert float((ours - theirs).abs().max()) < TOLERANCE
    assert float(theirs.abs().max()) > 1e-1


@pytest.mark.parametrize("name", ["MobileCLIP-S0", "MobileCLIP2-S0"])
def test_bidirectional_text_tower_is_not_truncated(name):
    """MCt (MobileCLIP-S0) and MobileCLIP2-S0's text transformer (no causal mask) attend both ways:
    every token counts, so the tower stays whole."""
    optimized = optimize(reference_model(name), onednn=False)
    assert not isinstance(optimized.text, CausalPrefixText)


@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "MobileCLIP-S0"])
def test_bfloat16_path_matches_fp32(name):
    """optimize(dtype=bfloat16): the GPU path's casts (LayerNormFp32 stays fp32, fp32 images accepted)."""
    reference = reference_model(name)
    optimized = optimize(reference, dtype=torch.bfloat16, onednn=False, channels_last=True)
    image, text = inputs(reference)
    with torch.inference_mode():
        for got, want in (
            (optimized.encode_image(image), reference.encode_image(image)),
            (optimized.encode_text(text), reference.encode_text(text)),
        ):
            assert got.dtype == torch.bfloat16
            cosine = torch.nn.functional.cosine_similarity(got.float(), want).min()
            assert cosine > 0.999, (name, float(cosine))
    norms = [m for m in optimized.modules() if isinstance(m, block_types().fp32_norm)]
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())


def test_blocks_are_recognized_by_type_not_name():
    """A look-alike class with the same name as a folded block is left alone."""
    types = block_types()
    assert {c.__module__.split(".")[0] for c in types.repmixer_block} == {"timm", "mobileclip2"}
    look_alike = type("RepMixerBlock", (nn.Module,), {})()
    look_alike.layer_scale = nn.Identity()
    look_alike.mlp = nn.Module()
    look_alike.mlp.fc2 = nn.Conv2d(2, 2, 1)
    before = look_alike.mlp.fc2.weight.clone()
    fold_affines(look_alike)
    assert torch.equal(look_alike.mlp.fc2.weight, before)


def test_bad_compile_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="reduce-overhead"):
        optimize(nn.Linear(2, 2), compile="fastest")


def test_paired_samples_alternate_the_order():
    calls = []
    timers = {
        name: benchmarking.call_timer(lambda name=name: calls.append(name))
        for name in ("upstream", "ours", "ort")
    }
    samples = benchmarking.paired_samples(timers, rounds=3, warmup=0)
    assert calls == ["upstream", "ours", "ort", "ours", "ort", "upstream", "ort", "upstream", "ours"]
    assert all(len(times) == 3 for times in samples.values())


@pytest.mark.parametrize("runtimes", [2, 3, 4])
def test_no_runtime_is_timed_twice_in_a_row(runtimes):
    """A call right after the same runtime's own call finds its weights in cache (faster)."""
    names = [f"r{i}" for i in range(runtimes)]
    calls = [name for index in range(12) for name in benchmarking.round_order(names, index)]
    assert all(a != b for a, b in zip(calls, calls[1:]))
    positions = {name: [benchmarking.round_order(names, i).index(name) for i in range(12)] for name in names}
    if runtimes > 2:  # every runtime takes every position equally often
        assert all(sorted(p) == sorted(positions[names[0]]) for p in positions.values())


def test_interference_check_flags_a_disturbed_baseline():
    assert benchmarking.interference_check([1.0, 1.0, 1.0], [1.05, 1.08, 1.02]) == pytest.approx((0.05, True))
    difference, valid = benchmarking.interference_check([1.0, 1.0, 1.0], [2.0, 2.1, 1.9])
    assert not valid and difference == pytest.approx(1.0)
    assert benchmarking.median_ratio([2.0, 4.0, 3.0], [1.0, 1.0, 3.0]) == 2.0


def test_package_versions_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from mobileclip2.system import package_versions; v = package_versions('timm'); "
        "assert 'torch' in v and 'timm' in v; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.skipif(not onednn_available(), reason="torch build without oneDNN ops")
def test_onednn_block_takes_open_clips_own_attention():
    """open_clip main's ResidualAttentionBlock holds open_clip.transformer.Attention (3.3.0 has the
    class too, in its custom blocks): recognised by its parts, same outputs, causal mask or none."""
    from collections import OrderedDict

    from open_clip.transformer import Attention

    from mobileclip2.compat.torch_ops import plain_self_attention

    class Block(nn.Module):  # main's ResidualAttentionBlock, written out (3.3.0's holds an MHA)
        def __init__(self, width: int, heads: int):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = Attention(width, heads)
            self.mlp = nn.Sequential(
                OrderedDict(
                    c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(), c_proj=nn.Linear(4 * width, width)
                )
            )

        def forward(self, x, attn_mask=None):
            x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
            return x + self.mlp(self.ln_2(x))

    torch.manual_seed(0)
    block = Block(32, 4).eval()
    for parameter in block.parameters():
        parameter.data.normal_(0, 0.2)
    assert plain_self_attention(block.attn) and OneDNNSelfAttentionBlock.supports(block)
    scaled = Attention(32, 4, scaled_cosine=True)
    assert not plain_self_attention(scaled)
    fast = OneDNNSelfAttentionBlock(block).eval()
    x = torch.randn(2, 7, 32)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    with torch.no_grad():
        for mask in (None, causal):
            torch.testing.assert_close(
                fast(x, attn_mask=mask), block(x, attn_mask=mask), atol=1e-5, rtol=1e-5
            )


def test_package_versions_name_what_is_imported(monkeypatch):
    """A source checkout on PYTHONPATH (open_clip main) shadows the installed wheel: the export sidecar
    must record the version that ran, not the wheel's metadata."""
    import types

    from mobileclip2.system import package_versions

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(__version__="9.9.9.dev0"))
    assert package_versions("open_clip_torch")["open_clip_torch"] == "9.9.9.dev0"


def test_onednn_on_an_unsupported_model_is_a_clear_error():
    model = open_clip.create_model("MobileCLIP-S0").to(torch.bfloat16)
    with pytest.raises(ValueError, match="onednn=False"):
        optimize(model, onednn=True)


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        optimize("MobileCLIP2-S0")


def test_public_api_names_stay_callable_after_importing_the_modules():
    """`mobileclip2.optimize` / `.export_model` are functions even once their modules are imported."""
    import mobileclip2.export.pipeline  # noqa: F401
    import mobileclip2.inference  # noqa: F401

    assert callable(mobileclip2.optimize) and callable(mobileclip2.export_model)
    assert mobileclip2.optimize is optimize


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler"
)
def test_compile_option_matches():
    reference = reference_model("MobileCLIP2-S0")
    compiled = optimize(reference, compile=True)
    image, _ = inputs(reference)
    with torch.inference_mode():
        diff = (compiled.encode_image(image) - reference.encode_image(image)).abs().max()
    assert diff < TOLERANCE


@pytest.mark.slow
def test_bench_command_compares_runtimes(capsys):
    from mobileclip2 import cli

    code = cli.main(
        ["bench", "MobileCLIP-S0", "--tower", "text", "--runtimes", "upstream", "ours", "--rounds", "2"]
    )
    out = capsys.readouterr().out
    assert code in (0, 3)  # 3: the self-check found the runtimes disturbing each other (a busy machine)
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [("text", "1", "upstream"), ("text", "1", "ours")]
    assert rows[0][5] == "1.00x" and float(rows[1][3]) > 0
    assert all(row[6] in ("ok", "INVALID") for row in rows)
