"""Reinforce a plain image/caption webdataset: the shard writer behind `mobileclip2 reinforce`.

For every sample of every input shard (``KEY.jpg|png|jpeg|webp`` + ``KEY.txt``, optionally
``KEY.syn.json`` with synthetic captions already made elsewhere) this writes the same sample, with
its original bytes, plus what DR training reads (docs/training.md):

* ``paug.json``: ``{"param_aug": [...]}``, the parameters of ``num_augmentations`` random
  augmentations drawn from the augmentation config (Apple's layout, see augment.py);
* ``syn.json``: the input's synthetic captions, plus ``num_captions`` new ones under
  ``caption_key`` when a captioner (an open_clip CoCa model) is given;
* ``npz`` (float32) or ``pth.gz`` (bfloat16, ``bfloat16=True``): the teacher ensemble's normalized,
  concatenated embeddings -- ``image_emb`` [augmentations, D], ``text_emb`` [1, D] and, for every
  ``syn.json`` key matching ``syn_text_key_regex``, ``<key>_emb`` [captions, D].

Each output shard keeps its input's file name; ``config.json`` next to them records the
augmentation config (pass it as ``--dataset-reinforcement-config``), the teachers, their
embedding widths and logit scales (which training uses when the flags are not given).

The tensor a teacher embeds is the *replay* of the stored parameters at the config's size (then
resized/normalized per teacher, see teachers.py), i.e. exactly what training replays.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .augment import Augmentation, as_height_width, decode_image, enabled_steps
from .data import EMBEDDING_KEYS, _image_key
from .teachers import TeacherEnsemble, TeacherError

__all__ = ["DEFAULT_AUGMENTATION", "ReinforceOptions", "read_shard", "reinforce", "write_shard"]


# Apple's DataCompDR augmentation (training/configs/datacompdr12m.json); the crop size defaults to
# the largest teacher input size when not given.
DEFAULT_AUGMENTATION = {
    "normalize": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
    "rand_augment": {"enable": True, "p": 1.0},
    "random_resized_crop": {"interpolation": "bicubic", "size": None},
    "to_rgb": {"enable": True},
    "to_tensor": {"enable": True},
}


@dataclass
class ReinforceOptions:
    num_augmentations: int = 10
    augmentation: dict | None = None
    captioner: str | None = None
    captioner_pretrained: str | None = None
    num_captions: int = 5
    caption_key: str = "syn_text"
    syn_text_key_regex: str = r"^syn_text.*$"
    batch_size: int = 32
    bfloat16: bool = False
    seed: int = 0
    overwrite: bool = False


@dataclass
class ReinforceReport:
    shards: list[str] = field(default_factory=list)
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    config_path: str = ""
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Tar shards as lists of samples (dict of extension -> bytes, plus "__key__").
# ---------------------------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = path up to the first dot of the file name, extension = the rest."""
    directory, _, filename = name.rpartition("/")
    stem, dot, extension = filename.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    """All samples of a local tar shard, in order (members of a sample must be adjacent)."""
    samples: list[dict[str, Any]] = []
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = _split_name(member.name)
            if parts is None:
                continue
            key, extension = parts
            if not samples or samples[-1]["__key__"] != key or extension in samples[-1]:
                samples.append({"__key__": key})
            samples[-1][extension.lower()] = tar.extractfile(member).read()
    return samples


def write_shard(path: str | Path, samples: Iterable[Mapping[str, Any]]) -> None:
    """Write samples (bytes values) as a tar shard; written to a temp name, then renamed."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for sample in samples:
            for extension, value in sample.items():
                if extension.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size = len(value)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(value))
    partial.replace(path)


def encode_embeddings(embeddings: Mapping[str, torch.Tensor], bfloat16: bool) -> tuple[str, bytes]:
    """-> ("npz", float32 npz bytes) or ("pth.gz", gzip'd torch.save of bfloat16 tensors)."""
    if bfloat16:
        import gzip

        buffer = io.BytesIO()
        torch.save({key: value.to(torch.bfloat16).contiguous() for key, value in embeddings.items()}, buffer)
        return "pth.gz", gzip.compress(buffer.getvalue())
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{key: value.float().numpy() for key, value in embeddings.items()})
    return "npz", buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------


