"""Reparameterize (fuse) a whole CLIP model for inference and export.

MobileCLIP trains with multi-branch blocks (MobileOne, RepMixer, RepCPE, ReparamLargeKernelConv
in the image tower; RepMixer in the MCt text tower) that collapse into single convolutions for
inference: same outputs, fewer parameters and much less latency. Each such block offers a
``reparameterize()`` (timm's and ours), so fusing a model is a walk over its modules, like
``timm.utils.reparameterize_model``. We keep our own walk because several upstream blocks break
when fused twice (see compat.timm_layers.is_fused) and because fusing a model in training mode
deserves a warning.

Fusing uses BatchNorm running statistics and removes the branches, so it is the step *after*
training and *before* inference or export: a fused model can no longer be trained as before.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from .compat.timm_layers import fuse_method, is_fused

__all__ = ["reparameterize"]


def _fuse(module: nn.Module) -> nn.Module:
    """Fuse one module in place, or return its fused replacement (timm's ``fuse()`` protocol)."""
    if is_fused(module):
        return module
    mode = module.training
    found = fuse_method(module)
    if found is None:
        return module
    name, method = found
    if name == "fuse":  # returns a replacement
        fused = method()
    else:  # fuses in place
        method()
        fused = module
    return fused.train(mode)  # the new convs start in training mode; keep the block's mode


def _fuse_tree(parent: nn.Module) -> None:
    # Parents before children: a block that fuses its own branches removes them from the walk.
    for name, child in list(parent.named_children()):
        fused = _fuse(child)
        if fused is not child:
            setattr(parent, name, fused)
        _fuse_tree(fused)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every reparameterizable block of ``model`` (both towers) for inference or export.

    Works on any model built by open_clip (ours or native): modules with nothing to fuse are left
    as they are, and fusing an already fused model changes nothing. Returns a fused deep copy,
    or ``model`` itself when ``inplace=True``. Call ``model.eval()`` first: fusing in training
    mode warns, because BatchNorm statistics are frozen into the weights.
    """
    if any(module.training for module in model.modules()):
        warnings.warn(
            "reparameterize() was called on a model in training mode. Fusing freezes BatchNorm running "
            "statistics into the weights and removes the training branches: reparameterize after "
            "training, for inference/export only, and call model.eval() first.",
            UserWarning,
            stacklevel=2,
        )
    if not inplace:
        model = copy.deepcopy(model)
    model = _fuse(model)
    _fuse_tree(model)
    return model
