"""ONNX fp32 export of the S0 models (one graph per tower, dynamic batch, sidecar, onnxruntime parity
< 1e-4) and the export pipeline on a tiny model: staging and atomic move, failed checks, kill -9,
clear errors. ExecuTorch, int8 and Core ML: tests/test_export_mobile.py."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from export_support import TINY_PREPROCESS, tiny_clip, tiny_tokenizer, write_calibration_set
from model_support import inputs, reference_model

from mobileclip2 import cli
from mobileclip2.errors import ExporterUnavailableError, ExportParityError
from mobileclip2.export.calibration import evaluation_captions
from mobileclip2.export.formats import DEFAULT_OPSET
from mobileclip2.export.pipeline import export_loaded, export_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["MobileCLIP-S0", "MobileCLIP2-S0"])
def exported(request, tmp_path_factory):
    name = request.param
    reference = reference_model(name)  # randomized BatchNorm stats + layer scales: fusions matter
    out = tmp_path_factory.mktemp(name)
    result = export_loaded(
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
    assert config["format"] == "onnx" and config["precision"] == "fp32"
    assert result.config_path.endswith(f"{name}.onnx.json")
    for tower in ("image", "text"):
        assert config[tower]["size_bytes"] == os.path.getsize(getattr(result, tower).path) > 0
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
    config = json.loads((out / "MobileCLIP2-S0.onnx.json").read_text())
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


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="dynamo exporter needs onnxscript")
def test_dynamo_exporter_when_available(tmp_path):
    reference = reference_model("MobileCLIP-S0")
    result = export_loaded(
        reference, tmp_path, name="s0", preprocess_cfg=reference.visual.preprocess_cfg, dynamo=True
    )
    assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE


# --- the pipeline, on a tiny model: staging, atomic move, failures, kill -9 ---------------------


def _tiny_export(out, **options):
    return export_loaded(
        tiny_clip(), out, name="tiny", preprocess_cfg=TINY_PREPROCESS, tokenizer=tiny_tokenizer, **options
    )


def _listing(out):
    return sorted(p.name for p in out.iterdir())


def test_failed_check_leaves_the_previous_export_intact_and_no_stale_sidecar(tmp_path):
    out = tmp_path / "out"
    first = _tiny_export(out)
    before = {name: (out / name).read_bytes() for name in _listing(out)}
    assert sorted(before) == ["tiny.image.onnx", "tiny.onnx.json", "tiny.text.onnx"]
    with pytest.raises(ExportParityError, match="differ by up to"):
        _tiny_export(out, tolerance=0.0, normalize=True)  # any rounding difference now fails
    assert {name: (out / name).read_bytes() for name in _listing(out)} == before  # nothing staged is left
    assert json.loads((out / "tiny.onnx.json").read_text())["normalized_embeddings"] is False
    assert first.image.max_abs_diff < TOLERANCE


def test_failed_int8_fidelity_writes_nothing(tmp_path):
    out = tmp_path / "out"
    images, captions = write_calibration_set(tmp_path)
    with pytest.raises(ExportParityError, match="minimum cosine of .* below the threshold 1.01"):
        _tiny_export(
            out, int8=True, calibration_images=images, calibration_captions=captions, min_cosine=1.01
        )
    assert _listing(out) == []


def test_int8_without_calibration_data_warns_that_fidelity_is_unmeasured(tmp_path):
    with pytest.warns(UserWarning, match="fidelity on your data is UNMEASURED"):
        # no threshold: calibrated on noise and random tokens (the S0 models' int8 fidelity is tested in
        # test_export_mobile.py)
        result = _tiny_export(tmp_path, int8=True, min_cosine=None)
    config = result.config
    assert config["precision"] == "int8" and config["calibration"]["synthetic"] == ["image", "text"]
    assert config["fidelity"]["synthetic_inputs"] == ["image", "text"]
    assert "zero_shot_top1_agreement" not in config["fidelity"]  # no labels without real data
    assert config["fidelity"]["text"]["captions"]["count"] == len(
        evaluation_captions()
    )  # the built-in captions, evaluated anyway


_KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import export_support
from mobileclip2.export import pipeline

moved = []
real_replace = os.replace

def replace_then_die(src, dst):
    real_replace(src, dst)
    moved.append(dst)
    if len(moved) == 1:  # the worst moment: one new artifact in place, the rest still staged
        os.kill(os.getpid(), signal.SIGKILL)

pipeline.os.replace = replace_then_die
pipeline.export_loaded(export_support.tiny_clip(seed=1), {out!r}, name="tiny",
                       preprocess_cfg=export_support.TINY_PREPROCESS, tokenizer=export_support.tiny_tokenizer)
"""


def test_kill_9_mid_export_leaves_no_partial_file_or_stale_sidecar_and_a_rerun_redoes_cleanly(tmp_path):
    out = tmp_path / "out"
    _tiny_export(out)  # a previous, complete export
    script = _KILL_SCRIPT.format(tests=os.path.dirname(__file__), out=str(out))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = _listing(out)
    assert "tiny.onnx.json" not in names  # no sidecar describing a mix of old and new graphs
    staged = [n for n in names if n.startswith(".tiny.onnx.json.tmp-")]
    assert len(staged) == 1  # what the killed process left, under a hidden staging name
    for final in ("tiny.image.onnx", "tiny.text.onnx"):  # whatever sits under a final name is whole
        ort.InferenceSession(str(out / final), providers=["CPUExecutionProvider"])
    result = _tiny_export(out)
    assert _listing(out) == ["tiny.image.onnx", "tiny.onnx.json", "tiny.text.onnx"]
    assert result.text.max_abs_diff < TOLERANCE


