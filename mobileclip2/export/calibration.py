"""Calibration data for int8 and the fidelity report that says how much int8 cost.

int8 without representative inputs is a guess. ``--calibration-images DIR`` (any image files,
found recursively, sorted by path, preprocessed with the model's own transform) and
``--calibration-captions FILE`` (one caption per line, tokenized with the model's tokenizer) feed the
quantizer's observers. Every :data:`~mobileclip2.export.formats.HELD_OUT_EVERY`-th item is held
out: never shown to the observers, used only to report fidelity on data the calibration did not see.

Fidelity, per tower: the cosine of the int8 embeddings to the fp32 (PyTorch) ones on the calibration
and the held-out inputs (mean and minimum), and zero-shot agreement: over every image, whether the
int8 model's top-1 label equals the fp32 model's. The labels are the image sub-folder names
(prompt ``"a photo of a {label}."``) when the images sit in two or more sub-folders, else the captions.

Without calibration data the export calibrates on synthetic inputs (normal-noise images, random
token ids) and warns that fidelity is unmeasured; random-weight test models are in the same position
(their activations are not representative), so fidelity must be measured with real weights and images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportParityError
from .formats import HELD_OUT_EVERY, IMAGE_SUFFIXES
from .parity import cosines
from .towers import Geometry

SYNTHETIC_COUNT = 8
UNMEASURED_WARNING = (
    "int8 export without --calibration-images/--calibration-captions: the quantizer is calibrated on "
    "synthetic inputs (noise images, random tokens), so the int8 fidelity to real data is UNMEASURED. "
    "Pass a few hundred of your own images and captions to calibrate and measure it."
)


@dataclass
class CalibrationSet:
    """Preprocessed inputs per tower, split into calibration and held-out rows."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: list[str] = field(default_factory=list)
    """Texts zero-shot agreement ranks (class prompts or captions); empty: agreement not measured."""
    label_tokens: torch.Tensor | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return bool(self.source.get("synthetic"))

    def inputs(self, tower: str) -> torch.Tensor:
        return self.images if tower == "image" else self.tokens

    def split(self, tower: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibration rows, held-out rows) of one tower's inputs."""
        rows = self.inputs(tower)
        held = held_out_mask(len(rows))
        return rows[~held], rows[held]


def held_out_mask(count: int) -> torch.Tensor:
    """Every HELD_OUT_EVERY-th row (1-based) is held out, when there are at least two rows."""
    index = torch.arange(count)
    mask = (index % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    return mask if count >= 2 else torch.zeros(count, dtype=torch.bool)


def image_files(directory: str | os.PathLike) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--calibration-images {str(directory)!r} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"--calibration-images {str(directory)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def read_captions(path: str | os.PathLike) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    captions = [line for line in lines if line]
    if not captions:
        raise ValueError(f"--calibration-captions {str(path)!r} holds no captions (one per line expected)")
    return captions


def load_calibration(
    geometry: Geometry,
    *,
    images: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    preprocess: Callable[[Any], torch.Tensor] | None = None,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    seed: int = 0,
) -> CalibrationSet:
    """Load the user's calibration data; synthetic inputs (with a warning) for what is missing."""
    generator = torch.Generator().manual_seed(seed)
    source: dict[str, Any] = {}
    labels: list[str] = []
    if images is not None:
        if preprocess is None:
            raise ValueError("calibration images need the model's preprocessing transform (preprocess=...)")
        from PIL import Image

        files = image_files(images)
        with torch.no_grad():
            image_batch = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
        folders = sorted({f.parent.relative_to(Path(images)).as_posix() for f in files} - {"."})
        if len(folders) >= 2:
            labels = [f"a photo of a {folder.replace('_', ' ')}." for folder in folders]
        source["images"] = {"directory": Path(images).name, "count": len(files)}
    else:
        image_batch = geometry.random("image", SYNTHETIC_COUNT, generator)
    if captions is not None:
        if tokenizer is None:
            raise ValueError("calibration captions need the model's tokenizer (tokenizer=...)")
        texts = read_captions(captions)
        token_batch = tokenizer(texts).long()
        labels = labels or texts
        source["captions"] = {"file": Path(captions).name, "count": len(texts)}
    else:
        token_batch = geometry.random("text", SYNTHETIC_COUNT, generator)
    if images is None or captions is None:
        source["synthetic"] = [t for t, given in (("image", images), ("text", captions)) if given is None]
        warnings.warn(UNMEASURED_WARNING, stacklevel=3)
    label_tokens = tokenizer(labels).long() if labels and tokenizer is not None else None
    if label_tokens is None:
        labels = []
    return CalibrationSet(image_batch, token_batch, labels, label_tokens, source)


def cosine_summary(got: np.ndarray, want: np.ndarray) -> dict[str, Any] | None:
    if len(want) == 0:
        return None
    values = cosines(got, want)
    return {"count": int(len(values)), "mean": float(values.mean()), "min": float(values.min())}


def top1_agreement(image_a: np.ndarray, text_a: np.ndarray, image_b: np.ndarray, text_b: np.ndarray) -> float:
    """Fraction of images whose top-1 label (highest cosine over label embeddings) is the same for
    the pair (image_a, text_a) and the pair (image_b, text_b)."""

    def top1(image: np.ndarray, text: np.ndarray) -> np.ndarray:
        image = image / np.linalg.norm(image, axis=1, keepdims=True)
        text = text / np.linalg.norm(text, axis=1, keepdims=True)
        return (image @ text.T).argmax(axis=1)

    return float((top1(image_a, text_a) == top1(image_b, text_b)).mean())


def check_fidelity(label: str, report: dict[str, Any], min_cosine: float | None) -> None:
    """Raise ExportParityError when a mean cosine of ``report`` is below ``min_cosine``."""
    if min_cosine is None:
        return
    for split in ("calibration", "held_out"):
        summary = report.get(split)
        if summary is not None and not summary["mean"] >= min_cosine:
            raise ExportParityError(
                f"{label}: int8 embeddings reach a mean cosine of {summary['mean']:.4f} to fp32 on the "
                f"{split.replace('_', '-')} set ({summary['count']} inputs), "
                f"below the threshold {min_cosine}. "
                "Calibrate on more representative images/captions, or export fp32 (drop --int8). Nothing "
                "was written under the final names."
            )


def check_agreement(names: dict[str, str], agreement: dict[str, Any], min_agreement: float | None) -> None:
    """Raise ExportParityError when a zero-shot top-1 agreement of ``agreement`` (int8 image tower,
    int8 text tower, both) is below ``min_agreement``, naming the tower and the number."""
    if min_agreement is None:
        return
    for key, label in (("int8_image_tower", "image"), ("int8_text_tower", "text"), ("int8_both", "both")):
        value = agreement[key]
        if not value >= min_agreement:
            what = names[label] if label in names else f"{names['image']} with {names['text']}"
            raise ExportParityError(
                f"{what}: zero-shot top-1 agreement with fp32 is {value:.1%} "
                f"over {agreement['images']} images and "
                f"{agreement['labels']} labels, below the threshold {min_agreement:.0%} (--min-agreement). "
                "Calibrate on more representative images/captions, or export fp32 (drop --int8). Nothing "
                "was written under the final names."
            )
