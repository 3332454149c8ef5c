"""ExecuTorch (fp32, int8), ONNX int8 and Core ML exports of MobileCLIP2-S0 and MobileCLIP-S0 (MCt).

ONNX int8 and Core ML go through the whole export pipeline for both models; ExecuTorch for MobileCLIP2-S0
only (MobileCLIP-S0's image tower is the same MCi0), plus MobileCLIP-S0's MCt text tower lowered on its
own. Each test makes its own export. fp32 programs are compared with the
*unfused* reference model run in PyTorch; int8 exports are calibrated on a tiny labelled image set
and four captions. Random-weight models have unrepresentative activations, so these tests prove the
pipeline and lower the int8 threshold (INT8_MIN_COSINE, not the shipped 0.995 default); fidelity
must be measured with real weights and images (docs/deployment.md). The exception is the failure the
int8 gate exists for (static int8 text calibrated on random token ids), reproduced on MobileCLIP2-S0's
text tower against the shipped threshold in test_executorch_int8_text_recipe_and_gate_on_real_captions.
"""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from export_support import write_calibration_set
from model_support import inputs, reference_model

from mobileclip2.export.calibration import evaluation_captions
from mobileclip2.export.pipeline import export_loaded

# Minutes-long ExecuTorch lowering of the real towers; tiny ones: test_export.py.
pytestmark = pytest.mark.slow

MODELS = ["MobileCLIP2-S0", "MobileCLIP-S0"]
# Each test makes its own export (minutes each; shared fixtures are cheap): under xdist each test is
# its own scheduling unit (tests/conftest.py PER_TEST_FILES).
TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.5  # random weights, 3 calibration images: see the module docstring


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration_set(tmp_path_factory.mktemp("calibration"), per_class=2)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return request.param, reference_model(request.param)


def _export(name, reference, out, **options):
    return export_loaded(
        reference,
        out,
        name=name,
        preprocess_cfg=reference.visual.preprocess_cfg,
        tokenizer=open_clip.get_tokenizer(name),
        **options,
    )