def test_bad_requests_are_clear_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unsupported export format 'tflite'; supported: onnx, executorch"):
        export_model("MobileCLIP2-S0", tmp_path, format="tflite")
    with pytest.raises(ValueError, match="--int8 is supported for onnx, executorch, openvino, not 'coreml'"):
        _tiny_export(tmp_path, format="coreml", int8=True)
    with pytest.raises(ValueError, match="only used with --int8"):
        _tiny_export(tmp_path, calibration_captions="x.txt")
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        _tiny_export(tmp_path, int8=True, calibration_images=tmp_path)
    with pytest.raises(
        ValueError, match=r"compute_precision'\] do not apply to onnx \(it takes: opset, dynamo\)"
    ):
        _tiny_export(tmp_path, compute_precision="fp16")
    with pytest.raises(ValueError, match="compute precision 'fp8': expected one of auto, fp16, fp32"):
        _tiny_export(tmp_path, format="coreml", compute_precision="fp8")
    assert cli.main(["export", "MobileCLIP2-S0", "--precision", "fp16", "--out", str(tmp_path)]) == 1
    assert "--precision does not apply to --format onnx" in capsys.readouterr().err
    assert cli.main(["export", "MobileCLIP2-SO", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Unknown model name 'MobileCLIP2-SO'. Did you mean:" in err and "MobileCLIP2-S0" in err
    assert cli.main(["export", "MobileCLIP2-S0", "--pretrained", "nope", "--out", str(tmp_path)]) == 1
    assert "Valid tags for 'MobileCLIP2-S0': 'dfndr2b'" in capsys.readouterr().err


def test_a_missing_exporter_names_the_extra(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "executorch" else real_find_spec(name, *a),
    )
    with pytest.raises(ExporterUnavailableError, match=r"pip install 'mobileclip2\[mobile\]'"):
        export_model("MobileCLIP2-S0", tmp_path, format="executorch")
    assert cli.main(["export", "MobileCLIP2-S0", "--format", "executorch", "--out", str(tmp_path)]) == 1
    assert "needs executorch" in capsys.readouterr().err


def test_cli_help_and_package_constants_stay_torch_free():
    code = (
        "import sys; from mobileclip2.commands import export; import mobileclip2.export.formats as e; "
        "assert tuple(e.FORMATS) == ('onnx', 'executorch', 'coreml', 'litert', 'openvino'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MOBILECLIP2_AUTOLOAD": "0"})


def test_public_api_shape():
    import mobileclip2

    assert mobileclip2.export_model is export_model and "export_model" in dir(mobileclip2)


@pytest.mark.skipif(
    importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="LiteRT has its own extra, mobileclip2[litert], which the test environment does not install",
)
def test_litert_export_runs_in_the_litert_interpreter(tmp_path):
    result = _tiny_export(tmp_path, format="litert")
    assert result.text.input_dtype == "int32" and result.image.input_shape == [1, 3, 32, 32]
    assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE
    assert _listing(tmp_path) == ["tiny.image.tflite", "tiny.litert.json", "tiny.text.tflite"]


def test_every_image_size_reader_agrees_with_the_catalog_helper():
    """Export geometry, optimize's example inputs and the catalog read image sizes in one place;
    an explicit preprocess size (what the export was asked for) wins over the model's own."""
    from mobileclip2.export.towers import geometry
    from mobileclip2.inference.onednn import example_inputs
    from mobileclip2.shapes import image_height_width

    model = tiny_clip()
    model.visual.preprocess_cfg = {**TINY_PREPROCESS, "size": (24, 40)}
    assert image_height_width(model) == (24, 40)
    assert example_inputs(model)[0].shape == (1, 3, 24, 40)
    geo = geometry(model, model.visual.preprocess_cfg)
    assert (geo.height, geo.width) == (24, 40)
    assert image_height_width(model, {"size": 48}) == (48, 48)
    assert (geometry(model, {"size": [16, 32]}).height, geometry(model, {"size": [16, 32]}).width) == (16, 32)
    assert image_height_width({"vision_cfg": {"image_size": 256}}) == (256, 256)
    assert image_height_width({"vision_cfg": {}}) == (224, 224)  # open_clip's default


@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fp32", "int8"])
def test_tiny_executorch_export_runs_in_the_executorch_runtime(tmp_path, int8):
    """The ExecuTorch path end to end on the tiny model (the real towers: test_export_mobile.py, slow)."""
    pytest.importorskip("executorch.runtime")
    images, captions = write_calibration_set(tmp_path) if int8 else (None, None)
    result = _tiny_export(
        tmp_path / "out",
        format="executorch",
        int8=int8,
        calibration_images=images,
        calibration_captions=captions,
        min_cosine=0.5,
        min_agreement=None,
    )
    config = result.config
    assert config["precision"] == ("int8" if int8 else "fp32") and config["image"]["input_shape"][0] == 1
    if int8:
        assert config["fidelity"]["image"]["calibration"]["mean"] >= 0.5
    else:
        assert result.image.max_abs_diff < TOLERANCE and result.text.max_abs_diff < TOLERANCE


def test_tiny_coreml_export_passes_the_structure_check(tmp_path):
    """Both towers fp16 by default here: the tiny text tower passes its fp16 check, which the sidecar
    records (the fp32 choice and --precision: test_export_fidelity.py)."""
    pytest.importorskip("coremltools")
    result = _tiny_export(tmp_path / "out", format="coreml")
    config = result.config
    assert config["precision"] == "fp16" and config["text"]["input_dtype"] == "int32"
    assert config["image"]["precision"] == config["text"]["precision"] == "fp16"
    assert result.image.structure["weights"] == "float16" and "softmax" in result.text.structure["op_types"]
    check = config["text"]["fp16_check"]
    assert check["safe"] and check["inputs"] == len(evaluation_captions()) and check["cosine_min"] >= 0.999
