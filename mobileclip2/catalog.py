"""What this package offers, as seen through the installed open_clip and timm.

Answers "which MobileCLIP names exist, which tags do they have, and is each one served by
upstream (native) or by us (backfilled)?" for the CLI and for users who want to iterate over
the family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .compat.registry import hub_location
from .configs import model_names
from .plugin import registration_state
from .shapes import image_height_width


def natural_key(name: str) -> list:
    """Sort 'MobileCLIP2-S10' after 'MobileCLIP2-S4' (numbers compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    tags: tuple[str, ...]
    config_native: bool  # open_clip ships the config itself
    image_backbone: str  # timm model name of the image tower
    backbone_native: bool  # timm ships the backbone itself
    text_tower: str  # "open_clip" transformer or one of our towers
    image_size: int
    embed_dim: int

    @property
    def source(self) -> str:
        return "native" if self.config_native and self.backbone_native else "backfilled"


def _describe(
    name: str, config: dict[str, Any], timm_backfilled: set[str], configs_backfilled: set[str]
) -> ModelInfo:
    from open_clip.pretrained import list_pretrained_tags_by_model

    vision = config["vision_cfg"]
    backbone = vision.get("timm_model_name", "open_clip VisionTransformer")
    return ModelInfo(
        name=name,
        tags=tuple(list_pretrained_tags_by_model(name)),
        config_native=name not in configs_backfilled,
        image_backbone=backbone,
        backbone_native=backbone not in timm_backfilled,
        text_tower=config["text_cfg"].get("text_tower", "open_clip"),
        image_size=image_height_width(config)[0],
        embed_dim=config["embed_dim"],
    )


def list_models() -> list[ModelInfo]:
    """Every open_clip name this package provides or vouches for, in natural order."""
    from open_clip import factory

    timm_state, open_clip_state = registration_state()
    names = model_names()
    infos = [
        _describe(
            name,
            factory.get_model_config(name),
            set(timm_state.timm_backfilled),
            set(open_clip_state.configs_backfilled),
        )
        for name in names
    ]
    return sorted(infos, key=lambda info: (not info.name.startswith("MobileCLIP-"), natural_key(info.name)))


def model_info(name: str) -> ModelInfo:
    for info in list_models():
        if info.name == name:
            return info
    from .errors import UnknownModelError

    raise UnknownModelError(name, [info.name for info in list_models()])


def pretrained_cfgs(name: str) -> dict[str, dict[str, Any]]:
    """Tag -> pretrained cfg as open_clip will use it (native entry if upstream has one)."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    return {tag: get_pretrained_cfg(name, tag) for tag in list_pretrained_tags_by_model(name)}


def hub_files(name: str) -> dict[str, str]:
    """Tag -> 'repo_id/filename' each tag downloads (open_clip tries .safetensors first)."""
    return {
        tag: "/".join(hub_location(cfg)) for tag, cfg in pretrained_cfgs(name).items() if cfg.get("hf_hub")
    }
