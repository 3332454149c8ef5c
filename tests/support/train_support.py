"""Tiny models and shards for the training tests: everything runs on 2 CPU cores in seconds.

Models are open_clip ``local-dir:`` folders (open_clip_config.json + weights), so subprocesses
(`python -m mobileclip2.train`, `mobileclip2 reinforce`) load them by name without registration.
Teachers are two different tiny ViT CLIPs (widths 32 and 48, input sizes 32 and 48 px, different
normalizations) so ensemble splitting, per-teacher resizing and renormalization are all exercised.
The student is MobileCLIP-shaped (the real fastvit_mci0 trunk) with a tiny text tower at 64 px.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
from model_support import initialize_what_upstream_leaves_empty
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from temp_dirs import SESSION_DIR_PREFIX

OPENAI_MEAN, OPENAI_STD = list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)  # JSON-ready

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def write_shard(path: str | Path, samples) -> None:
    """Write samples (bytes values, ``__key__``) as a tar shard at ``path``, committed whole."""
    from mobileclip2.reinforce.storage import Output

    path = Path(path)
    Output(path.parent).write_shard(path.name, samples)


def teacher_config(embed_dim: int, image_size: int, mean, std) -> dict:
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "image_size": image_size,
                "layers": 1,
                "width": 32,
                "patch_size": 16,
                "head_width": 16,
            },
            "text_cfg": dict(TINY_TEXT),
        },
        "preprocess_cfg": {
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


STUDENT_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "fastvit_mci0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": None,
            "image_size": 64,
        },
        "text_cfg": dict(TINY_TEXT, no_causal_mask=True),
        "custom_text": True,
    },
    "preprocess_cfg": {
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "interpolation": "bilinear",
        "resize_mode": "shortest",
    },
}

WORDS = ["red", "green", "blue", "square", "circle", "cat", "dog", "tree", "car", "sky", "stripes", "dots"]


def write_model_dir(path: Path, config: dict, seed: int | None) -> str:
    """A local-dir: model folder; with ``seed`` its (random) weights are saved so every load is identical."""
    import open_clip
    import torch

    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps(config))
    if seed is not None:
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{path}")
        initialize_what_upstream_leaves_empty(model)
        torch.save(model.state_dict(), path / "open_clip_pytorch_model.bin")
    return f"local-dir:{path}"


def make_models(root: Path) -> dict[str, str]:
    return {
        "teacher_a": write_model_dir(
            root / "teacher_a", teacher_config(32, 32, OPENAI_MEAN, OPENAI_STD), seed=1
        ),
        "teacher_b": write_model_dir(
            root / "teacher_b", teacher_config(48, 48, [0.5] * 3, [0.5] * 3), seed=2
        ),
        "student": write_model_dir(root / "student", STUDENT_CONFIG, seed=None),
    }


def _image_bytes(rng: np.random.Generator, index: int) -> tuple[str, bytes]:
    from PIL import Image

    height, width = int(rng.integers(48, 96)), int(rng.integers(48, 96))
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    pixels[: height // 2, :, index % 3] = 255  # some structure so augmentations do something visible
    buffer = io.BytesIO()
    extension = "png" if index % 4 == 0 else "jpg"
    Image.fromarray(pixels).save(buffer, format="PNG" if extension == "png" else "JPEG", quality=90)
    return extension, buffer.getvalue()


def make_plain_shards(
    root: Path, num_shards: int = 2, per_shard: int = 12, seed: int = 0, syn: bool = True
) -> list[str]:
    """Plain webdataset shards: image + txt (+ syn.json with two pre-made synthetic captions)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        samples = []
        for i in range(per_shard):
            index = shard * per_shard + i
            extension, image = _image_bytes(rng, index)
            words = rng.choice(WORDS, size=3, replace=False)
            sample = {
                "__key__": f"{index:06d}",
                extension: image,
                "txt": f"a photo of {' '.join(words)}".encode(),
            }
            if syn:
                sample["syn.json"] = json.dumps(
                    {"syn_text": [f"an image with {words[0]}", f"{words[1]} and {words[2]}"]}
                ).encode()
            samples.append(sample)
        path = root / f"{shard:05d}.tar"
        write_shard(path, samples)
        paths.append(str(path))
    return paths


def brace(paths: list[str]) -> str:
    """'dir/{00000..00001}.tar' for consecutive shard files."""
    first, last = Path(paths[0]), Path(paths[-1])
    return str(first.parent / f"{{{first.stem}..{last.stem}}}.tar")


