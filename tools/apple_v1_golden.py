"""Write the Apple MobileCLIP V1 golden data under tests/data/apple_v1/ from Apple's own code.

Why: tests/test_convert.py proves that our converter turns Apple's V1 checkpoints into OpenCLIP
models that compute what Apple's V1 `mobileclip` package computes. The repository must not hold
Apple's code, so a maintainer runs this script once against a checkout of apple/ml-mobileclip at
the pinned commit, and the tests compare against what it wrote:

    git clone https://github.com/apple/ml-mobileclip /tmp/ml-mobileclip
    git -C /tmp/ml-mobileclip checkout 4144bb1f081a6bcb9bc9e6552dee3b29a9ef9855
    python tools/apple_v1_golden.py /tmp/ml-mobileclip

Nothing of the checkout is copied; its `mobileclip` package is imported from the given path (it
needs only torch, torchvision, numpy, timm and open_clip, already installed for this project).

What is written (KBs, deterministic bytes for the same Apple code and torch):
  * ``manifests.json.gz``: for each V1 model (S0, S1, S2, B) the key / shape / dtype list of
    Apple's un-fused state_dict and of Apple's reparameterized (fused) state_dict;
  * ``outputs.safetensors``: Apple's image and text features (un-normalized, as `encode_image` /
    `encode_text` return them), logits (`forward`: clipped scale times normalized dot products),
    the same three for Apple's `reparameterize_model` result, Apple's token rows for
    :data:`CAPTIONS`, and a subsample of Apple's preprocessing of :func:`probe_image`;
  * ``golden.json``: the commit, the recipe version, SHA-256 digests of the inputs the recipe
    generates and of Apple's full preprocessing output (as bytes 0..255), and output scales.

No weights and no inputs are stored: they come from the *recipe* below, pure functions of a key
name, a shape and a seed, which the tests import from this file. Each tensor gets its own
generator seeded by CRC-32 of ``"<seed>/<key>"``, so the values do not depend on key order, on
Apple's initialisation, or on which other keys exist. Every tensor is random, including those a
fresh model sets to a constant (BatchNorm statistics, layer scales, norm weights), so a converter
that swaps or drops one cannot go unnoticed. Change the recipe only together with regenerating
the data (bump :data:`RECIPE_VERSION`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import torch

APPLE_REPO = "apple/ml-mobileclip"
APPLE_COMMIT = "4144bb1f081a6bcb9bc9e6552dee3b29a9ef9855"
RECIPE_VERSION = 1
DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "apple_v1"

# OpenCLIP name -> Apple V1 config name (MobileCLIP-B (LT) shares the B architecture).
V1_NAMES = {
    "MobileCLIP-S0": "mobileclip_s0",
    "MobileCLIP-S1": "mobileclip_s1",
    "MobileCLIP-S2": "mobileclip_s2",
    "MobileCLIP-B": "mobileclip_b",
}
IMAGE_SIZES = {"MobileCLIP-S0": 256, "MobileCLIP-S1": 256, "MobileCLIP-S2": 256, "MobileCLIP-B": 224}
# "" and "x" are mostly padding: S0/S1/S2 use no padding mask, so padding must flow through.
CAPTIONS = ["a photo of a cat", "a diagram of a mobile network", "", "x"]
NUM_IMAGES = 2
IMAGE_SEED = 7
PROBE_SEED = 3
PROBE_HW = (300, 410)  # not square, larger than both resolutions: resize and crop both matter
PREPROCESS_STRIDE = 8  # keep every 8th row and column of the preprocessed probe in the data


# -- the recipe (imported by tests/apple_v1_reference.py) -------------------------------------


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))


def recipe_tensor(key: str, shape: list[int], dtype: str, seed: int) -> torch.Tensor:
    """The value of state_dict entry `key` for a model built with `seed`.

    Scales keep every V1 model's features O(0.1..10) in float32 so that 1e-5 differences mean
    a real mistake: weights ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02^2), BatchNorm statistics
    and norm weights near their defaults but not equal to them.
    """
    if dtype != "float32":  # num_batches_tracked: unused in eval mode
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    generator = _generator(seed, key)
    leaf = key.rsplit(".", 1)[-1]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=generator) * (high - low) + low

    if key == "logit_scale":
        return uniform(math.log(10.0), math.log(50.0))
    if leaf == "running_var":
        return uniform(0.5, 1.5)
    if leaf == "running_mean":
        return uniform(-0.2, 0.2)
    if leaf.startswith("layer_scale"):
        return uniform(0.05, 0.2)
    if leaf in ("pos_embed", "cls_token") or key.endswith("embedding_layer.weight"):
        return torch.randn(shape, generator=generator) * 0.02
    if leaf in ("proj", "projection_layer"):  # Apple's bare projections: x @ W, W is [in, out]
        return torch.randn(shape, generator=generator) * shape[0] ** -0.5
    if leaf == "bias":
        return uniform(-0.1, 0.1)
    if len(shape) == 1:  # BatchNorm / LayerNorm weights
        return uniform(0.8, 1.2)
    if leaf != "weight":
        raise ValueError(f"no recipe rule for {key} {shape}: add one (and bump RECIPE_VERSION)")
    return torch.randn(shape, generator=generator) * math.prod(shape[1:]) ** -0.5


def recipe_state_dict(manifest: list[list[Any]], seed: int) -> dict[str, torch.Tensor]:
    """A whole state_dict from a manifest of ``[key, shape, dtype]`` rows."""
    return {key: recipe_tensor(key, shape, dtype, seed) for key, shape, dtype in manifest}


def model_seed(name: str) -> int:
    return list(V1_NAMES).index(name)


def recipe_images(size: int) -> torch.Tensor:
    """The fixed image batch for a resolution: [NUM_IMAGES, 3, size, size] in [0, 1)."""
    return torch.rand(NUM_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(IMAGE_SEED))


def probe_image():
    """The fixed PIL image (PROBE_HW, RGB noise) whose preprocessing is compared."""
    from PIL import Image

    generator = torch.Generator().manual_seed(PROBE_SEED)
    pixels = (torch.rand(*PROBE_HW, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def as_bytes(pixels: torch.Tensor) -> torch.Tensor:
    """Preprocessing output in [0, 1] -> uint8; exact because V1 preprocessing is ToTensor (x / 255)."""
    scaled = pixels * 255
    rounded = scaled.round()
    if not bool(((scaled - rounded).abs() < 1e-3).all()):
        raise ValueError(
            "preprocessing output is not a multiple of 1/255: not ToTensor without normalization"
        )
    return rounded.to(torch.uint8)


def manifest_of(state_dict: dict[str, torch.Tensor]) -> list[list[Any]]:
    return [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in state_dict.items()
    ]


# -- running Apple's code ---------------------------------------------------------------------


def _check_checkout(checkout: Path) -> str:
    """The checkout's commit; refuses any other than APPLE_COMMIT."""
    if not (checkout / "mobileclip" / "__init__.py").is_file():
        raise SystemExit(
            f"{checkout} has no mobileclip/__init__.py: pass the root of an {APPLE_REPO} checkout."
        )
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(
            f"cannot read the commit of {checkout} ({error}); pass a git checkout of {APPLE_REPO} at "
            f"{APPLE_COMMIT} (git clone, then git checkout {APPLE_COMMIT[:8]})."
        ) from error
    if head != APPLE_COMMIT:
        raise SystemExit(
            f"{checkout} is at {head[:12]}, the golden data is pinned to {APPLE_COMMIT[:12]}: run "
            f"`git -C {checkout} checkout {APPLE_COMMIT}` (or change APPLE_COMMIT on purpose)."
        )
    return head