def augmentation_config(config: Mapping[str, Any] | None, teachers: TeacherEnsemble) -> dict[str, Any]:
    """The config to augment with: given or Apple's default, crop size defaulting to the largest teacher's."""
    config = copy.deepcopy(dict(config or DEFAULT_AUGMENTATION))
    crop = config.get("random_resized_crop")
    if isinstance(crop, dict) and crop.get("enable", True) and crop.get("size") is None:
        crop["size"] = list(teachers.max_size)
    config.setdefault(
        "normalize", {"mean": list(teachers.members[0].mean), "std": list(teachers.members[0].std)}
    )
    steps = enabled_steps(config)  # validates names
    crop = steps.get("random_resized_crop", steps.get("random_crop", steps.get("center_crop", {}))).get(
        "size"
    )
    if crop is not None:
        height, width = as_height_width(crop)
        small = [m.name for m in teachers.members if m.size[0] > height or m.size[1] > width]
        if small:
            raise TeacherError(
                f"augmentations are {height}x{width} px but teachers {small} take larger inputs "
                f"({[m.size for m in teachers.members]}); raise the crop size to the largest teacher's"
            )
    return config


def unit_range_augmentation(config: Mapping[str, Any]) -> Augmentation:
    """The config's pipeline without normalization: images in [0, 1]; each teacher normalizes its own."""
    config = {key: value for key, value in config.items() if key != "normalize"}
    return Augmentation.from_config(config)


# ---------------------------------------------------------------------------------------------
# Captioning (optional).
# ---------------------------------------------------------------------------------------------


class Captioner:
    """An open_clip CoCa model generating synthetic captions (top-p sampling, as Apple's DR generation)."""

    def __init__(self, name: str, pretrained: str | None, device):
        import open_clip

        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device
        )
        if not hasattr(self.model, "generate"):
            raise TeacherError(f"captioner {name!r} cannot generate text (not a CoCa model)")
        self.model.eval()
        self.device = device

    @torch.no_grad()
    def caption(self, images: Sequence, count: int) -> list[list[str]]:
        import open_clip

        batch = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        captions: list[list[str]] = [[] for _ in images]
        for _ in range(count):
            tokens = self.model.generate(batch, generation_type="top_p", top_p=0.9, fixed_output_length=True)
            for row, sequence in zip(captions, tokens.cpu()):
                text = open_clip.decode(sequence).split("<end_of_text>")[0].split("<start_of_text>")[-1]
                row.append(text.split(".")[0].strip())
        return captions


# ---------------------------------------------------------------------------------------------
# Reinforcing.
# ---------------------------------------------------------------------------------------------


def _syn_captions(sample: Mapping[str, Any]) -> dict[str, list[str]]:
    if "syn.json" not in sample:
        return {}
    stored = json.loads(sample["syn.json"])
    return {key: [value] if isinstance(value, str) else list(value) for key, value in stored.items()}


def reinforce_batch(
    samples: Sequence[dict[str, Any]],
    teachers: TeacherEnsemble,
    augmentation: Augmentation,
    options: ReinforceOptions,
    generator: torch.Generator,
    captioner: Captioner | None = None,
) -> list[dict[str, Any]]:
    """Add paug.json, syn.json and embeddings to decodable samples (others are returned as None)."""
    device = next(teachers.parameters()).device
    images = []
    for sample in samples:
        key = _image_key(sample)
        try:
            images.append(decode_image(sample[key]) if key and "txt" in sample else None)
        except Exception:  # noqa: BLE001 - an undecodable image skips the sample (reported in the summary)
            images.append(None)
    kept = [i for i, image in enumerate(images) if image is not None]
    if not kept:
        return [None] * len(samples)

    params, views = {i: [] for i in kept}, {i: [] for i in kept}
    for i in kept:
        for _ in range(options.num_augmentations):
            # The augmented view is what replaying the stored params gives, bit for bit
            # (tests/test_train_augment.py), so the teachers embed exactly what training replays.
            view, drawn = augmentation.augment(images[i], generator)
            views[i].append(view)
            params[i].append(augmentation.compress(drawn))
    image_emb = {i: [] for i in kept}
    for a in range(options.num_augmentations):
        batch = torch.stack([views[i][a] for i in kept]).to(device)
        for i, row in zip(kept, teachers.encode_unit_images(batch).cpu()):
            image_emb[i].append(row)

    syn = {i: _syn_captions(samples[i]) for i in kept}
    if captioner is not None:
        for i, captions in zip(kept, captioner.caption([images[i] for i in kept], options.num_captions)):
            syn[i][options.caption_key] = captions

    texts, owners = [], []
    for i in kept:
        texts.append(samples[i]["txt"].decode("utf-8"))
        owners.append((i, "text"))
        for key, captions in syn[i].items():
            if re.match(options.syn_text_key_regex, key):
                texts += captions
                owners += [(i, key)] * len(captions)
    text_emb: dict[tuple[int, str], list[torch.Tensor]] = {}
    for start in range(0, len(texts), options.batch_size):
        rows = teachers.encode_strings(texts[start : start + options.batch_size], device).cpu()
        for owner, row in zip(owners[start : start + options.batch_size], rows):
            text_emb.setdefault(owner, []).append(row)

    out: list[dict[str, Any] | None] = [None] * len(samples)
    for i in kept:
        sample = dict(samples[i])
        for stale in EMBEDDING_KEYS:
            sample.pop(stale, None)
        embeddings = {"image_emb": torch.stack(image_emb[i])}
        for (owner, key), rows in text_emb.items():
            if owner == i:
                embeddings[f"{key}_emb"] = torch.stack(rows)
        extension, payload = encode_embeddings(embeddings, options.bfloat16)
        sample[extension] = payload
        sample["paug.json"] = json.dumps({"param_aug": params[i]}).encode("utf-8")
        if syn[i]:
            sample["syn.json"] = json.dumps(syn[i]).encode("utf-8")
        out[i] = sample
    return out


