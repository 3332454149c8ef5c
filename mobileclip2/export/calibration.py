"""Calibration data for int8, the evaluation captions and the fidelity gate.

int8 without representative inputs is a guess. ``--calibration-images DIR`` (any image files,
found recursively, sorted by path, preprocessed with the model's own transform) and
``--calibration-captions FILE`` (one caption per line, tokenized with the model's tokenizer) feed the
quantizer's observers. Every :data:`~mobileclip2.export.formats.HELD_OUT_EVERY`-th item is held
out: never shown to the observers, used only to measure fidelity on data the calibration did not see.

The text tower is also evaluated on :func:`evaluation_captions`, real English captions of varied length,
from one word to paragraphs that fill the whole context, shipped with the package
(``mobileclip2/data/captions.txt``). They never calibrate: the user's captions calibrate, the built-in
ones evaluate, and a built-in caption that is also one of the user's is left out of the evaluation. A
held-out split drawn from the calibration source cannot see a calibration that misses real text: static
int8 calibrated on random full-context token ids passed a mean-cosine check on held-out random ids
(0.998) while real captions came out at 0.885, because real captions are mostly identical padding tokens
and their activations span ranges random ids never reach.

Fidelity, per tower: the cosine of the int8 embeddings to the fp32 (PyTorch) ones on every evaluated
set (calibration, held out, and for the text tower the built-in captions), mean and minimum; the
gate (:func:`check_fidelity`) is the minimum over all of them, since one query embedded wrongly is a
wrong search result however good the average. Zero-shot agreement: over every image, whether the
int8 model's top-1 label equals the fp32 model's. The labels are the image sub-folder names (prompt
``"a photo of a {label}."``) when the images sit in two or more sub-folders, else the captions.

``optimize(..., int8=True)`` calibrates its static text graphs (NNCF) on
:func:`builtin_calibration_captions` (``mobileclip2/data/calibration_captions.txt``, disjoint from the
evaluation captions, a few of them filling the context) and checks them on :func:`evaluation_captions`:
on real captions NNCF text int8 of MobileCLIP2-S0 reached a cosine of 0.998 to fp32, calibrated on
random ids 0.647. Static ranges hold only for the positions calibration reached: calibrated on captions
of at most 30 tokens, the same graph scored 0.918 on a 77-token caption while passing every shorter
one, hence the full-context captions in both files.

Without calibration data the export calibrates on synthetic inputs shaped like the real ones:
normal-noise images, and captions: random sequences of common English words through the model's
tokenizer (start token, words, end token, zero padding), or without a tokenizer, token rows of the
same shape (:func:`synthetic_tokens`); it warns that fidelity on the user's data is unmeasured.
Random-weight test models have unrepresentative activations, so fidelity must be measured with real
weights and images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ExportParityError
from ..shapes import caption_tokens
from .formats import HELD_OUT_EVERY, IMAGE_SUFFIXES
from .parity import cosines
from .towers import Geometry

EVALUATION_CAPTIONS = "data/captions.txt"
BUILTIN_CALIBRATION_CAPTIONS = "data/calibration_captions.txt"
"""The built-in evaluation captions, package data of ``mobileclip2`` (one per line)."""

SYNTHETIC_IMAGES = 8
SYNTHETIC_CAPTIONS = 32
SYNTHETIC_WORD_COUNT = (1, 80)
"""Fewest and most words of a synthetic caption: a one-word query to more than the context holds (the
tokenizer truncates), so static ranges cover every token position a real caption can reach."""

WORDS = tuple(
    """a an the of on in at with and under near by two three some many small large old young red blue
    green white black yellow wooden bright dark empty busy photo picture painting drawing close-up view
    man woman child boy girl people person dog cat bird horse cow fish car bus train bicycle boat plane
    street road city house room kitchen table chair bed window door tree flower grass field beach sea
    river lake mountain sky snow rain sun night morning food plate bowl cup pizza cake fruit book phone
    computer screen sign ball game player team standing sitting walking running riding eating holding
    playing looking sleeping parked flying""".split()
)
"""Common caption words the synthetic captions are drawn from."""

UNMEASURED_WARNING = (
    "int8 export without --calibration-images/--calibration-captions: the quantizer is calibrated on "
    "synthetic inputs (noise images, random word sequences), so the int8 fidelity on your data is "
    "UNMEASURED (the text tower is still checked on the built-in captions). Pass a few hundred of your "
    "own images and captions to calibrate and measure it."
)

SET_NAMES = {
    "calibration": "calibration set",
    "held_out": "held-out set",
    "captions": f"built-in evaluation captions (mobileclip2/{EVALUATION_CAPTIONS})",
    "random_inputs": "random inputs",
}
"""The evaluated sets a fidelity report may hold, as the gate's errors name them."""