def _import_apple(checkout: Path):
    sys.path.insert(0, str(checkout))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its `timm.models.layers` imports
        import mobileclip
        import mobileclip.modules.common.mobileone as mobileone
    if not Path(mobileclip.__file__).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(
            f"imported mobileclip from {mobileclip.__file__}, not from {checkout}: uninstall it first."
        )
    return mobileclip, mobileone.reparameterize_model


def _outputs(model, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        image_embeddings, text_embeddings, scale = model(images, tokens)
        return dict(
            image=model.encode_image(images),
            text=model.encode_text(tokens),
            logits=scale * image_embeddings @ text_embeddings.T,
        )


def generate(checkout: Path, out_dir: Path) -> None:
    commit = _check_checkout(checkout)
    mobileclip, reparameterize_model = _import_apple(checkout)
    tensors: dict[str, torch.Tensor] = {}
    manifests: dict[str, dict] = {}
    summary: dict[str, Any] = dict(
        repo=APPLE_REPO,
        commit=commit,
        recipe_version=RECIPE_VERSION,
        torch=torch.__version__,
        captions=CAPTIONS,
        inputs={},
        preprocess={},
        models={},
    )
    probe = probe_image()
    summary["probe_sha256"] = tensor_digest(torch.frombuffer(bytearray(probe.tobytes()), dtype=torch.uint8))
    for name, apple_name in V1_NAMES.items():
        started = time.time()
        size = IMAGE_SIZES[name]
        model, _, preprocess = mobileclip.create_model_and_transforms(apple_name, reparameterize=False)
        manifest = manifest_of(model.state_dict())
        model.load_state_dict(recipe_state_dict(manifest, model_seed(name)), strict=True)
        model.eval()
        images = recipe_images(size)
        summary["inputs"][str(size)] = tensor_digest(images)
        tokens = mobileclip.get_tokenizer(apple_name)(CAPTIONS)
        if "tokens" in tensors and not torch.equal(tensors["tokens"], tokens.to(torch.int32)):
            raise SystemExit(f"{apple_name} tokenizes differently from the previous model")
        tensors["tokens"] = tokens.to(torch.int32)  # one tokenizer for every V1 model (checked)
        fused = reparameterize_model(model)
        for prefix, module in (("", model), ("fused_", fused)):
            for key, value in _outputs(module, images, tokens).items():
                tensors[f"{name}/{prefix}{key}"] = value.contiguous()
        pixels = as_bytes(preprocess(probe))
        summary["preprocess"][str(size)] = dict(shape=list(pixels.shape), sha256=tensor_digest(pixels))
        tensors[f"preprocess/{size}"] = pixels[:, ::PREPROCESS_STRIDE, ::PREPROCESS_STRIDE].contiguous()
        manifests[name] = dict(unfused=manifest, fused=manifest_of(fused.state_dict()))
        summary["models"][name] = dict(
            apple_name=apple_name,
            image_size=size,
            seed=model_seed(name),
            keys=len(manifest),
            fused_keys=len(manifests[name]["fused"]),
            max_abs={key: float(tensors[f"{name}/{key}"].abs().max()) for key in ("image", "text", "logits")},
        )
        print(f"{name}: {len(manifest)} keys, {time.time() - started:.1f} s", flush=True)
    summary["preprocess_stride"] = PREPROCESS_STRIDE
    _write(out_dir, summary, manifests, tensors)


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _write(out_dir: Path, summary: dict, manifests: dict, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_bytes = gzip.compress(json.dumps(manifests, separators=(",", ":")).encode(), mtime=0)
    _replace(out_dir / "manifests.json.gz", manifest_bytes)
    _replace(out_dir / "outputs.safetensors", save(dict(sorted(tensors.items()))))
    _replace(out_dir / "golden.json", (json.dumps(summary, indent=1) + "\n").encode())
    for path in sorted(out_dir.iterdir()):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkout", type=Path, help=f"root of a git checkout of {APPLE_REPO} at {APPLE_COMMIT[:8]}"
    )
    parser.add_argument(
        "--out", type=Path, default=DATA_DIR, help="output folder (default: tests/data/apple_v1)"
    )
    args = parser.parse_args(argv)
    generate(args.checkout, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
