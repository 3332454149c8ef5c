"""`mobileclip2 export --format openvino` (IR per tower, fp32 and NNCF int8) and the int8 recipe of the ONNX
export (weighted layers only, the text projection in float): the tiny model in the default tier, the S0
towers in the slow tier."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import open_clip
import pytest
import torch
from export_support import TINY_PREPROCESS, tiny_clip, tiny_tokenizer, write_calibration_set
from model_support import inputs, reference_model

from mobileclip2.errors import ExporterUnavailableError, ExportParityError
from mobileclip2.export.formats import FORMATS
from mobileclip2.export.pipeline import export_loaded, export_model

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="needs mobileclip2[openvino]",
)


def _tiny_export(out, **options):
    return export_loaded(
        tiny_clip(), out, name="tiny", preprocess_cfg=TINY_PREPROCESS, tokenizer=tiny_tokenizer, **options
    )


@needs_openvino
def test_openvino_fp32_export_runs_in_openvino_with_fp32_weights(tmp_path):
    from mobileclip2.export import openvino

    result = _tiny_export(tmp_path, format="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny.image.bin",
        "tiny.image.xml",
        "tiny.openvino.json",
        "tiny.text.bin",
        "tiny.text.xml",
    ]
    config = json.loads((tmp_path / "tiny.openvino.json").read_text())
    assert (
        config["runtime_options"]
        == {"INFERENCE_PRECISION_HINT": "f32"}
        == dict(FORMATS["openvino"].runtime_options)
    )
    assert (
        config["image"]["companion_files"] == ["tiny.image.bin"]
        and config["image"]["input_shape"][0] == "batch"
    )
    assert {"openvino", "nncf", "onnx"} <= set(config["versions"])
    assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE
    model = tiny_clip()
    image, text = torch.randn(5, 3, 32, 32), tiny_tokenizer(["a", "bb", "a cat", "snow", "dogs"])
    with torch.no_grad():
        want = {"image": model.encode_image(image).numpy(), "text": model.encode_text(text).numpy()}
    for tower, x in (("image", image), ("text", text)):
        got = openvino.load(tmp_path / f"tiny.{tower}.xml")(x.numpy())
        assert np.abs(got - want[tower]).max() < TOLERANCE, tower
    # weights stored in fp32 (ov.save_model's default would halve them to fp16)
    parameters = sum(p.numel() for p in model.visual.parameters())
    assert (tmp_path / "tiny.image.bin").stat().st_size >= 4 * parameters * 0.95
    assert result.image.size_bytes == sum(
        (tmp_path / f).stat().st_size for f in ("tiny.image.xml", "tiny.image.bin")
    )


@needs_openvino
def test_openvino_int8_export_reports_fidelity_and_gates_on_it(tmp_path):
    images, captions = write_calibration_set(tmp_path)
    options = dict(format="openvino", int8=True, calibration_images=images, calibration_captions=captions)
    with pytest.raises(ExportParityError, match="minimum cosine of .* below the threshold 1.01"):
        _tiny_export(tmp_path / "out", min_cosine=1.01, **options)
    assert list((tmp_path / "out").iterdir()) == []
    # the gate also covers the built-in captions, where the tiny random model's minimum is far lower
    result = _tiny_export(tmp_path / "out", min_cosine=0.5, min_agreement=None, **options)
    config = result.config
    assert config["precision"] == "int8" and config["image"]["file"] == "tiny.int8.image.xml"
    for tower in ("image", "text"):
        assert 0.9 <= config["fidelity"][tower]["calibration"]["mean"] <= 1 + 1e-6
    assert config["fidelity"]["zero_shot_top1_agreement"]["images"] == 6


def test_a_missing_openvino_names_the_extra(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real_find_spec(name, *a)
    )
    with pytest.raises(ExporterUnavailableError, match=r"needs nncf.*pip install 'mobileclip2\[openvino\]'"):
        export_model("MobileCLIP2-S0", tmp_path, format="openvino", int8=True)


def _int8_inputs(path) -> dict[str, set[int]]:
    """node name -> positions of its inputs that are weights stored in int8 (DequantizeLinear of an
    initializer), and each node's op type under the key ``"<name>:op"``."""
    import onnx

    graph = onnx.load(str(path)).graph
    stored = {t.name for t in graph.initializer}
    weights = {
        out
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in stored
        for out in node.output
    }
    return {
        node.name: {i for i, name in enumerate(node.input) if name in weights}
        for node in graph.node
        if node.op_type != "DequantizeLinear"
    } | {f"{node.name}:op": node.op_type for node in graph.node}


