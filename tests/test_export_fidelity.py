"""The int8 fidelity gate and the Core ML precision choice, on small models.

The gate: the built-in evaluation captions, caption-shaped synthetic calibration, the minimum cosine
over every evaluated set; the failure it exists for (static int8 calibrated on random full-context token
ids: fine on held-out random ids, wrong on real captions) reproduced on a text tower shaped like
MobileCLIP2-S0's where it matters (no causal mask). The precision choice: the fp16 check, its decision,
and what a Core ML export records and writes. Real towers: tests/test_export_mobile.py (slow).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_support import (
    TINY_PREPROCESS,
    clip_tokenizer,
    small_text_clip,
    tiny_clip,
    tiny_tokenizer,
)

from mobileclip2.errors import ExportParityError
from mobileclip2.export import calibration as calib
from mobileclip2.export import precision
from mobileclip2.export.formats import DEFAULT_MIN_COSINE
from mobileclip2.export.pipeline import export_loaded
from mobileclip2.export.towers import Geometry, embed, geometry, prepared, tower_module

SOT, EOT = 49406, 49407  # CLIP's start and end token ids


# --- what the gate evaluates ----------------------------------------------------------------------


def test_builtin_captions_are_real_varied_and_never_the_users():
    captions = calib.evaluation_captions()
    assert len(captions) >= 50 and len(set(captions)) == len(captions)
    lengths = (clip_tokenizer()(captions) != 0).sum(1)
    assert lengths.min() <= 3 and lengths.max() >= 30  # a one-word query to a long sentence
    assert len(set(lengths.tolist())) >= 15
    # a built-in caption that is also one of the user's calibration captions is not evaluated on
    kept = calib.evaluation_captions(exclude=["  A photo of a DOG. ", "not a built-in caption"])
    assert kept == [c for c in captions if c != "a photo of a dog."]


@pytest.mark.parametrize("tokenizer", [clip_tokenizer(), None], ids=["tokenizer", "no-tokenizer"])
def test_synthetic_calibration_tokens_are_caption_shaped(tokenizer):
    """Start, words, end, zero padding, of varied lengths up to the whole context (static ranges must
    cover every position a caption reaches): never full-context random ids."""
    rows = calib.synthetic_tokens(
        Geometry(32, 32, 77, 49408), 32, torch.Generator().manual_seed(0), tokenizer
    )
    lengths = (rows != 0).sum(1)
    end = rows.argmax(1)  # CLIP pools the embedding at the highest id: the end token
    assert rows.shape == (32, 77) and (rows[:, 0] == SOT).all()
    assert (rows[torch.arange(32), end] == EOT).all() and (end == lengths - 1).all()  # zeros after it
    assert 3 <= lengths.min() and lengths.max() == 77 and len(set(lengths.tolist())) > 8


def test_calibration_set_evaluates_the_text_tower_on_the_builtin_captions(tmp_path):
    geo = Geometry(32, 32, 77, 49408)
    captions = tmp_path / "mine.txt"
    captions.write_text("a photo of a cat.\nmy own query\nanother one\nand a fourth\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="UNMEASURED"):  # the images are synthetic
        data = calib.load_calibration(geo, captions=captions, tokenizer=clip_tokenizer())
    sets = data.evaluation("text")
    assert list(sets) == ["calibration", "held_out", "captions"]
    assert len(sets["calibration"]) == 3 and len(sets["held_out"]) == 1
    assert len(sets["captions"]) == len(calib.evaluation_captions()) - 1  # the user's "a photo of a cat."
    assert list(data.evaluation("image")) == ["calibration", "held_out"]
    assert data.source["evaluation_captions"]["count"] == len(sets["captions"])


def test_the_gate_is_the_minimum_over_every_set_and_names_the_worst():
    report = {
        "calibration": {"count": 6, "mean": 0.999, "min": 0.998},
        "held_out": {"count": 2, "mean": 0.999, "min": 0.999},
        "captions": {"count": 50, "mean": 0.998, "min": 0.97},
    }
    calib.check_fidelity("x.text.pte", report, 0.96)
    calib.check_fidelity("x.text.pte", report, None)
    message = (
        r"x\.text\.pte: int8 embeddings reach a minimum cosine of 0\.9700 to fp32 on the built-in "
        r"evaluation captions \(mobileclip2/data/captions\.txt\) \(50 inputs, mean 0\.9980\), below the "
        r"threshold 0\.995 \(--min-cosine"
    )
    with pytest.raises(ExportParityError, match=message):
        calib.check_fidelity("x.text.pte", report, 0.995)
    with pytest.raises(ExportParityError, match="minimum cosine of nan .* held-out set"):
        calib.check_fidelity("x", {**report, "held_out": {"count": 2, "mean": np.nan, "min": np.nan}}, 0.5)


# --- the failure the gate exists for, and the recipe that fixes it ---------------------------------


def _static_int8(module, example, rows):
    """Static int8 of every op the XNNPACK quantizer takes, calibrated on ``rows``: the ExecuTorch
    recipe the benchmark exported with (both towers) before the text tower went dynamic."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mobileclip2.compat.export import mha_fastpath_disabled

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), mha_fastpath_disabled():
        observed = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
        for row in rows.split(1):
            observed(row)
        return convert_pt2e(observed)


def _report(quantized, module, sets):
    return {
        name: calib.cosine_summary(embed(quantized, rows, 1).numpy(), embed(module, rows).numpy())
        for name, rows in sets.items()
    }


def test_the_gate_catches_int8_calibrated_on_random_token_ids_and_the_executorch_recipe_passes():
    """Simulated int8 (the quantized graph run in PyTorch; lowered programs: test_export_mobile.py)."""
    pytest.importorskip("executorch")
    from mobileclip2.export import executorch as et

    model = prepared(small_text_clip())
    module, geo = tower_module(model, "text"), geometry(model, TINY_PREPROCESS)
    example = geo.example("text")
    random_ids = geo.random("text", 8, torch.Generator().manual_seed(0))  # the old synthetic calibration
    held = calib.held_out_mask(len(random_ids))
    captions = clip_tokenizer()(calib.evaluation_captions())

    old = _report(
        _static_int8(module, example, random_ids[~held]),
        module,
        {"held_out": random_ids[held], "captions": captions},
    )
    assert old["held_out"]["mean"] >= DEFAULT_MIN_COSINE  # what the old gate checked: passed
    with pytest.raises(
        ExportParityError, match=r"minimum cosine of 0\.[0-9]+ .* built-in evaluation captions"
    ):
        calib.check_fidelity("text", old, DEFAULT_MIN_COSINE)
    assert old["captions"]["min"] < 0.95

    # the shipped text recipe (dynamic int8 linears; it needs no calibration rows); the caption-shaped
    # synthetic calibration rescues static recipes too: test_onnx_int8_with_synthetic_calibration_...
    fixed = _report(et.quantized(module, example, "text", []), module, {"captions": captions})
    calib.check_fidelity("text", fixed, DEFAULT_MIN_COSINE)
    assert fixed["captions"]["count"] == len(calib.evaluation_captions())


def _export_small(out, **options):
    return export_loaded(
        small_text_clip(),
        out,
        name="small",
        preprocess_cfg=TINY_PREPROCESS,
        tokenizer=clip_tokenizer(),
        **options,
    )


def test_onnx_int8_calibrated_on_random_token_ids_fails_the_export(tmp_path, monkeypatch):
    """Through the whole pipeline with the shipped thresholds: the failure is not ExecuTorch's alone."""
    monkeypatch.setattr(
        calib,
        "synthetic_tokens",
        lambda geo, count, generator, tokenizer=None: geo.random("text", 8, generator),
    )
    out = tmp_path / "out"
    with pytest.raises(
        ExportParityError, match=r"small\.int8\.text\.onnx: .* built-in evaluation captions"
    ) as failed:
        with pytest.warns(UserWarning, match="UNMEASURED"):
            _export_small(out, int8=True)
    assert "held-out" not in str(failed.value)
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_onnx_int8_with_synthetic_calibration_passes_the_shipped_gate(tmp_path):
    with pytest.warns(UserWarning, match="UNMEASURED"):
        result = _export_small(tmp_path, int8=True)
    config = json.loads(open(result.config_path, encoding="utf-8").read())
    fidelity = config["fidelity"]
    assert fidelity["min_cosine"] == DEFAULT_MIN_COSINE and "minimum" in fidelity["gate"]
    assert set(fidelity["text"]) == {"calibration", "held_out", "captions"}
    assert (
        fidelity["text"]["captions"]["count"] == len(calib.evaluation_captions())
        and fidelity["text"]["calibration"]["count"] == 24
    )
    for tower in ("image", "text"):
        assert min(s["min"] for s in fidelity[tower].values() if s) >= DEFAULT_MIN_COSINE
        assert config[tower]["precision"] == "int8" and "QDQ" in config[tower]["int8"]["quantizer"]
    assert config["calibration"]["synthetic_captions"]["tokenized"] is True
    assert config["calibration"]["evaluation_captions"]["count"] == len(calib.evaluation_captions())


def test_int8_needs_the_tokenizer(tmp_path):
    with pytest.raises(ValueError, match=r"int8 export needs the model's tokenizer .*built-in captions"):
        export_loaded(small_text_clip(), tmp_path, name="small", preprocess_cfg=TINY_PREPROCESS, int8=True)


# --- Core ML precision: the fp16 check and the choice ---------------------------------------------