def python_env() -> dict:
    """compat_env's subprocess environment (this checkout first on the path), autoload on."""
    from compat_env import env_for

    # One thread per run: the tests share 2 cores with other jobs, and OpenMP's spinning threads
    # slow down several-fold when they are descheduled.
    env = env_for(None, OMP_NUM_THREADS="1")
    env.pop("MOBILECLIP2_AUTOLOAD", None)
    return env


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 300):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=python_env(),
        timeout=timeout,
    )


def train_log(log_dir: Path, name: str) -> str:
    return (log_dir / name / "out.log").read_text()


def logged_losses(log: str, key: str = "Loss") -> list[float]:
    """Per-step values of a loss term from open_clip_train's log lines ('Loss: 1.2345 (avg)')."""
    import re

    return [float(m) for m in re.findall(rf"\b{key}: ([-+0-9.eE]+) \(", log)]


COCA_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
            "attn_pooler_heads": 2,
        },
        "custom_text": True,
    },
    "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
}


def build_workspace(tmp_path_factory) -> dict:
    """Models, plain shards and DR shards (made with `mobileclip2 reinforce`); conftest's
    session fixture ``train_workspace`` builds it once for the training test modules.

    Two plain shards of 12 samples; DR shards with 3 augmentations per image; a one-shard
    'fixed' DR set of 8 samples with 1 augmentation and 1 synthetic caption each, so every epoch
    is the very same batch (for the overfitting test).
    """
    from mobileclip2.cli import main as cli

    root = tmp_path_factory.mktemp(SESSION_DIR_PREFIX + "train")  # shared by modules: kept
    models = make_models(root / "models")
    plain = make_plain_shards(root / "plain")
    teachers = [
        "--teachers",
        f"{models['teacher_a']},{models['teacher_b']}",
        "--teachers-pretrained",
        "N/A,N/A",
    ]
    assert (
        cli(
            [
                "reinforce",
                brace(plain),
                "--output",
                str(root / "dr"),
                *teachers,
                "--num-augmentations",
                "3",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    fixed_plain = make_plain_shards(root / "fixed_plain", num_shards=1, per_shard=8, seed=5, syn=False)
    samples = _with_one_syn_caption(fixed_plain[0])
    args = [
        "reinforce",
        fixed_plain[0],
        "--output",
        str(root / "fixed_dr"),
        *teachers,
        "--num-augmentations",
        "1",
    ]
    assert samples and cli(args) == 0
    return {
        "root": root,
        "models": models,
        "plain": plain,
        "dr": [str(root / "dr" / Path(p).name) for p in plain],
        "dr_config": str(root / "dr" / "config.json"),
        "fixed_dr": str(root / "fixed_dr" / Path(fixed_plain[0]).name),
        "fixed_config": str(root / "fixed_dr" / "config.json"),
    }


def _with_one_syn_caption(path: str) -> int:
    from mobileclip2.reinforce.storage import read_shard

    samples = read_shard(path)
    for sample in samples:
        sample["syn.json"] = json.dumps({"syn_text": ["a synthetic " + sample["txt"].decode()[11:]]}).encode()
    write_shard(path, samples)
    return len(samples)


# -- feature batches for the DR loss (single-process and DDP tests) ----------------------------


def _normalized(*shape, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _teacher(batch, dims, seed):
    import torch

    return torch.cat([_normalized(batch, d, seed=seed + k) for k, d in enumerate(dims)], dim=1)


def make_batch(batch=5, width=6, dims=(3, 4), syn=True, seed=0):
    """(student, teacher) Features of unit rows; the teacher side concatenates one block per teacher."""
    from mobileclip2.train.losses import Features

    student = Features(
        _normalized(batch, width, seed=seed),
        _normalized(batch, width, seed=seed + 1),
        _normalized(batch, width, seed=seed + 2) if syn else None,
    )
    teacher = Features(
        _teacher(batch, dims, seed + 10),
        _teacher(batch, dims, seed + 20),
        _teacher(batch, dims, seed + 30) if syn else None,
    )
    return student, teacher


# generate() arguments the CoCa sampling tests compare across open_clip versions (on COCA_CONFIG).
COCA_SAMPLING_CASES = [
    dict(generation_type="top_p", top_p=0.9, seq_len=12, fixed_output_length=True),
    dict(generation_type="top_p", top_p=0.9, seq_len=12),
    dict(generation_type="top_k", top_k=5, seq_len=12, fixed_output_length=True),
    dict(generation_type="top_p", top_p=0.5, temperature=0.7, repetition_penalty=1.3, seq_len=12),
]
