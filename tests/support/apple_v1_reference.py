"""Apple's V1 `mobileclip` package as a reference, through golden data (tests/data/apple_v1/).

tools/apple_v1_golden.py ran Apple's code (apple/ml-mobileclip 4144bb1f) on weights and inputs
that a seeded recipe generates, and stored Apple's outputs, the key/shape manifests of Apple's
state_dicts and digests of the inputs. This module rebuilds the same Apple-format state_dicts
and inputs from that recipe (imported from the tool itself, so there is one recipe), so the
tests can convert them with our converter and compare with what Apple's code computed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import torch


def _find_tool() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tools" / "apple_v1_golden.py"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("tools/apple_v1_golden.py not found above tests/: run the tests from a checkout")


@functools.cache
def tool() -> ModuleType:
    """tools/apple_v1_golden.py as a module: the recipe, the inputs, the data folder."""
    spec = importlib.util.spec_from_file_location("apple_v1_golden", _find_tool())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def golden() -> dict:
    """golden.json, checked against the recipe version this checkout's tool implements."""
    summary = json.loads((tool().DATA_DIR / "golden.json").read_text())
    if summary["recipe_version"] != tool().RECIPE_VERSION or summary["commit"] != tool().APPLE_COMMIT:
        raise AssertionError(
            "tests/data/apple_v1 was written by another recipe or Apple commit than tools/apple_v1_golden.py "
            "defines: rerun the tool against the pinned Apple checkout (see its docstring)."
        )
    return summary


@functools.cache
def _manifests() -> dict:
    return json.loads(gzip.decompress((tool().DATA_DIR / "manifests.json.gz").read_bytes()))


@functools.cache
def _outputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(tool().DATA_DIR / "outputs.safetensors"))


def v1_names() -> list[str]:
    return list(tool().V1_NAMES)


def image_size(name: str) -> int:
    return tool().IMAGE_SIZES[name]


def apple_state_dict(name: str, fused: bool = False) -> dict[str, torch.Tensor]:
    """Apple's state_dict for `name` (un-fused, or after Apple's reparameterize_model), recipe-filled.

    The fused one holds recipe values, not Apple's fused values: it serves only the layout.
    """
    manifest = _manifests()[name]["fused" if fused else "unfused"]
    return tool().recipe_state_dict(manifest, golden()["models"][name]["seed"])


def apple_outputs(name: str, fused: bool = False) -> dict[str, torch.Tensor]:
    """Apple's `image` / `text` features and `logits` on :func:`inputs` for `name`."""
    prefix = f"{name}/fused_" if fused else f"{name}/"
    return {key: _outputs()[prefix + key] for key in ("image", "text", "logits")}


def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the recipe generates (checked against the stored digest) and Apple's token rows."""
    size = image_size(name)
    images = tool().recipe_images(size)
    if tool().tensor_digest(images) != golden()["inputs"][str(size)]:
        raise AssertionError(
            "torch.rand no longer reproduces the recipe's images (a torch RNG change?): "
            "regenerate tests/data/apple_v1 with tools/apple_v1_golden.py."
        )
    return images, _outputs()["tokens"].long()


def captions() -> list[str]:
    return list(golden()["captions"])


def probe_image():
    return tool().probe_image()


def preprocess_reference(size: int) -> tuple[torch.Tensor, str, int]:
    """Apple's preprocessing of the probe at `size`: a strided subsample (uint8), the SHA-256 of the
    full output as bytes, and the stride."""
    entry = golden()["preprocess"][str(size)]
    return _outputs()[f"preprocess/{size}"], entry["sha256"], golden()["preprocess_stride"]
