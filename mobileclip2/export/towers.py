"""The two towers of an open_clip model as export-ready modules, and the inputs that drive them.

Users deploy MobileCLIP towers separately (embed a photo library once, embed queries on demand;
open_clip #186, immich #4700), so each tower is its own artifact: one tensor in, one embedding out.
The model is reparameterized (:func:`mobileclip2.reparameterize`) and its affines folded before
export (:func:`prepared`), never the training-time graph.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..shapes import image_height_width, token_geometry

TOWERS = ("image", "text")


class TowerModule(nn.Module):
    """``model.encode_image`` or ``model.encode_text`` as a module with a single tensor in and out.

    ``widen_tokens`` casts token ids to int64 inside the graph (Core ML takes int32 inputs and
    converts the cast away); without it int32 ids flow through as they are, which LiteRT needs: it
    cannot legalize an int64 ``argmax`` (the EOT pooling); torch's embedding and argmax accept int32.
    """

    def __init__(self, model: nn.Module, tower: str, normalize: bool = False, widen_tokens: bool = False):
        super().__init__()
        self.model = model
        self.tower = tower
        self.normalize = normalize
        self.widen_tokens = widen_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tower == "image":
            return self.model.encode_image(x, normalize=self.normalize)
        if self.widen_tokens:
            x = x.long()
        return self.model.encode_text(x, normalize=self.normalize)


def tower_module(
    model: nn.Module, tower: str, normalize: bool = False, widen_tokens: bool = False
) -> nn.Module:
    """One tower of ``model`` as an eval-mode module (shares the model's weights)."""
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; expected one of {TOWERS}")
    return TowerModule(model, tower, normalize, widen_tokens).eval()


def image_encoder(model: nn.Module, normalize: bool = False) -> nn.Module:
    """``model.encode_image`` as an eval-mode module."""
    return tower_module(model, "image", normalize)


def text_encoder(model: nn.Module, normalize: bool = False) -> nn.Module:
    """``model.encode_text`` as an eval-mode module."""
    return tower_module(model, "text", normalize)


def prepared(model: nn.Module) -> nn.Module:
    """A reparameterized, eval-mode, grad-free copy of ``model`` with its inference-time affines
    folded (the caller's model is untouched).

    Folding (:func:`mobileclip2.inference.fold.fold_affines`: BatchNorms into the conv or ``qkv`` next to
    them, layer scales into the layer producing the scaled branch) leaves every artifact with fewer
    ops, and leaves no BatchNorm in the graph: torchao's ``convert_pt2e`` (0.18) then skips its
    conv-BN QAT folding pass, which otherwise exports some 120 pattern graphs for every int8 tower
    that still holds a BatchNorm (pytorch/pytorch PR 116440 added that skip)."""
    from ..inference.fold import fold_affines
    from ..reparam import reparameterize

    model = fold_affines(reparameterize(copy.deepcopy(model).eval(), inplace=True))
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class Geometry:
    """What the towers take: image size, token context and vocabulary size."""

    height: int
    width: int
    context: int
    vocab: int

    def example(self, tower: str, batch: int = 1) -> torch.Tensor:
        """A constant input of the right shape and dtype (tracing only)."""
        if tower == "image":
            return torch.zeros(batch, 3, self.height, self.width)
        return torch.ones(batch, self.context, dtype=torch.long)

    def random(self, tower: str, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Random inputs for parity checks: normal images, token ids that avoid the padding id 0."""
        if tower == "image":
            return torch.randn(batch, 3, self.height, self.width, generator=generator)
        return torch.randint(1, self.vocab, (batch, self.context), generator=generator)


def geometry(model: nn.Module, preprocess_cfg: dict[str, Any]) -> Geometry:
    height, width = image_height_width(model, preprocess_cfg)
    return Geometry(height, width, *token_geometry(model))


def embed(module: nn.Module, inputs: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """PyTorch embeddings of ``inputs`` in chunks (the reference every artifact is compared with)."""
    with torch.no_grad():
        return torch.cat([module(chunk) for chunk in inputs.split(batch)])