INT8_REMEDY = (
    "Calibrate on representative images/captions (--calibration-images/--calibration-captions; captions as "
    "long as the ones you will embed), or export fp32 (drop --int8)."
)


@dataclass
class CalibrationSet:
    """Preprocessed inputs per tower (calibration and held-out rows) and the evaluation captions."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: list[str] = field(default_factory=list)
    """Texts zero-shot agreement ranks (class prompts or captions); empty: agreement not measured."""
    label_tokens: torch.Tensor | None = None
    source: dict[str, Any] = field(default_factory=dict)
    captions: torch.Tensor | None = None
    """The built-in evaluation captions, tokenized (None without a tokenizer)."""

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

    def evaluation(self, tower: str) -> dict[str, torch.Tensor]:
        """Every set one tower is evaluated on, by name (see SET_NAMES); empty sets left out."""
        calibration, held = self.split(tower)
        sets = {"calibration": calibration, "held_out": held}
        if tower == "text" and self.captions is not None:
            sets["captions"] = self.captions
        return {name: rows for name, rows in sets.items() if len(rows)}


def held_out_mask(count: int) -> torch.Tensor:
    """Every HELD_OUT_EVERY-th row (1-based) is held out, when there are at least two rows."""
    index = torch.arange(count)
    mask = (index % HELD_OUT_EVERY) == HELD_OUT_EVERY - 1
    return mask if count >= 2 else torch.zeros(count, dtype=torch.bool)


def _normalized(caption: str) -> str:
    return " ".join(caption.lower().split())


def _packaged_lines(name: str) -> list[str]:
    text = resources.files("mobileclip2").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def builtin_calibration_captions() -> list[str]:
    """Real captions of varied length for calibrating a text graph when the caller has none."""
    return _packaged_lines(BUILTIN_CALIBRATION_CAPTIONS)


def evaluation_captions(exclude: Iterable[str] = ()) -> list[str]:
    """The built-in evaluation captions, less any that are also in ``exclude`` (the user's calibration
    captions: a caption the observers saw says nothing about the ones they did not)."""
    seen = {_normalized(caption) for caption in exclude}
    return [line for line in _packaged_lines(EVALUATION_CAPTIONS) if _normalized(line) not in seen]


def synthetic_captions(count: int, generator: torch.Generator) -> list[str]:
    """``count`` random sequences of :data:`WORDS`, :data:`SYNTHETIC_WORD_COUNT` words long."""
    fewest, most = SYNTHETIC_WORD_COUNT
    lengths = torch.randint(fewest, most + 1, (count,), generator=generator).tolist()
    picks = torch.randint(len(WORDS), (sum(lengths),), generator=generator).tolist()
    captions, start = [], 0
    for length in lengths:
        captions.append(" ".join(WORDS[i] for i in picks[start : start + length]))
        start += length
    return captions


def synthetic_tokens(
    geometry: Geometry,
    count: int,
    generator: torch.Generator,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Caption-shaped token rows: :func:`synthetic_captions` through ``tokenizer``; without one, rows
    of the same shape (start id, random word ids, end id, zero padding; CLIP's convention of the two
    highest ids for start and end), as many words long. Never full-context random ids: those calibrate
    activation ranges real captions exceed (module docstring)."""
    if tokenizer is not None:
        return tokenizer(synthetic_captions(count, generator)).long()
    fewest, most = SYNTHETIC_WORD_COUNT
    lengths = torch.randint(fewest + 2, most + 3, (count,), generator=generator).tolist()
    return torch.cat([caption_tokens(1, geometry.context, geometry.vocab, n, generator) for n in lengths])


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
    """Load the user's calibration data (synthetic inputs, with a warning, for what is missing) and the
    built-in evaluation captions (tokenized when ``tokenizer`` is given)."""
    generator = torch.Generator().manual_seed(seed)
    source: dict[str, Any] = {}
    labels: list[str] = []
    texts: list[str] = []
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
        image_batch = geometry.random("image", SYNTHETIC_IMAGES, generator)
    if captions is not None:
        if tokenizer is None:
            raise ValueError("calibration captions need the model's tokenizer (tokenizer=...)")
        texts = read_captions(captions)
        token_batch = tokenizer(texts).long()
        labels = labels or texts
        source["captions"] = {"file": Path(captions).name, "count": len(texts)}
    else:
        token_batch = synthetic_tokens(geometry, SYNTHETIC_CAPTIONS, generator, tokenizer)
        source["synthetic_captions"] = {
            "count": SYNTHETIC_CAPTIONS,
            "words_per_caption": list(SYNTHETIC_WORD_COUNT),
            "tokenized": tokenizer is not None,
        }
    if images is None or captions is None:
        source["synthetic"] = [t for t, given in (("image", images), ("text", captions)) if given is None]
        warnings.warn(UNMEASURED_WARNING, stacklevel=3)
    evaluation = None
    if tokenizer is not None:
        kept = evaluation_captions(exclude=texts)
        evaluation = tokenizer(kept).long()
        source["evaluation_captions"] = {"file": f"mobileclip2/{EVALUATION_CAPTIONS}", "count": len(kept)}
    label_tokens = tokenizer(labels).long() if labels and tokenizer is not None else None
    if label_tokens is None:
        labels = []
    return CalibrationSet(image_batch, token_batch, labels, label_tokens, source, evaluation)