def _overflowing_clip(scale: float) -> torch.nn.Module:
    """tiny_clip with its token embedding scaled: the residual stream grows by ``scale``."""
    model = tiny_clip()
    model.token_embedding.weight.data *= scale
    return model


def _text(model):
    return tower_module(prepared(model), "text")


def test_fp16_check_measures_the_peak_activation_and_the_cosine():
    tokens = tiny_tokenizer(calib.evaluation_captions())
    check = precision.fp16_check(_text(tiny_clip()), tokens)
    assert (
        check["inputs"] == len(calib.evaluation_captions())
        and check["finite"]
        and 0 < check["max_abs_activation"] < 100
    )
    assert check["cosine_min"] > 0.999 and check["layernorm_at"] and check["layernorm_max_sum_of_squares"] > 0
    assert precision.fp16_safe(check)[0]
    big = precision.fp16_check(_text(_overflowing_clip(1e5)), tokens)
    assert big["max_abs_activation"] > precision.FP16_ACTIVATION_BOUND and big["at"]
    assert big["finite"]  # under fp16's 65504, but over the headroom bound
    inf = precision.fp16_check(_text(_overflowing_clip(1e7)), tokens)
    safe, why = precision.fp16_safe(inf)
    assert not inf["finite"] and not safe and "inf/NaN" in why


def test_the_text_tower_that_overflows_fp16_gets_fp32():
    tokens = tiny_tokenizer(calib.evaluation_captions())
    assert precision.choose("t", "text", "auto", _text(tiny_clip()), tokens)[0] == "fp16"
    chosen, check = precision.choose("t", "text", "auto", _text(_overflowing_clip(1e5)), tokens)
    assert chosen == "fp32" and check["safe"] is False and "not below 1023.5" in check["why"]
    with pytest.warns(
        UserWarning, match="--precision fp16 was asked for, but the text tower is not fp16-safe"
    ):
        chosen, check = precision.choose("t", "text", "fp16", _text(_overflowing_clip(1e5)), tokens)
    assert chosen == "fp16" and check["safe"] is False  # asked for: it wins, and the check is recorded
    image = tower_module(prepared(tiny_clip()), "image")
    assert precision.choose("t", "image", "auto", image, None) == ("fp16", None)
    assert precision.choose("t", "text", "fp32", _text(tiny_clip()), None) == ("fp32", None)
    with pytest.raises(ValueError, match=r"t: the fp16 check .* needs the model's tokenizer"):
        precision.choose("t", "text", "auto", _text(tiny_clip()), None)
    with pytest.raises(ValueError, match="expected one of auto, fp16, fp32"):
        precision.choose("t", "text", "bf16", _text(tiny_clip()), tokens)


class _NoHalfOnCpu(torch.nn.Module):
    """A tower with an op PyTorch cannot run in fp16 on the CPU (as some kernels are)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype == torch.float16:
            raise RuntimeError("\"some_kernel\" not implemented for 'Half'")
        return tokens.float()[:, :4] * self.weight


def test_a_tower_the_fp16_check_cannot_run_is_an_error_unless_fp16_was_asked_for():
    tokens = tiny_tokenizer(["a dog", "a cat"])
    with pytest.raises(
        RuntimeError, match=r"t: the fp16 check could not run .* export with --precision fp32"
    ):
        precision.choose("t", "text", "auto", _NoHalfOnCpu(), tokens)
    with pytest.warns(UserWarning, match="--precision fp16: the fp16 check could not run .* unchecked"):
        chosen, check = precision.choose("t", "text", "fp16", _NoHalfOnCpu(), tokens)
    assert chosen == "fp16" and check["ran"] is False and "not implemented for 'Half'" in check["why"]


def test_coreml_export_writes_fp32_for_the_tower_that_overflows_fp16(tmp_path):
    pytest.importorskip("coremltools")

    def export(model, out, **options):
        return export_loaded(
            model,
            out,
            name="tiny",
            preprocess_cfg=TINY_PREPROCESS,
            tokenizer=tiny_tokenizer,
            format="coreml",
            **options,
        )

    config = export(_overflowing_clip(1e5), tmp_path / "auto").config
    assert config["compute_precision"] == "auto" and config["precision"] == "mixed"
    assert config["image"]["precision"] == "fp16" and config["image"]["structure"]["weights"] == "float16"
    assert config["text"]["precision"] == "fp32" and config["text"]["structure"]["weights"] == "float32"
    assert config["text"]["fp16_check"]["safe"] is False and "fp16_check" not in config["image"]
    config = export(tiny_clip(), tmp_path / "fp32", compute_precision="fp32").config
    assert config["precision"] == "fp32" and "fp16_check" not in config["text"]
    assert {config[t]["structure"]["weights"] for t in ("image", "text")} == {"float32"}
