"""Small things the export tests share: a tiny open_clip model and a tiny labelled calibration set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch

TINY_PREPROCESS = {
    "size": 32,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "resize_mode": "shortest",
}


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A two-tower open_clip CLIP small enough to export in seconds (pipeline tests, not numerics
    of MobileCLIP blocks: those use the real S0 models)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    )
    return model.eval()


def small_text_clip(seed: int = 0) -> torch.nn.Module:
    """A small CLIP whose text tower is shaped like MobileCLIP2-S0's where int8 calibration matters:
    no causal mask (every token attends to the padding), CLIP's tokenizer, vocabulary and context
    (77), but 2 layers of width 128; the image tower is tiny_clip's."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=77, vocab_size=49408, width=128, heads=2, layers=2, no_causal_mask=True
        ),
    )
    return model.eval()


def clip_tokenizer():
    """The tokenizer of small_text_clip: OpenAI CLIP's BPE (what the MobileCLIP models use)."""
    return open_clip.get_tokenizer("ViT-B-32")


def tiny_tokenizer(texts: list[str]) -> torch.Tensor:
    """Deterministic toy tokenizer for the tiny model: [start] + letters + [end], context 8."""
    rows = torch.zeros(len(texts), 8, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [62] + [1 + (ord(c) % 60) for c in text[:6]] + [63]
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def write_calibration_set(root: Path, per_class: int = 3) -> tuple[Path, Path]:
    """Images in two labelled folders (distinct colours plus noise) and a caption file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = root / "images"
    for label, colour in (("red_thing", (200, 60, 40)), ("blue_thing", (40, 80, 200))):
        (images / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images / label / f"{i}.png")
    captions = root / "captions.txt"
    captions.write_text("a red thing\na blue thing\na dog on grass\nsoup\n", encoding="utf-8")
    return images, captions
