"""`mobileclip2 classify`: ranked zero-shot labels, a progress bar, and fast clear failures."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import open_clip
import pytest

from mobileclip2 import EXAMPLE_IMAGE, cli
from mobileclip2.commands.classify import check_images, classify_images, read_labels
from mobileclip2.errors import WeightsUnavailableError
from mobileclip2.loading import ensure_weights_available, preprocess_source

REPO = Path(__file__).resolve().parents[1]
RANK_LINE = re.compile(r"^\s+(\d+\.\d\d)%  (.+)$")


def _ranked_blocks(output: str) -> dict[str, list[tuple[float, str]]]:
    blocks: dict[str, list[tuple[float, str]]] = {}
    current = None
    for line in output.splitlines():
        match = RANK_LINE.match(line)
        if match:
            blocks[current].append((float(match.group(1)), match.group(2)))
        elif line.strip():
            current = line.strip()
            blocks.setdefault(current, [])
    return blocks


def test_bundled_example_image_is_small_and_reproducible(tmp_path):
    assert EXAMPLE_IMAGE.is_file() and EXAMPLE_IMAGE.stat().st_size < 50_000
    tool = runpy.run_path(str(REPO / "tools" / "make_example_image.py"))
    assert tool["main"]([str(tmp_path / "again.jpg")]) == 0
    assert (tmp_path / "again.jpg").read_bytes() == EXAMPLE_IMAGE.read_bytes()


def test_classify_prints_a_ranked_label_list(s0_checkpoint, capsys):
    labels = ["a house on a hill", "a cat", "a city at night"]
    code = cli.main(
        ["classify", str(EXAMPLE_IMAGE), "--labels", *labels, "--model", "MobileCLIP-S0"]
        + ["--pretrained", str(s0_checkpoint)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    blocks = _ranked_blocks(captured.out)
    assert list(blocks) == [str(EXAMPLE_IMAGE)]
    ranked = blocks[str(EXAMPLE_IMAGE)]
    assert sorted(label for _, label in ranked) == sorted(labels)
    probabilities = [p for p, _ in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(100.0, abs=0.05)


def test_many_images_show_a_progress_bar_and_match_the_plain_model(s0_checkpoint, capsys):
    images = [str(EXAMPLE_IMAGE)] * 5
    args = ["classify", *images, "--labels", "sun", "tree", "house", "--model", "MobileCLIP-S0"]
    args += ["--pretrained", str(s0_checkpoint), "--batch-size", "2", "--top", "0"]
    assert cli.main(args) == 0
    fast = capsys.readouterr()
    assert "5/5" in fast.err  # tqdm on stderr
    assert cli.main([*args, "--no-optimize"]) == 0
    plain = capsys.readouterr().out
    # Optimized and eager models rank the same, with the same probabilities to 0.01%.
    assert fast.out == plain


def test_classify_images_api_uses_the_models_preprocessing(s0_checkpoint):
    # A local file gets the model's tag preprocessing from the factory (open_clip alone would use
    # OpenAI mean/std and bicubic resizing).
    assert "local checkpoint file" in preprocess_source("MobileCLIP-S0", str(s0_checkpoint))
    model, _, preprocess = open_clip.create_model_and_transforms(
        "MobileCLIP-S0", pretrained=str(s0_checkpoint)
    )
    assert model.visual.preprocess_cfg["mean"] == (0.0, 0.0, 0.0)
    assert model.visual.preprocess_cfg["interpolation"] == "bilinear"
    results = classify_images(
        model.eval(),
        preprocess,
        open_clip.get_tokenizer("MobileCLIP-S0"),
        [EXAMPLE_IMAGE],
        ["a", "b"],
        progress=False,
    )
    assert [label for label, _ in results[0].labels] in (["a", "b"], ["b", "a"])


def test_bad_input_is_reported_clearly(tmp_path, capsys):
    base = ["--model", "MobileCLIP-S0", "--pretrained", "datacompdr"]
    assert cli.main(["classify", str(tmp_path / "missing.jpg"), "--labels", "a", *base]) == 1
    assert "image file(s) not found: " in capsys.readouterr().err
    assert cli.main(["classify", str(EXAMPLE_IMAGE), "--labels", " ", *base]) == 1
    assert "no labels given" in capsys.readouterr().err
    assert (
        cli.main(
            ["classify", str(EXAMPLE_IMAGE), "--labels", "a", "--model", "MobileCLIP-SO", "--pretrained", "x"]
        )
        == 1
    )
    assert "Unknown model name 'MobileCLIP-SO'" in capsys.readouterr().err
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    assert cli.main(["classify", str(not_an_image), "--labels", "a", *base]) == 1
    assert "is not an image Pillow can read" in capsys.readouterr().err


def test_label_and_image_helpers(tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("cat\n\ndog\ncat\n")
    assert read_labels(["bird", "cat"], str(labels_file)) == ["bird", "cat", "dog"]
    with pytest.raises(ValueError, match="no labels given"):
        read_labels([], None)
    with pytest.raises(FileNotFoundError, match="labels file not found"):
        read_labels(["a"], str(tmp_path / "none.txt"))
    with pytest.raises(FileNotFoundError, match="'a.jpg', 'b.jpg'"):
        check_images(["a.jpg", "b.jpg"])


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


def test_offline_without_cached_weights_fails_at_once(empty_hub, monkeypatch):
    """'At once' means without touching the network (no wall-clock assertion: speed is not a test)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 must not open a connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set") as info:
        ensure_weights_available("MobileCLIP2-S0", "dfndr2b")
    assert "hf download timm/MobileCLIP2-S0-OpenCLIP open_clip_pytorch_model.bin" in str(info.value)


def test_unreachable_hub_fails_with_a_clear_error(empty_hub, monkeypatch, capsys):
    """A closed local port stands in for an unreachable Hub (how long it takes is a benchmark matter)."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = cli.main(
        [
            "classify",
            str(EXAMPLE_IMAGE),
            "--labels",
            "a",
            "--model",
            "MobileCLIP-S0",
            "--pretrained",
            "datacompdr",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "Could not fetch pretrained weights 'hf://apple/MobileCLIP-S0/mobileclip_s0.pt'" in err
    assert "could not be reached" in err and "--pretrained /path/to/file" in err  # the command line's words


def test_cached_weights_pass_the_check(empty_hub, monkeypatch):
    from hub_cache import place_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = empty_hub.parent / "weights.bin"
    source.write_bytes(b"x")
    place_file(empty_hub, "timm/MobileCLIP2-S0-OpenCLIP", "open_clip_model.safetensors", source)
    ensure_weights_available("MobileCLIP2-S0", "dfndr2b")  # no error: open_clip will find the file
