"""Models with weights that make every fused op matter, and inputs for them (shared by the
reparameterization, optimization, export and MobileCLIP-S0 tests).

Random initialisation leaves BatchNorm statistics at (0, 1) and layer scales at 1e-5, which would
hide mistakes in folding them.
"""

from __future__ import annotations

import open_clip
import torch
from torch import nn


@torch.no_grad()
def randomize_inference_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics/affines and layer scales, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.copy_(1 + torch.randn(n, generator=generator) * 0.1)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    for name, param in model.named_parameters():
        if name.endswith("gamma"):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


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