def cosine_summary(
    got: np.ndarray, want: np.ndarray, tokens: torch.Tensor | None = None
) -> dict[str, Any] | None:
    """Count, mean and minimum cosine; for token rows also how many tokens the worst row has (static
    int8 text ranges fail first on captions longer than any it was calibrated on)."""
    if len(want) == 0:
        return None
    values = cosines(got, want)
    summary = {"count": int(len(values)), "mean": float(values.mean()), "min": float(values.min())}
    if tokens is not None:
        summary["min_at_tokens"] = int((tokens[int(values.argmin())] != 0).sum())
    return summary


def top1_agreement(image_a: np.ndarray, text_a: np.ndarray, image_b: np.ndarray, text_b: np.ndarray) -> float:
    """Fraction of images whose top-1 label (highest cosine over label embeddings) is the same for
    the pair (image_a, text_a) and the pair (image_b, text_b)."""

    def top1(image: np.ndarray, text: np.ndarray) -> np.ndarray:
        image = image / np.linalg.norm(image, axis=1, keepdims=True)
        text = text / np.linalg.norm(text, axis=1, keepdims=True)
        return (image @ text.T).argmax(axis=1)

    return float((top1(image_a, text_a) == top1(image_b, text_b)).mean())


def worst_set(report: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, summary) of the evaluated set with the lowest minimum cosine in ``report`` (NaN lowest)."""
    summaries = [(name, report[name]) for name in SET_NAMES if report.get(name) is not None]
    if not summaries:
        return None
    return min(summaries, key=lambda item: item[1]["min"] if item[1]["min"] == item[1]["min"] else -np.inf)


def check_fidelity(
    label: str,
    report: dict[str, Any],
    min_cosine: float | None,
    what: str = "int8",
    remedy: str = INT8_REMEDY,
) -> None:
    """Raise ExportParityError when the minimum cosine over every evaluated set of ``report`` (see
    SET_NAMES) is below ``min_cosine``, naming the artifact, the set and the numbers."""
    worst = worst_set(report)
    if min_cosine is None or worst is None:
        return
    name, summary = worst
    if not summary["min"] >= min_cosine:
        where = (
            f", lowest on a {summary['min_at_tokens']}-token caption" if "min_at_tokens" in summary else ""
        )
        raise ExportParityError(
            f"{label}: {what} embeddings reach a minimum cosine of {summary['min']:.4f} to fp32 on the "
            f"{SET_NAMES[name]} ({summary['count']} inputs, mean {summary['mean']:.4f}{where}), below the "
            f"threshold {min_cosine} (--min-cosine, the minimum over every evaluated input). {remedy} "
            "Nothing was written under the final names."
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