def test_exported_towers_hold_no_batchnorm(model):
    """Every artifact is made from ``prepared(model)``: with its BatchNorms folded, torchao's
    ``convert_pt2e`` skips the conv-BN QAT folding pass that otherwise costs over a minute per int8
    image tower, and the programs carry fewer ops. Numerics: the fp32 parity tests here."""
    from mobileclip2.export.towers import prepared

    name, reference = model
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in reference.modules())
    left = [
        n
        for n, m in prepared(reference).named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    assert left == [], (name, left)


# ExecuTorch through the whole pipeline for MobileCLIP2-S0 only: MobileCLIP-S0's image tower is the same
# MCi0 (an ExecuTorch image export takes minutes on CPU); its MCt text tower is lowered on its own in
# test_executorch_lowers_mct_text_in_fp32_and_int8.
PIPELINE_ET_MODEL = "MobileCLIP2-S0"


@pytest.fixture(scope="module")
def pipeline_et_model():
    return PIPELINE_ET_MODEL, reference_model(PIPELINE_ET_MODEL)


def test_executorch_fp32_matches_the_unfused_model_in_the_executorch_runtime(
    pipeline_et_model, tmp_path_factory
):
    pytest.importorskip("executorch.runtime")
    from mobileclip2.export import executorch as et

    name, reference = pipeline_et_model
    result = _export(name, reference, tmp_path_factory.mktemp("et"), format="executorch")
    image, text = inputs(reference, batch=2)
    with torch.no_grad():
        want = {"image": reference.encode_image(image).numpy(), "text": reference.encode_text(text).numpy()}
    for tower, batch in (("image", image), ("text", text)):
        run = et.load(getattr(result, tower).path)
        got = np.concatenate([run(row.numpy()) for row in batch.split(1)])
        assert np.abs(got - want[tower]).max() < TOLERANCE, (name, tower)
    config = result.config
    assert config["format"] == "executorch" and config["precision"] == "fp32"
    assert config["image"]["input_shape"] == [1, 3, 256, 256] and config["text"]["input_dtype"] == "int64"
    assert config["parity"]["image_max_abs_diff"] < TOLERANCE and config["image"]["size_bytes"] > 10**6


def test_onnx_int8_is_calibrated_and_reports_fidelity(model, calibration, tmp_path_factory):
    _check_int8(*model, "onnx", calibration, tmp_path_factory)


def test_executorch_int8_is_calibrated_and_reports_fidelity(pipeline_et_model, calibration, tmp_path_factory):
    pytest.importorskip("executorch.runtime")
    _check_int8(*pipeline_et_model, "executorch", calibration, tmp_path_factory)


def _check_int8(name, reference, format, calibration, tmp_path_factory):
    images, captions = calibration
    result = _export(
        name,
        reference,
        tmp_path_factory.mktemp(f"{format}-int8"),
        format=format,
        int8=True,
        calibration_images=images,
        calibration_captions=captions,
        min_cosine=INT8_MIN_COSINE,
    )
    config = result.config
    assert config["precision"] == "int8" and config["calibration"]["images"]["count"] == 4
    fidelity = config["fidelity"]
    assert fidelity["synthetic_inputs"] == [] and fidelity["min_cosine"] == INT8_MIN_COSINE
    assert set(fidelity["image"]) == {"calibration", "held_out"}
    assert set(fidelity["text"]) == {"calibration", "held_out", "captions"}
    for tower in ("image", "text"):
        for split, summary in fidelity[tower].items():
            assert INT8_MIN_COSINE <= summary["min"] <= summary["mean"] <= 1.0 + 1e-6, (tower, split)
        assert config[tower]["precision"] == "int8" and config[tower]["int8"]["weights"].startswith("int8")
    assert fidelity["image"]["held_out"]["count"] == 1 and fidelity["text"]["held_out"]["count"] == 1
    assert fidelity["text"]["captions"]["count"] == len(
        evaluation_captions()
    )  # the built-in evaluation captions
    if format == "executorch":  # the recipe per tower (mobileclip2.export.executorch.INT8_RECIPES)
        assert "dynamic" in config["text"]["int8"]["activations"]
        assert config["image"]["int8"]["quantized_ops"] == ["linear", "conv2d"]
    agreement = fidelity["zero_shot_top1_agreement"]
    assert agreement["labels"] == 2 and agreement["images"] == 4
    assert all(0.0 <= agreement[k] <= 1.0 for k in ("int8_image_tower", "int8_text_tower", "int8_both"))
    # int8 weights: the image artifact is well under half of its fp32 size (4 bytes -> 1 per weight)
    fp32_params = sum(p.numel() for p in reference.visual.parameters())
    assert result.image.size_bytes < 0.5 * 4 * fp32_params


def test_coreml_structure(model, tmp_path_factory):
    pytest.importorskip("coremltools")
    name, reference = model
    result = _export(name, reference, tmp_path_factory.mktemp("coreml"), format="coreml")
    config = result.config
    assert config["precision"] == "fp16" and config["parity"]["checked"] is False
    check = config["text"]["fp16_check"]  # random weights: small activations, fp16 chosen
    assert check["safe"] and check["max_abs_activation"] < 100 and check["cosine_min"] > 0.9999
    assert config["text"]["input_dtype"] == "int32" and config["text"]["input_shape"] == [1, 77]
    for tower in ("image", "text"):
        assert config[tower]["structure"]["weights"] == "float16"
    assert "conv" in config["image"]["structure"]["op_types"]
    assert "reduce_argmax" in config["text"]["structure"]["op_types"]  # EOT pooling inside the graph


def test_executorch_lowers_mct_text_in_fp32_and_int8(calibration, tmp_path):
    """MobileCLIP-S0's MCt text tower (RepMixer + transformer blocks over tokens) as ExecuTorch programs:
    fp32 equal to the unfused model, int8 calibrated on real captions and close to it in cosine."""
    pytest.importorskip("executorch.runtime")
    from mobileclip2.export import executorch as et
    from mobileclip2.export.parity import cosines, run_batched
    from mobileclip2.export.towers import geometry, prepared, tower_module

    name = "MobileCLIP-S0"
    reference = reference_model(name)
    text_tower = tower_module(prepared(reference), "text")
    example = geometry(reference, reference.visual.preprocess_cfg).example("text")
    captions = open_clip.get_tokenizer(name)(calibration[1].read_text(encoding="utf-8").splitlines())
    _, random_tokens = inputs(reference, batch=2)
    tokens = torch.cat([captions, random_tokens])
    with torch.no_grad():
        want = reference.encode_text(tokens).numpy()

    programs = {"fp32": tmp_path / "text.pte", "int8": tmp_path / "text-int8.pte"}
    et.write(text_tower, example, programs["fp32"], "text")
    et.write_int8(text_tower, example, programs["int8"], "text", [captions[:3]])  # the 4th is held out
    got = {precision: run_batched(et.load(path), tokens.numpy(), 1) for precision, path in programs.items()}
    assert np.abs(got["fp32"] - want).max() < TOLERANCE
    cosine = cosines(got["int8"], want)
    assert cosine.min() >= INT8_MIN_COSINE, cosine
    assert not np.allclose(got["int8"], got["fp32"], atol=TOLERANCE)  # int8 arithmetic, not the fp32 graph
    # int8 weights (1 byte) except the token embedding table, which stays fp32 (module docs of
    # export.executorch): under 2 bytes per other weight leaves room for scales and the program itself
    parameters = sum(p.numel() for p in reference.text.parameters())
    embedding = sum(m.weight.numel() for m in reference.text.modules() if isinstance(m, torch.nn.Embedding))
    assert programs["int8"].stat().st_size < 4 * embedding + 2 * (parameters - embedding)


def test_executorch_int8_text_recipe_and_gate_on_real_captions(tmp_path):
    """What the on-device benchmark saw, and what now catches it, on MobileCLIP2-S0's text tower with
    the benchmark's weights (lowered programs in ``executorch.runtime``, the shipped threshold): static
    int8 of every op,
    calibrated on six full-context random-id rows (the benchmark's old synthetic calibration), passes a
    mean-cosine check on held-out random ids but misses the benchmark's caption and fails the gate on
    the built-in captions; the shipped recipe with the shipped synthetic calibration passes."""
    pytest.importorskip("executorch.runtime")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mobileclip2 import benchmarking
    from mobileclip2.compat.export import mha_fastpath_disabled
    from mobileclip2.errors import ExportParityError
    from mobileclip2.export import calibration as calib
    from mobileclip2.export import executorch as et
    from mobileclip2.export.formats import DEFAULT_MIN_COSINE
    from mobileclip2.export.parity import run_batched
    from mobileclip2.export.towers import embed, geometry, prepared, tower_module

    name = "MobileCLIP2-S0"
    reference = benchmarking.seeded_model(name)  # benchmarks/ondevice.py's weights
    module = tower_module(prepared(reference), "text")
    geo = geometry(reference, reference.visual.preprocess_cfg)
    example = geo.example("text")
    tokenizer = open_clip.get_tokenizer(name)
    generator = torch.Generator().manual_seed(0)  # the old synthetic set: 8 noise images, then 8 id rows
    geo.random("image", 8, generator)
    random_ids = geo.random("text", 8, generator)
    held = calib.held_out_mask(len(random_ids))
    sets = {
        "held_out": random_ids[held],
        "captions": tokenizer(calib.evaluation_captions()),
        "benchmark": benchmarking.tower_inputs(reference, batch=1)["text"],
    }

    def report(path):
        run = et.load(path)
        return {
            k: calib.cosine_summary(run_batched(run, v.numpy(), 1), embed(module, v).numpy())
            for k, v in sets.items()
        }

    old_program = tmp_path / "old.pte"
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), mha_fastpath_disabled():
        observed = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
        for row in random_ids[~held].split(1):
            observed(row)
        et._lower(torch.export.export(convert_pt2e(observed), (example,)), old_program)
    old = report(old_program)
    assert old["held_out"]["mean"] >= DEFAULT_MIN_COSINE, old  # the old gate: passed
    assert old["benchmark"]["min"] < 0.95, old  # the benchmark reported 0.885 against upstream eager
    with pytest.raises(ExportParityError, match="built-in evaluation captions"):
        calib.check_fidelity(
            name, {"held_out": old["held_out"], "captions": old["captions"]}, DEFAULT_MIN_COSINE
        )

    with pytest.warns(UserWarning, match="UNMEASURED"):
        data = calib.load_calibration(geo, tokenizer=tokenizer)
    rows, _ = data.split("text")
    new_program = tmp_path / "new.pte"
    assert "dynamic" in et.write_int8(module, example, new_program, "text", [rows])["activations"]
    new = report(new_program)
    calib.check_fidelity(name, {"held_out": new["held_out"], "captions": new["captions"]}, DEFAULT_MIN_COSINE)
    assert new["benchmark"]["min"] >= 0.99, new
