"""Model families that upstream timm/open_clip may lack: one module per family.

This module is torch-free data about the families: the timm names each family module defines, so
the plugin can ask ``timm.is_model(name)`` before importing (and only import a family that is
missing), and where Apple's original releases live.
"""

from __future__ import annotations

# timm backbone name -> module defining it (listed in that module's ``BACKBONES``; registered by
# the plugin for the names the installed timm lacks).
BACKBONE_MODULES: dict[str, str] = {
    "fastvit_mci0": "mobileclip2.models.mci",
    "fastvit_mci1": "mobileclip2.models.mci",
    "fastvit_mci2": "mobileclip2.models.mci",
    "fastvit_mci3": "mobileclip2.models.mci",
    "fastvit_mci4": "mobileclip2.models.mci",
    "vit_base_mci_224": "mobileclip2.models.vit_mci",
}

# Apple's original MobileCLIP releases: the download folder of its ``mobileclip_*.pt`` files, and
# the prefix of the image trunk's tensors in them (apple/ml-mobileclip's V1 package layout).
APPLE_RELEASE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileclip/"
APPLE_IMAGE_PREFIX = "image_encoder.model."


def apple_release_source(release: str | None, hub_id: str) -> dict[str, str]:
    """Where a timm pretrained tag loads from: Apple's release file ``release`` (its Hub copy
    ``hub_id`` and the direct URL), or, for ``release=None``, timm's own Hub copy."""
    if release is None:
        return {"hf_hub_id": hub_id, "url": ""}
    return {"hf_hub_id": hub_id, "url": f"{APPLE_RELEASE_URL}{release}.pt"}


def rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    """``key`` with each (old, new) substring replacement of ``table`` applied in order: how a
    foreign checkpoint layout's names become ours (each family module holds its own table)."""
    for old, new in table:
        key = key.replace(old, new)
    return key
