"""mobileclip2.optimize: same embeddings as the unfused fp32 model (within 1e-4), faster layers underneath.

Random initialisation leaves BatchNorm statistics at (0, 1) and layer scales at 1e-5, which would
hide mistakes in fusing them; the fixtures randomize both so every folded op matters.
"""

from __future__ import annotations

import shutil

import open_clip
import pytest
import torch
from model_support import inputs, reference_model
from torch import nn

import mobileclip2
from mobileclip2.inference import (
    _OneDNNConv2d,
    _OneDNNLinear,
    _OneDNNSelfAttentionBlock,
    fold_affines,
    onednn_available,
    optimize,
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
    pytest.param("MobileCLIP2-S4", marks=pytest.mark.big),
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
    assert _OneDNNConv2d in kinds and _OneDNNLinear in kinds
    assert _OneDNNSelfAttentionBlock in kinds  # open_clip's text blocks and MCt's transformer layers
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MultiheadAttention)) for m in optimized.modules()), name
    fused_gelu = [m for m in optimized.modules() if getattr(m, "unary", None) == "gelu"]
    assert len(fused_gelu) > 10  # GELU runs as a oneDNN post-op, not a separate pass


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


def test_without_onednn_the_result_is_a_plain_model():
    """onednn=False: reparameterize + fold only, still an ordinary module tree (any device, dtype)."""
    reference = reference_model("MobileCLIP2-S0")
    plain = optimize(reference, onednn=False)
    assert not any(isinstance(m, (_OneDNNConv2d, _OneDNNLinear)) for m in plain.modules())
    diffs = max_diffs(reference, plain)
    assert diffs["image"] < TOLERANCE and diffs["text"] < TOLERANCE, diffs


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


@pytest.mark.big
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


def test_bench_command_compares_runtimes(capsys):
    from mobileclip2 import cli

    code = cli.main(
        ["bench", "MobileCLIP-S0", "--tower", "text", "--runtimes", "upstream", "ours", "--rounds", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [("text", "1", "upstream"), ("text", "1", "ours")]
    assert rows[0][-1] == "1.00x" and float(rows[1][3]) > 0
