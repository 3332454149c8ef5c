"""Reading checkpoints safely, writing them atomically, and explaining why one does not fit a model.

Pure helpers over state_dicts (no open_clip internals): format detection by sentinel keys,
a safe reader that never unpickles code, an atomic writer that never leaves a half-written file
under a final name, and a mismatch summary short enough to read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CorruptCheckpointError

# Sentinel key prefixes -> human-readable format names, checked in order.
_FORMAT_SENTINELS = (
    ("image_encoder.model.", "Apple MobileCLIP V1 (mobileclip package) state_dict"),
    ("visual.trunk.", "OpenCLIP state_dict (timm image tower)"),
    ("visual.", "OpenCLIP state_dict"),
    ("module.visual.", "OpenCLIP training checkpoint (DDP 'module.' prefix)"),
    ("stem.", "timm image backbone only"),
    ("patch_embed.", "timm image backbone only"),
)


def detect_format(keys: Iterable[str]) -> str:
    """Name the checkpoint layout from its keys, for error messages and `convert`."""
    keys = list(keys)
    for prefix, name in _FORMAT_SENTINELS:
        if any(key.startswith(prefix) for key in keys):
            return name
    return "unrecognized layout"


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: a bare state_dict or open_clip_train's {'state_dict': ...}."""
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise TypeError(f"expected a non-empty mapping of tensors, got {type(checkpoint).__name__}")
    state_dict = dict(checkpoint)
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise TypeError(f"entries that are not tensors: {not_tensors[:3]}")
    return state_dict


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a .safetensors or torch file as a state_dict, never executing pickled code.

    Raises FileNotFoundError for a missing path and CorruptCheckpointError for anything that
    cannot be read as a mapping of tensors (truncated download, wrong file type, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path, device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return unwrap_state_dict(checkpoint)
    except Exception as exc:  # noqa: BLE001 - every reader failure means "not a usable checkpoint"
        raise CorruptCheckpointError(path, exc) from exc


def _examples(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _by_prefix(keys: list[str], depth: int = 2) -> str:
    counts = Counter(".".join(key.split(".")[:depth]) for key in keys)
    return ", ".join(f"{prefix}.* x{count}" for prefix, count in counts.most_common(4))


def summarize_mismatch(
    model_state: Mapping[str, torch.Tensor],
    checkpoint_state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    model_name: str | None = None,
) -> str:
    """One paragraph saying which model the weights were loaded into, which keys are
    missing/unexpected/mis-shaped, which registered model they fit instead (if one does), and what to try.

    ``model_name`` is looked up from ``model_state``'s key/shape manifest when not given.
    """
    missing = sorted(set(model_state) - set(checkpoint_state))
    unexpected = sorted(set(checkpoint_state) - set(model_state))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(checkpoint_state[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in set(model_state) & set(checkpoint_state)
        if tuple(model_state[key].shape) != tuple(checkpoint_state[key].shape)
    )
    if model_name is None:
        loaded_into = registered_models_fitting(model_state)
        model_name = " / ".join(loaded_into) if loaded_into else None
    target = f"the model {model_name}" if model_name else "the model"
    parts = [
        f"{source} (detected format: {detect_format(checkpoint_state)}) does not fit {target}: "
        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mis_shaped)} mis-shaped of "
        f"{len(model_state)} model tensors."
    ]
    if missing:
        parts.append(f"Missing: {_by_prefix(missing)} (e.g. {_examples(missing)}).")
    if unexpected:
        parts.append(f"Unexpected: {_by_prefix(unexpected)} (e.g. {_examples(unexpected)}).")
    if mis_shaped:
        parts.append(f"Mis-shaped: {_examples(mis_shaped, 3)}.")
    fitting = registered_models_fitting(checkpoint_state)
    if len(fitting) == 1:
        parts.append(
            f"This looks like a {fitting[0]} checkpoint (its tensors fit that model exactly): load it with "
            f"open_clip.create_model({fitting[0]!r}, pretrained=...)."
        )
    elif fitting:
        parts.append(
            f"This looks like a {' or '.join(fitting)} checkpoint (its tensors fit each of these exactly: same "
            "architecture, different training and preprocessing): load it with the name it was trained as."
        )
    else:
        parts.append(
            "These weights most likely belong to a different model: check the model name against the "
            "checkpoint (`mobileclip2 info NAME` shows each model's towers), or convert Apple V1 "
            "checkpoints with `mobileclip2 convert`."
        )
    return " ".join(parts)


# -- which registered model a state_dict fits: key/shape manifests built on the meta device ---------

Manifest = frozenset


def manifest(state: Mapping[str, torch.Tensor]) -> Manifest:
    """The (key, shape) pairs of a state_dict: what a strict load compares."""
    return frozenset((key, tuple(value.shape)) for key, value in state.items())


def _text_signature(state: Mapping[str, Any]) -> dict[str, int]:
    """Text-tower sizes readable from a state_dict (embed_dim, width, vocab, context), to skip
    building models that cannot fit."""
    found: dict[str, int] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            continue
        shape = tuple(value.shape)
        if key.endswith("token_embedding.weight") and len(shape) == 2:
            found["vocab_size"], found["width"] = shape
        elif re.search(r"(^|\.)positional_embedding$", key) and len(shape) == 2:
            found["context_length"] = shape[0]
        elif re.search(r"(^|\.)text_projection(\.weight)?$", key) and len(shape) == 2:
            found["embed_dim"] = shape[1] if key.endswith("text_projection") else shape[0]
    return found


def _config_signature(cfg: Mapping[str, Any]) -> dict[str, int]:
    text = cfg.get("text_cfg", {})
    return {
        "embed_dim": cfg.get("embed_dim"),
        "width": text.get("width", 512),
        "vocab_size": text.get("vocab_size", 49408),
        "context_length": text.get("context_length", 77),
    }


@functools.cache
def _registered_manifest(name: str) -> Manifest:
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(name, device="meta")
    return manifest(model.state_dict())


def registered_models_fitting(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of this package's models whose key/shape manifest equals ``state``'s.

    Only models whose config agrees with the text-tower sizes read from ``state`` are built, on
    the meta device (no memory, no init cost beyond module construction), once per process.
    """
    if "logit_scale" not in state:  # every CLIP/CoCa model has one: a partial or foreign state fits none
        return []
    try:
        from open_clip import factory

        from .plugin import config_files
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return []
    wanted, signature = manifest(state), _text_signature(state)
    fitting = []
    for path in config_files():
        cfg = factory.get_model_config(path.stem) or {}
        known = _config_signature(cfg)
        if any(known.get(k) is not None and known[k] != v for k, v in signature.items()):
            continue
        try:
            if _registered_manifest(path.stem) == wanted:
                fitting.append(path.stem)
        except Exception:  # noqa: BLE001 - a model this environment cannot build fits nothing
            continue
    return fitting


# Test hook for the kill tests: seconds to wait after the temporary file is complete and before it
# is renamed into place (announced on stderr), so a test can kill the process at that moment.
PAUSE_BEFORE_REPLACE_ENV = "MOBILECLIP2_PAUSE_BEFORE_REPLACE"
_PARTIAL = ".partial-"


def _partial_name(dst: Path, pid: int) -> Path:
    return dst.with_name(f".{dst.name}{_PARTIAL}{pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_partials(dst: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed writers of ``dst`` left behind (their pid is gone)."""
    dst = Path(dst)
    removed = []
    for partial in dst.parent.glob(f".{dst.name}{_PARTIAL}*"):
        pid = partial.name.rsplit(_PARTIAL, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode `open()` would give a new file (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; when the block succeeds, move it to ``dst`` in one step.

    Why: a process killed mid-write (or a writer that raises) must never leave a partial file under
    the final name. The temporary file is hidden and named after the writer's pid, so a later
    writer removes it once that process is gone. Parent folders are created; the result gets the
    mode an ordinary new file gets (writers such as safetensors' create 0600 files).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    partial = _partial_name(dst, os.getpid())
    try:
        yield partial
        os.chmod(partial, default_file_mode())
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        pause = float(os.environ.get(PAUSE_BEFORE_REPLACE_ENV) or 0)
        if pause > 0:
            print(f"mobileclip2: complete, not yet renamed: {partial}", file=sys.stderr, flush=True)
            time.sleep(pause)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
