"""Models with weights that make every fused op matter, and inputs for them (shared by the
reparameterization, optimization, export and MobileCLIP-S0 tests).

Random initialisation leaves BatchNorm statistics at (0, 1) and layer scales at 1e-5, which would
hide mistakes in folding them.
"""

from __future__ import annotations

import open_clip
import torch
from seeded_weights import seed_model_
from torch import nn


def meta_model(name: str) -> nn.Module:
    """``name`` built on the meta device: shapes, keys and parameter counts without allocating or
    initialising weights. ``device="meta"`` alone is not enough: open_clip builds on the CPU and
    moves the model, so the default device must be meta while it builds (otherwise the large models
    allocate and initialise every weight on the CPU first).
    """
    with torch.device("meta"):
        return open_clip.create_model(name, device="meta")


def randomize_inference_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics/affines and layer scales, as a trained model has; the
    model's own weight matrices are kept (tools/seeded_weights.py, weights=False)."""
    return seed_model_(model, seed, weights=False)


def reference_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_inference_statistics(open_clip.create_model(name))


def inputs(model: nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 3, 256, 256, generator=generator)
    text = torch.randint(1, 49407, (batch, 77), generator=generator)
    text[:, 0] = 49406
    text[:, 10] = 49407  # end-of-text token: where MobileCLIP pools
    return image, text


def initialize_what_upstream_leaves_empty(model) -> None:
    """Seeded values for the parameters open_clip creates with ``torch.empty`` and never initializes.

    open_clip 2.24 - 3.3: CoCa's ``MultimodalTransformer.text_projection`` (open_clip PR 551 /
    issue 554). Left alone it holds whatever the heap held: zeros in a fresh process, NaN or huge
    values late in a long test session, where it made the CoCa captioner's sampling fail (CI, one
    run in several). Drawn like open_clip's other projections, N(0, width ** -0.5)."""
    decoder = getattr(model, "text_decoder", None)
    projection = getattr(decoder, "text_projection", None)
    if projection is not None:
        with torch.no_grad():
            projection.normal_(std=decoder.width**-0.5)
