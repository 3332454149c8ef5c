"""Apple's V1 `mobileclip` package (vendored, frozen: tests/fixtures/apple_v1) as a reference model.

The fixture is Apple's code unmodified; it imports itself as the top-level package `mobileclip`,
so this helper puts the fixture directory first on sys.path, on first use only (importing it
registers Apple's mci0/mci1/mci2/vit_b16 in timm's model registry, which the other tests should
not see at collection time).

Random initialisation leaves every BatchNorm at mean 0 / var 1 / weight 1 / bias 0, every layer
scale at 1e-5 and the text projection uninitialised (Apple builds it with torch.empty), which
would let a converter swap BatchNorms or drop a branch unnoticed. `build_v1` therefore replaces
every constant-initialised tensor with random values before the comparison.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "apple_v1"
APPLE_COMMIT = "4144bb1f081a6bcb9bc9e6552dee3b29a9ef9855"

# OpenCLIP name -> Apple V1 config name (MobileCLIP-B (LT) shares the B architecture).
V1_NAMES = {
    "MobileCLIP-S0": "mobileclip_s0",
    "MobileCLIP-S1": "mobileclip_s1",
    "MobileCLIP-S2": "mobileclip_s2",
    "MobileCLIP-B": "mobileclip_b",
}


def import_mobileclip():
    """Apple's V1 package, imported from the fixture directory."""
    if str(FIXTURE_DIR) not in sys.path:
        sys.path.insert(0, str(FIXTURE_DIR))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its `timm.models.layers` imports
        import mobileclip
        import mobileclip.clip
    assert Path(mobileclip.__file__).resolve().is_relative_to(FIXTURE_DIR), mobileclip.__file__
    return mobileclip


def v1_config(name: str) -> dict:
    return json.loads((FIXTURE_DIR / "mobileclip" / "configs" / f"{V1_NAMES[name]}.json").read_text())


def randomize_constants(state_dict: dict, generator: torch.Generator) -> dict:
    """Random values for every tensor a fresh model initialises to a constant (or leaves empty)."""

    def rand(shape, low, high):
        return torch.rand(shape, generator=generator) * (high - low) + low

    out = {}
    for key, value in state_dict.items():
        leaf = key.rsplit(".", 1)[-1]
        if not value.is_floating_point():
            out[key] = value
        elif leaf == "running_var":
            out[key] = rand(value.shape, 0.5, 1.5)
        elif leaf == "running_mean":
            out[key] = rand(value.shape, -0.2, 0.2)
        elif leaf.startswith("layer_scale"):
            out[key] = rand(value.shape, 0.05, 0.2)
        elif leaf == "projection_layer":
            out[key] = torch.randn(value.shape, generator=generator) * value.shape[0] ** -0.5
        elif value.numel() > 1 and bool((value == value.flatten()[0]).all()):  # BN/LN weights, biases
            out[key] = value.flatten()[0] + rand(value.shape, -0.2, 0.2)
        else:
            out[key] = value
    return out


def build_v1(name: str, seed: int = 0) -> torch.nn.Module:
    """Apple's V1 CLIP for `name`, un-fused, eval mode, with every tensor random."""
    mobileclip = import_mobileclip()
    torch.manual_seed(seed)
    model = mobileclip.clip.CLIP(cfg=v1_config(name)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    model.load_state_dict(randomize_constants(model.state_dict(), generator))
    return model


def v1_preprocess(name: str):
    """Apple's V1 inference transform for `name` (bilinear resize, center crop, ToTensor)."""
    mobileclip = import_mobileclip()
    _, _, preprocess = mobileclip.create_model_and_transforms(V1_NAMES[name], reparameterize=False)
    return preprocess


def v1_reparameterize(model: torch.nn.Module) -> torch.nn.Module:
    """Apple's own fusing (a deep copy), for parity checks of ours."""
    import_mobileclip()
    from mobileclip.modules.common.mobileone import reparameterize_model

    return reparameterize_model(model)
