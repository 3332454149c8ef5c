"""clip_benchmark (PyPI clip-benchmark) runs unchanged against our names.

`clip_benchmark eval --model MobileCLIP-S0 --pretrained <local file> --dataset wds/<tiny local set>`
in a fresh process: the plugin registers MobileCLIP-S0 when clip_benchmark imports open_clip, the
V1-style local checkpoint loads, zero-shot classification runs and the JSON result is written.

clip-benchmark 1.6.2's zero-shot metrics call ``float()`` on a 1-element array, which numpy >= 2.3
rejects; the subprocess therefore sees numpy < 2.3 from a cached ``pip install --no-deps --target``
directory first on its PYTHONPATH (docs/inference.md tells users the same) while everything
else, torch included, is the one installed copy.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from compat_env import ensure_target, run_python

pytestmark = pytest.mark.slow  # installs and runs a real client

pytest.importorskip("webdataset")

CLASSES = ("red square", "green circle", "blue triangle")
# clip-benchmark itself is not a test dependency: it requires `transformers`, which it does not
# need for open_clip models and which would add seconds to every `import open_clip` of the suite.
# It is installed without dependencies into a cached target dir, together with numpy < 2.3.
CLIP_BENCHMARK_TARGET = ("clip-benchmark-1.6.2_numpy-lt-2.3", ["clip-benchmark==1.6.2", "numpy<2.3"])


def _png(index: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    shape = index % len(CLASSES)
    offset = index // len(CLASSES) * 4
    if shape == 0:
        draw.rectangle((12 + offset, 12, 48 + offset, 48), fill=(220, 30, 30))
    elif shape == 1:
        draw.ellipse((10, 10 + offset, 50, 50 + offset), fill=(30, 180, 30))
    else:
        draw.polygon([(32, 8 + offset), (8, 56), (56, 56)], fill=(30, 30, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_tiny_wds(root: Path, samples: int = 6) -> Path:
    """A clip_benchmark webdataset: test/0.tar of PNG + class index, classnames and templates."""
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tar:
        for index in range(samples):
            for suffix, payload in (("png", _png(index)), ("cls", str(index % len(CLASSES)).encode())):
                info = tarfile.TarInfo(f"{index:06d}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def test_clip_benchmark_zeroshot_on_local_dataset(tmp_path, s0_checkpoint):
    target = ensure_target(*CLIP_BENCHMARK_TARGET)
    data = make_tiny_wds(tmp_path / "tiny")
    output = tmp_path / "result.json"
    proc = run_python(
        target,
        [
            "-m",
            "clip_benchmark.cli",
            "eval",
            "--model",
            "MobileCLIP-S0",
            "--pretrained",
            str(s0_checkpoint),
            "--dataset",
            "wds/tiny",
            "--dataset_root",
            str(data),
            "--task",
            "zeroshot_classification",
            "--batch_size",
            "4",
            "--num_workers",
            "0",
            "--no_amp",
            "--output",
            str(output),
        ],
        timeout=600,
        HF_HUB_OFFLINE="1",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(output.read_text())
    assert result["model"] == "MobileCLIP-S0" and result["dataset"] == "wds/tiny"
    metrics = result["metrics"]
    assert 0.0 <= metrics["acc1"] <= 1.0 and 0.0 <= metrics["mean_per_class_recall"] <= 1.0