def test_onnx_int8_quantizes_only_weighted_layers_and_keeps_the_text_projection_float(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    import onnx

    from mobileclip2.export.onnx import final_projection, write
    from mobileclip2.export.towers import prepared, tower_module

    images, captions = write_calibration_set(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = _tiny_export(
            tmp_path / "out",
            int8=True,
            calibration_images=images,
            calibration_captions=captions,
            min_cosine=0.9,
        )
    assert "out-of-range" not in caplog.text  # no quantized LayerNorm weights
    for tower in ("image", "text"):
        quantized = _int8_inputs(getattr(result, tower).path)
        ops = {name: quantized[f"{name}:op"] for name in quantized if not name.endswith(":op")}
        assert any(quantized[n] for n, op in ops.items() if op in ("Conv", "MatMul", "Gemm")), tower
        # LayerNorm scales (whose quantization made onnxruntime warn) and the token table stay float
        assert not any(1 in quantized[n] for n, op in ops.items() if op == "LayerNormalization"), tower
        assert not any(0 in quantized[n] for n, op in ops.items() if op == "Gather"), tower
    text_tower = tower_module(prepared(tiny_clip()), "text")  # what the export traced
    write(text_tower, torch.ones(1, 8, dtype=torch.long), tmp_path / "text.onnx", "text")
    projection = final_projection(tmp_path / "text.onnx")
    graph = onnx.load(result.text.path).graph
    assert [n.op_type for n in graph.node if n.name == projection] == ["MatMul"]  # there, in float
    assert not _int8_inputs(result.text.path)[projection]
    assert result.config["fidelity"]["text"]["calibration"]["mean"] >= 0.9


# --- the S0 towers (slow: converting and quantizing them takes minutes) ----------------------------


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "MobileCLIP-S0"])
def test_openvino_export_of_the_s0_towers(name, tmp_path):
    """fp32 IR equal to the unfused model in OpenVINO (with the sidecar's hint); int8 (NNCF) calibrated
    on a tiny labelled set, passing a lowered gate (random weights: see test_export_mobile.py)."""
    from mobileclip2.export import openvino

    reference = reference_model(name)
    options = dict(
        name=name, preprocess_cfg=reference.visual.preprocess_cfg, tokenizer=open_clip.get_tokenizer(name)
    )
    result = export_loaded(reference, tmp_path, format="openvino", **options)
    image, text = inputs(reference, batch=3)
    with torch.no_grad():
        want = {"image": reference.encode_image(image).numpy(), "text": reference.encode_text(text).numpy()}
    for tower, x in (("image", image), ("text", text)):
        assert np.abs(openvino.load(getattr(result, tower).path)(x.numpy()) - want[tower]).max() < TOLERANCE
    images, captions = write_calibration_set(tmp_path / "calibration", per_class=2)

    def int8_export():
        return export_loaded(
            reference,
            tmp_path,
            format="openvino",
            int8=True,
            calibration_images=images,
            calibration_captions=captions,
            min_cosine=0.9,
            min_agreement=None,  # random weights: two labels nearly tie, and a tie can flip either way
            **options,
        )

    if name == "MobileCLIP2-S0":
        # static ranges calibrated on short labels only: the built-in full-context captions fall out of them
        with pytest.raises(ExportParityError, match="lowest on a 77-token caption.*as long as the ones"):
            int8_export()
    with open(captions, "a", encoding="utf-8") as file:  # what the message asks for: captions as long
        file.write(" ".join(["a long description of a photo with many objects in it"] * 8) + "\n")
    int8 = int8_export()
    fidelity = int8.config["fidelity"]
    assert all(fidelity[t]["calibration"]["mean"] >= 0.9 for t in ("image", "text"))
    assert int8.text.size_bytes < 0.5 * result.text.size_bytes
