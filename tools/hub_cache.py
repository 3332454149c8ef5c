"""A Hugging Face Hub cache on disk, filled with files the tests generate.

No machine here reaches the Hub, but the real download path (open_clip -> huggingface_hub ->
cache) must still be exercised. huggingface_hub resolves `hf_hub_download(repo, file)` from
`<cache>/models--<org>--<name>/refs/main` + `snapshots/<commit>/<file>` when HF_HUB_OFFLINE=1,
so writing that layout makes a pretrained tag load exactly the tensors we put there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from compat_env import run_python

FAKE_COMMIT = hashlib.sha1(b"mobileclip2 test snapshot").hexdigest()


def _repo_dir(cache_dir: Path, repo_id: str) -> Path:
    return Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"


def snapshot_dir(cache_dir: Path, repo_id: str) -> Path:
    repo_dir = _repo_dir(cache_dir, repo_id)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(FAKE_COMMIT)
    snapshot = repo_dir / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def place_file(cache_dir: Path, repo_id: str, filename: str, source: Path) -> Path:
    """Put `source` into the cache as `repo_id/filename` (hard link when possible)."""
    target = snapshot_dir(cache_dir, repo_id) / filename
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def remove_file(cache_dir: Path, repo_id: str, filename: str) -> None:
    """Take `repo_id/filename` out of the cache again (the counterpart of place_file); absent is fine.

    Why: full-size weights are placed one model at a time and removed before the next, so the
    cache never holds more than one model's file.
    """
    (_repo_dir(cache_dir, repo_id) / "snapshots" / FAKE_COMMIT / filename).unlink(missing_ok=True)


def write_state_dict(cache_dir: Path, repo_id: str, filename: str, state_dict: dict) -> Path:
    """Serialize `state_dict` as the file type its name implies (safetensors or torch pickle)."""
    target = snapshot_dir(cache_dir, repo_id) / filename
    tensors = {key: value.detach().contiguous().clone() for key, value in state_dict.items()}
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(tensors, str(target))
    else:
        torch.save(tensors, target)
    return target


def offline_env(cache_dir: Path) -> dict[str, str]:
    """Environment for a subprocess that must resolve Hub files from `cache_dir` only."""
    return {
        "HF_HUB_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(Path(cache_dir).parent / "hf_home"),
    }


def load_tag_in_subprocess(
    tmp_path: Path, cache_dir: Path, name: str, pretrained: str
) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """(result.json, loaded state_dict or None) of tests/scripts/load_tag_worker.py, which builds
    ``name`` with ``pretrained`` in a fresh offline process that sees only ``cache_dir``."""
    out = Path(tmp_path) / f"{name}-{pretrained.replace('/', '_')}"
    out.mkdir()
    proc = run_python(
        None, ["tests/scripts/load_tag_worker.py", name, pretrained, str(out)], **offline_env(cache_dir)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    state = torch.load(out / "state.pt", weights_only=True) if (out / "state.pt").exists() else None
    return result, state


def assert_same_tensors(loaded: dict[str, torch.Tensor] | None, expected: dict[str, torch.Tensor]) -> None:
    """Same keys, and every tensor equal bit for bit: "loads exactly these tensors"."""
    assert loaded is not None
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