def write_config(
    path: Path, config: Mapping[str, Any], teachers: TeacherEnsemble, options: ReinforceOptions
) -> None:
    """config.json in Apple's layout (model_name, pretrained, num_samples, reinforce) plus our record."""
    from .. import __version__

    record = {
        "model_name": ",".join(member.name for member in teachers.members),
        "pretrained": ",".join(member.pretrained or "N/A" for member in teachers.members),
        "num_samples": options.num_augmentations,
        "reinforce": {"image_augmentation": config},
        "teacher_dimension": teachers.dims,
        "teacher_logit_scale": teachers.logit_scales,
        "teacher_image_size": [list(member.size) for member in teachers.members],
        "syn_text_key_regex": options.syn_text_key_regex,
        "captioner": None
        if options.captioner is None
        else {
            "model": options.captioner,
            "pretrained": options.captioner_pretrained,
            "key": options.caption_key,
        },
        "embedding_format": "pth.gz (bfloat16)" if options.bfloat16 else "npz (float32)",
        "created_by": f"mobileclip2 {__version__} reinforce",
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def reinforce(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    teachers: TeacherEnsemble,
    options: ReinforceOptions | None = None,
    log: Callable[[str], None] = logging.info,
) -> ReinforceReport:
    """Write a reinforced copy of every input shard into ``output_dir`` (plus config.json)."""
    options = options or ReinforceOptions()
    if options.num_augmentations < 1:
        raise ValueError("num_augmentations must be >= 1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config = augmentation_config(options.augmentation, teachers)
    augmentation = unit_range_augmentation(config)
    captioner = None
    if options.captioner:
        captioner = Captioner(
            options.captioner, options.captioner_pretrained, next(teachers.parameters()).device
        )
    generator = torch.Generator().manual_seed(options.seed)
    report = ReinforceReport()
    for shard in inputs:
        shard = Path(shard)
        target = output_dir / shard.name
        if target.resolve() == shard.resolve():
            raise ValueError(f"output shard {target} would overwrite its input")
        if target.exists() and not options.overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
        samples = read_shard(shard)
        written = []
        for start in range(0, len(samples), options.batch_size):
            chunk = samples[start : start + options.batch_size]
            for raw, done in zip(
                chunk, reinforce_batch(chunk, teachers, augmentation, options, generator, captioner)
            ):
                if done is None:
                    reason = "no caption" if "txt" not in raw else "no decodable image"
                    report.skipped[reason] = report.skipped.get(reason, 0) + 1
                else:
                    written.append(done)
        write_shard(target, written)
        report.shards.append(str(target))
        report.samples += len(written)
        log(f"{shard} -> {target}: {len(written)} samples")
    write_config(output_dir / "config.json", config, teachers, options)
    report.config_path = str(output_dir / "config.json")
    report.seconds = time.perf_counter() - started
    return report
