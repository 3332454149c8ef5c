"""Input shapes: the one place that turns the ways open_clip and torchvision write an image size into
(height, width), and that reads the image size and the token context / vocabulary an open_clip model
takes (open_clip's own defaults where the model or config leaves them out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["caption_tokens", "height_width", "image_height_width", "token_geometry"]


def height_width(size: int | Sequence[int]) -> tuple[int, int]:
    """A size as open_clip and torchvision write it (``s``, ``[s]``, ``(h, w)``, or a longer shape
    whose last two entries are height and width) -> ``(height, width)``."""
    if isinstance(size, int):
        return size, size
    size = [int(value) for value in size]
    if len(size) == 1:
        return size[0], size[0]
    return size[-2], size[-1]


def image_height_width(source: Any, preprocess_cfg: dict[str, Any] | None = None) -> tuple[int, int]:
    """(height, width) of the images a model takes.

    ``source`` is an open_clip model (its visual tower's ``preprocess_cfg["size"]``, else
    ``visual.image_size``) or a model config dict (``vision_cfg.image_size``, open_clip's default
    when absent). An explicit ``preprocess_cfg`` (what an export or a transform was asked to use)
    wins over both.
    """
    size = (preprocess_cfg or {}).get("size")
    if size is None and isinstance(source, dict):
        size = source.get("vision_cfg", {}).get("image_size")
    elif size is None:
        visual = getattr(source, "visual", source)
        size = (getattr(visual, "preprocess_cfg", None) or {}).get("size") or getattr(
            visual, "image_size", None
        )
    if size is None:
        from .compat.registry import vision_cfg_default

        size = vision_cfg_default("image_size")
    return height_width(size)


def token_geometry(model: Any) -> tuple[int, int]:
    """(context length, vocabulary size) of an open_clip model's text tower."""
    from .compat.registry import text_cfg_default

    text = getattr(model, "text", model)
    found = []
    for key in ("context_length", "vocab_size"):
        value = getattr(text, key, None) or getattr(model, key, None) or text_cfg_default(key)
        found.append(int(value))
    return found[0], found[1]


def caption_tokens(
    batch: int, context: int, vocab: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    """Token rows shaped like a tokenizer's: start, ``length - 2`` words, end-of-text, zero padding.

    Start and end use the two highest ids (CLIP's convention, so argmax pooling finds the end).
    """
    import torch

    length = min(length, context)
    tokens = torch.zeros(batch, context, dtype=torch.long)
    tokens[:, 1 : length - 1] = torch.randint(1, vocab - 2, (batch, length - 2), generator=generator)
    tokens[:, 0] = vocab - 2
    tokens[:, length - 1] = vocab - 1
    return tokens
