"""all_clip (what clip-retrieval loads models with) gives model.eval()'s embeddings once
patches/all_clip/ is applied, and not without it.

all_clip 1.3.0 loads open_clip models with ``create_model_and_transforms`` and never calls ``.eval()``
(open_clip returns models in training mode), so MobileCLIP's image towers run BatchNorm on batch
statistics and load_clip's warmup overwrites the running statistics. The released wheel (its
all_clip/*.py are byte-identical to the sdist's, which lacks the requirements.txt its setup.py reads)
is installed with ``pip --no-deps --target`` beside the two packages its import needs; the patch is
applied to a copy, as ``git apply`` would apply it to the upstream repository, and both copies load
``open_clip:MobileCLIP2-S0/dfndr2b`` through ``all_clip.load_clip`` from an offline Hugging Face cache
filled with seeded weights (non-trivial BatchNorm statistics).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from compat_env import REPO_ROOT, ensure_target
from hub_cache import offline_env, write_state_dict
from seeded_weights import seeded_state

from mobileclip2.compat.registry import hub_location

pytestmark = pytest.mark.slow  # installs all_clip and its import dependencies, full-size models

PATCHES = sorted((REPO_ROOT / "patches" / "all_clip").glob("*.patch"))
WORKER = REPO_ROOT / "tests" / "scripts" / "all_clip_worker.py"
ALL_CLIP_VERSION = "1.3.0"
# What `import all_clip` needs beyond torch, torchvision, numpy, Pillow and open_clip (installed):
# all_clip/main.py imports every loader at import time, and deepsparse_clip.py, hf_clip.py and
# openai_clip.py do `import clip` (clip-anytorch), whose clip.py does `from pkg_resources import
# packaging`, gone from setuptools >= 81. transformers, multilingual-clip, deepsparse and japanese_clip
# are only imported when their loader runs.
ALL_CLIP_IMPORT_DEPS = [
    f"all-clip=={ALL_CLIP_VERSION}",
    "clip-anytorch==2.6.0",
    "setuptools==80.10.2",  # pkg_resources for clip-anytorch; shadows the venv's only in subprocesses
]
MODEL, TAG = "MobileCLIP2-S0", "dfndr2b"


@pytest.fixture(scope="module")
def all_clip_site() -> Path:
    """all_clip 1.3.0 as released (unpatched) plus its import dependencies, installed once."""
    return ensure_target(f"all_clip-{ALL_CLIP_VERSION}", ALL_CLIP_IMPORT_DEPS)


@pytest.fixture(scope="module")
def patched_tree(all_clip_site, tmp_path_factory) -> Path:
    """A copy of the released all_clip package with patches/all_clip/ applied (the patches' paths are
    all_clip/... and tests/..., as in the upstream repository and the sdist)."""
    tree = tmp_path_factory.mktemp("all_clip_patched")
    shutil.copytree(
        all_clip_site / "all_clip", tree / "all_clip", ignore=shutil.ignore_patterns("__pycache__")
    )
    for patch in PATCHES:
        check = subprocess.run(
            ["git", "apply", "--check", str(patch)], cwd=tree, capture_output=True, text=True
        )
        assert check.returncode == 0, f"{patch.name} does not apply: {check.stderr}"
        subprocess.run(["git", "apply", str(patch)], cwd=tree, check=True)
    return tree


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """An offline Hub cache holding seeded MobileCLIP2-S0 weights under the tag's repo id and file."""
    repo_id, filename = hub_location(open_clip.get_pretrained_cfg(MODEL, TAG))
    torch.manual_seed(0)
    state = seeded_state(open_clip.create_model(MODEL).state_dict(), seed=24)
    cache = tmp_path_factory.mktemp("all_clip_hub")
    write_state_dict(cache, repo_id, filename, state)  # .bin (torch pickle): every open_clip reads it
    return cache


def _env(paths: list[Path], **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in [*paths, REPO_ROOT])
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def runs(all_clip_site, patched_tree, hub_cache, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """(result.json, embeddings) of the worker for the released and the patched all_clip."""
    out = {}
    for variant, paths in {"released": [all_clip_site], "patched": [patched_tree, all_clip_site]}.items():
        out_dir = tmp_path_factory.mktemp(f"run_{variant}")
        proc = subprocess.run(
            [sys.executable, str(WORKER), f"open_clip:{MODEL}/{TAG}", str(out_dir)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=str(out_dir),
            env=_env(paths, **offline_env(hub_cache)),
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        result = json.loads((out_dir / "result.json").read_text())
        assert Path(result["all_clip_file"]).is_relative_to(paths[0]), result  # the copy under test
        assert result["open_clip_version"] == open_clip.__version__  # the venv's, not a --target copy
        out[variant] = (result, torch.load(out_dir / "embeddings.pt", weights_only=True))
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)  # what clip-retrieval stores (before its fp16 cast)


def test_patch_is_upstream_shaped():
    assert [patch.name[:4] for patch in PATCHES] == ["0001"]
    text = PATCHES[0].read_text()
    assert text.startswith("From ") and "Subject: [PATCH" in text
    assert "a/all_clip/open_clip.py" in text and "tests/test_" in text  # carries its own upstream test


def test_patched_all_clip_gives_the_eval_models_embeddings(runs):
    result, emb = runs["patched"]
    assert result["training_module_types"] == []
    assert result["changed_state_keys"] == []  # the warmup left the checkpoint's statistics alone
    torch.testing.assert_close(emb["all_clip"], emb["reference"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb["all_clip_text"], emb["reference_text"], rtol=1e-5, atol=1e-5)


def test_released_all_clip_differs_and_eval_afterwards_does_not_repair_it(runs):
    result, emb = runs["released"]
    assert "BatchNorm2d" in result["training_module_types"]
    # Batch statistics instead of the checkpoint's: the stored (unit) embeddings move a lot.
    assert (_unit(emb["all_clip"]) - _unit(emb["reference"])).abs().max() > 1e-2
    # load_clip's warmup already ran the model in training mode and overwrote running_mean/var,
    # so a client's .eval() after load_clip does not give the checkpoint's model back either.
    assert any(key.endswith(("running_mean", "running_var")) for key in result["changed_state_keys"])
    assert not any(key.startswith("text.") for key in result["changed_state_keys"])
    assert (_unit(emb["all_clip_after_eval"]) - _unit(emb["reference"])).abs().max() > 1e-3
    # MobileCLIP2-S0's text tower is an open_clip transformer (LayerNorm, dropout 0): unaffected.
    torch.testing.assert_close(emb["all_clip_text"], emb["reference_text"], rtol=1e-5, atol=1e-5)


def test_upstream_test_passes_on_patched_tree(patched_tree, all_clip_site, tmp_path):
    """The patch's own test (tests/test_eval_mode.py: RN50 with a local random checkpoint)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'upstream'}",  # its 400 MB RN50 checkpoint goes with our tmp dir
            "tests/test_eval_mode.py",
        ],
        cwd=patched_tree,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env([patched_tree, all_clip_site], MOBILECLIP2_AUTOLOAD="0"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 passed" in proc.stdout
