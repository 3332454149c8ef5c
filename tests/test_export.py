"""ONNX export: one graph per tower, dynamic batch, JSON sidecar, onnxruntime parity < 1e-4."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import open_clip
import pytest
import torch
from model_support import inputs, reference_model

from mobileclip2 import cli
from mobileclip2.commands import export as export_command
from mobileclip2.exporting import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    FORMATS,
    ExportParityError,
    check_onnx_parity,
    export,
    export_model,
    text_encoder,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["MobileCLIP-S0", "MobileCLIP2-S0"])
def exported(request, tmp_path_factory):
    name = request.param
    reference = reference_model(name)  # randomized BatchNorm stats + layer scales: fusions matter
    out = tmp_path_factory.mktemp(name)
    result = export_model(
        reference,
        out,
        name=name,
        preprocess_cfg=reference.visual.preprocess_cfg,
        tokenizer=open_clip.get_tokenizer(name),
    )
    return name, reference, result


def _run(path: str, array: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def test_towers_match_the_unfused_model_in_onnxruntime(exported):
    """Against the original (unfused, eager) model, at a batch size other than the traced one."""
    name, reference, result = exported
    image, text = inputs(reference, batch=5)
    with torch.no_grad():
        want_image = reference.encode_image(image).numpy()
        want_text = reference.encode_text(text).numpy()
    got_image = _run(result.image.path, image.numpy())
    got_text = _run(result.text.path, text.numpy())
    assert got_image.shape == want_image.shape == (5, 512)
    assert np.abs(got_image - want_image).max() < TOLERANCE, name
    assert np.abs(got_text - want_text).max() < TOLERANCE, name
    assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE


def test_export_does_not_leave_the_model_in_training_mode(exported):
    _, reference, _ = exported
    assert not any(module.training for module in reference.modules())


def test_graphs_have_a_dynamic_batch_axis_and_named_io(exported):
    _, _, result = exported
    for tower, input_name, rank in ((result.image, "image", 4), (result.text, "text", 2)):
        graph = onnx.load(tower.path, load_external_data=False).graph
        (graph_input,) = graph.input
        dims = graph_input.type.tensor_type.shape.dim
        assert graph_input.name == input_name and len(dims) == rank
        assert dims[0].dim_param == "batch"
        assert graph.output[0].name == tower.output_name


def test_sidecar_json(exported):
    name, reference, result = exported
    config = json.loads(open(result.config_path, encoding="utf-8").read())
    assert config["model"] == name and config["embed_dim"] == 512 and config["opset"] == DEFAULT_OPSET
    assert config["image"]["file"] == f"{name}.image.onnx" and config["text"]["file"] == f"{name}.text.onnx"
    assert config["image"]["input_shape"] == ["batch", 3, 256, 256]
    assert config["text"]["input_shape"] == ["batch", 77] and config["text"]["input_dtype"] == "int64"
    preprocess = config["preprocess"]
    assert preprocess["size"] == [256, 256]
    assert preprocess["mean"] == list(reference.visual.preprocess_cfg["mean"])
    assert preprocess["interpolation"] and preprocess["resize_mode"]
    assert config["tokenizer"]["context_length"] == 77 and config["tokenizer"]["eot_token_id"] == 49407
    assert config["normalized_embeddings"] is False
    assert config["logit_scale"] == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert config["parity"]["text_max_abs_diff"] < TOLERANCE


def test_parity_check_raises_above_tolerance(exported, tmp_path):
    _, reference, result = exported
    _, text = inputs(reference, batch=2)
    with pytest.raises(ExportParityError, match="differ by up to"):
        check_onnx_parity(result.text.path, text_encoder(reference), text, tolerance=1e-12)


def test_export_by_name_with_local_file_and_cli(tmp_path, capsys):
    """`mobileclip2 export NAME --pretrained FILE`: the file's weights, the model's own preprocessing."""
    from mobileclip2.convert import save_safetensors

    torch.manual_seed(3)
    checkpoint = tmp_path / "mine.safetensors"
    save_safetensors(open_clip.create_model("MobileCLIP2-S0").state_dict(), checkpoint)
    out = tmp_path / "out"
    code = cli.main(
        ["export", "MobileCLIP2-S0", "--pretrained", str(checkpoint), "--format", "onnx", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "MobileCLIP2-S0.image.onnx" in printed and "max abs diff vs PyTorch" in printed
    config = json.loads((out / "MobileCLIP2-S0.json").read_text())
    assert config["pretrained"] == "mine.safetensors"
    # A local file gets the tag's preprocessing (MobileCLIP2-S0 'dfndr2b': mean 0, std 1, bilinear),
    # not open_clip's OpenAI defaults.
    assert (
        config["preprocess"]["mean"] == [0.0, 0.0, 0.0]
        and config["preprocess"]["interpolation"] == "bilinear"
    )
    model = open_clip.create_model("MobileCLIP2-S0", pretrained=str(checkpoint)).eval()
    _, text = inputs(model, batch=2)
    with torch.no_grad():
        want = model.encode_text(text).numpy()
    assert np.abs(_run(str(out / "MobileCLIP2-S0.text.onnx"), text.numpy()) - want).max() < TOLERANCE


def test_bad_requests_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unsupported export format 'coreml'; supported: onnx"):
        export("MobileCLIP2-S0", tmp_path, format="coreml")
    assert cli.main(["export", "MobileCLIP2-SO", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Unknown model name 'MobileCLIP2-SO'. Did you mean:" in err and "MobileCLIP2-S0" in err
    assert cli.main(["export", "MobileCLIP2-S0", "--pretrained", "nope", "--out", str(tmp_path)]) == 1
    assert "Valid tags for 'MobileCLIP2-S0': 'dfndr2b'" in capsys.readouterr().err


def test_cli_defaults_match_the_module():
    assert export_command.FORMATS == FORMATS
    assert export_command.DEFAULT_OPSET == DEFAULT_OPSET
    assert export_command.DEFAULT_TOLERANCE == DEFAULT_TOLERANCE


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="dynamo exporter needs onnxscript")
def test_dynamo_exporter_when_available(tmp_path):
    reference = reference_model("MobileCLIP-S0")
    result = export_model(
        reference, tmp_path, name="s0", preprocess_cfg=reference.visual.preprocess_cfg, dynamo=True
    )
    assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE
