"""The one weight randomizer of the tests and tools: seeded values that make every branch matter.

Why not the models' own init: it leaves BatchNorm statistics at (0, 1), affines at (1, 0) and
layer scales at 1e-5, so a wrong fusion, mixer or attention block moves the output by about 1e-5,
below any tolerance. Here BatchNorm statistics and affines are non-trivial, layer scales are
0.02-0.1 and (with ``weights=True``) weight matrices keep activations O(1) through the depth of
the largest MCi trunk. Pure function of (keys, shapes, seed): the same on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["seeded_state", "seed_model_"]


def seeded_state(
    state: Mapping[str, torch.Tensor], seed: int = 0, *, weights: bool = True
) -> dict[str, torch.Tensor]:
    """A new state_dict with seeded values; ``weights=False`` keeps matrices/embeddings as given
    and only replaces what an init sets to constants (statistics, affines, layer scales)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked
            out[key] = torch.zeros_like(value)
            continue
        normal = torch.randn(value.shape, generator=generator)
        uniform = torch.rand(value.shape, generator=generator)
        if key.endswith("running_var"):
            out[key] = 0.5 + uniform
        elif key.endswith("running_mean"):
            out[key] = 0.1 * normal
        elif key.endswith("gamma"):
            out[key] = 0.02 + 0.08 * uniform
        elif value.ndim == 1:
            out[key] = (1.0 if key.endswith("weight") else 0.0) + 0.05 * normal
        elif not weights:
            out[key] = value.clone()
        elif key.endswith("weight"):
            out[key] = normal / math.sqrt(value[0].numel())
        else:  # position embedding, class token
            out[key] = 0.02 * normal
    return out


@torch.no_grad()
def seed_model_(model: torch.nn.Module, seed: int = 0, *, weights: bool = True) -> torch.nn.Module:
    """Load :func:`seeded_state` of ``model`` into it (strict), in eval mode; returns the model."""
    model.load_state_dict(seeded_state(model.state_dict(), seed, weights=weights), strict=True)
    return model.eval()
