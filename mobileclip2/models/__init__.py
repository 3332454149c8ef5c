"""Model families that upstream timm/open_clip may lack: one module per family.

This module is torch-free data: the MCi table and the timm names each family module defines, so the
plugin can ask ``timm.is_model(name)`` before importing (and only import a family that is missing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MCiVariant:
    """One row of the MCi table: stage depths and widths, and which released towers use it.

    The number of stages selects the tower generation (4: MobileCLIP, 5: MobileCLIP2-S3/S4); see
    ``mobileclip2.models.mci._model_args`` for what each generation means in layers.
    """

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    doc: str


# The MCi family (numbers from the MobileCLIP and MobileCLIP2 papers / Apple's released configs).
MCI_VARIANTS: dict[str, MCiVariant] = {
    "fastvit_mci0": MCiVariant((2, 6, 10, 2), (64, 128, 256, 512), "MobileCLIP-S0 / MobileCLIP2-S0"),
    "fastvit_mci1": MCiVariant((4, 12, 20, 4), (64, 128, 256, 512), "MobileCLIP-S1"),
    "fastvit_mci2": MCiVariant((4, 12, 24, 4), (80, 160, 320, 640), "MobileCLIP-S2 / MobileCLIP2-S2"),
    "fastvit_mci3": MCiVariant((2, 12, 24, 4, 2), (96, 192, 384, 768, 1536), "MobileCLIP2-S3"),
    "fastvit_mci4": MCiVariant((2, 12, 24, 4, 4), (128, 256, 512, 1024, 2048), "MobileCLIP2-S4"),
}


# timm backbone name -> module defining it (in that module's ``BACKBONES``, registered by the plugin).
BACKBONE_MODULES: dict[str, str] = {
    **{name: "mobileclip2.models.mci" for name in MCI_VARIANTS},
    "vit_base_mci_224": "mobileclip2.models.vit_mci",
}
