"""Reinforce a plain image/caption webdataset: the shard writer behind `mobileclip2 reinforce`.

For every sample of every input shard (``KEY.jpg|png|jpeg|webp`` + ``KEY.txt``, optionally
``KEY.syn.json`` with synthetic captions already made elsewhere) this writes the same sample, with
its original bytes, plus what DR training reads, in the format of :mod:`mobileclip2.reinforce.shards`:
the parameters of ``num_augmentations`` random augmentations drawn from the augmentation config,
the input's synthetic captions plus ``num_captions`` new ones under ``caption_key`` when a
captioner (an open_clip CoCa model) is given, and the teacher ensemble's embeddings of every view,
the caption and each synthetic caption matching ``syn_text_key_regex``.

Each output shard keeps its input's file name; ``config.json`` next to them records the
augmentation config (pass it as ``--dataset-reinforcement-config``), the teachers, their
embedding widths and logit scales (which training uses when the flags are not given).

The tensor a teacher embeds is the *replay* of the stored parameters at the config's size (then
resized/normalized per teacher, see mobileclip2.teachers), i.e. exactly what training replays.

Scale (docs/training.md): under torchrun every rank takes every ``world_size``-th pending shard.
A sample's augmentations are drawn from a generator seeded by (seed, shard name, sample key) and
captions from one seeded by (seed, shard name, first key of the batch); batches never span shards.
So a shard's bytes depend on its content and the arguments only, not on the world size or on
which rank made it. Decoding and augmentation run in DataLoader workers, teachers in the main
process on the rank's device. What is finished is recorded in the output (:mod:`.manifest`), so a
rerun resumes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..augment import Augmentation, decode_image, enabled_steps
from ..shapes import height_width
from ..system import PRECISIONS, torch_dtype
from ..teachers import TeacherEnsemble, TeacherError, parse_teacher_specs, require_finite_weights
from . import distributed, storage
from .manifest import CONFIG, MANIFEST, RECORDS, Plan, plan_run, record_name
from .shards import (
    EMBEDDING_KEYS,
    encode_augmentation_params,
    encode_embeddings,
    encode_synthetic_captions,
    image_key,
    synthetic_captions,
)

__all__ = [
    "DEFAULT_AUGMENTATION",
    "ReinforceOptions",
    "ReinforceReport",
    "reinforce",
    "sample_seed",
]


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
    device: str = "auto"  # auto: this rank's CUDA device when there is one, else cpu
    precision: str = "auto"  # teachers' and captioner's dtype; auto: bf16 on CUDA, fp32 elsewhere
    num_workers: int = 0  # DataLoader processes decoding and augmenting (0: in the main process)
    progress: bool = False  # a tqdm bar per rank (images/s, ETA)


@dataclass
class ReinforceReport:
    shards: list[str] = field(default_factory=list)  # every output shard of the inputs (display paths)
    written: list[str] = field(default_factory=list)  # shard names written by this run (all ranks on rank 0)
    resumed: list[str] = field(default_factory=list)  # shard names found finished and skipped
    samples: int = 0  # samples written by this run
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_keys: list[dict] = field(default_factory=list)  # {"shard", "key", "reason"}
    devices: list[dict] = field(default_factory=list)  # per rank: device, images, seconds, images_per_s
    config_path: str = ""
    seconds: float = 0.0


def sample_seed(seed: int, shard: str, key: str) -> int:
    """The seed of one sample's augmentations: a function of (seed, shard name, key) only, so any
    rank, any world size and any batch order draw the same parameters for the sample."""
    digest = hashlib.sha256(f"{seed}\x00{shard}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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
        height, width = height_width(crop)
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
    """An open_clip CoCa model generating synthetic captions (top-p sampling, as Apple's DR generation).

    Runs under autocast in ``dtype`` on CUDA (weights stay float32: sampling is sensitive to bf16
    logits). Sampling draws from the global generator, seeded per batch for reproducibility."""

    def __init__(self, name: str, pretrained: str | None, device, dtype: torch.dtype = torch.float32):
        import open_clip

        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device
        )
        if not hasattr(self.model, "generate"):
            raise TeacherError(f"captioner {name!r} cannot generate text (not a CoCa model)")
        require_finite_weights(self.model, f"captioner {name!r}", pretrained)
        self.model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def caption(self, images: torch.Tensor | Sequence, count: int, seed: int = 0) -> list[list[str]]:
        """Preprocessed images [B, 3, H, W] (or PIL images) -> ``count`` captions each."""
        import open_clip

        if not isinstance(images, torch.Tensor):
            images = torch.stack([self.preprocess(image) for image in images])
        batch = images.to(self.device)
        captions: list[list[str]] = [[] for _ in range(batch.shape[0])]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for _ in range(count):
                with self._autocast():
                    tokens = self.model.generate(
                        batch, generation_type="top_p", top_p=0.9, fixed_output_length=True
                    )
                for row, sequence in zip(captions, tokens.cpu()):
                    text = open_clip.decode(sequence).split("<end_of_text>")[0].split("<start_of_text>")[-1]
                    row.append(text.split(".")[0].strip())
        return captions


# ---------------------------------------------------------------------------------------------
# Decoding and augmenting (DataLoader workers).
# ---------------------------------------------------------------------------------------------


class ShardViews(torch.utils.data.Dataset):
    """One shard's samples -> decoded, augmented views (or the reason a sample is skipped).

    Item: ``{"index", "key", "skip": reason | None, "views": [A, 3, H, W], "params", "caption",
    "syn", "caption_input": captioner-preprocessed image | None}``.
    """

    def __init__(
        self,
        samples: Sequence[Mapping[str, Any]],
        shard: str,
        augmentation: Augmentation,
        options: ReinforceOptions,
        caption_transform: Callable | None = None,
    ):
        self.samples, self.shard, self.augmentation = samples, shard, augmentation
        self.options, self.caption_transform = options, caption_transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        item: dict[str, Any] = {"index": index, "key": sample["__key__"], "skip": None}
        member = image_key(sample)
        if member is None:
            return {**item, "skip": "no image"}
        if "txt" not in sample:
            return {**item, "skip": "no caption"}
        try:
            item["caption"] = sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return {**item, "skip": "caption not UTF-8"}
        try:
            item["syn"] = synthetic_captions(sample)
        except (ValueError, TypeError, UnicodeDecodeError):
            return {**item, "skip": "invalid syn.json"}
        try:
            image = decode_image(sample[member])
        except Exception:  # noqa: BLE001 - any decoder failure skips the sample (reported with its key)
            return {**item, "skip": "undecodable image"}
        generator = torch.Generator().manual_seed(sample_seed(self.options.seed, self.shard, item["key"]))
        views, params = [], []
        for _ in range(self.options.num_augmentations):
            # The augmented view is what replaying the stored params gives, bit for bit
            # (tests/test_train_augment.py), so the teachers embed exactly what training replays.
            view, drawn = self.augmentation.augment(image, generator)
            views.append(view)
            params.append(self.augmentation.compress(drawn))
        item["views"], item["params"] = torch.stack(views), params
        item["caption_input"] = None if self.caption_transform is None else self.caption_transform(image)
        return item


def _as_list(batch: list) -> list:
    return batch


# ---------------------------------------------------------------------------------------------
# Embedding (the rank's device).
# ---------------------------------------------------------------------------------------------


def embed_items(
    items: Sequence[dict[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    teachers: TeacherEnsemble,
    options: ReinforceOptions,
    captioner: Captioner | None = None,
    caption_seed: int = 0,
) -> list[dict[str, Any]]:
    """Prepared items of one batch (no skips) -> their output samples, in order."""
    if not items:
        return []
    device = next(teachers.parameters()).device
    count = options.num_augmentations
    views = torch.cat([item["views"] for item in items]).to(device, non_blocking=True)
    with torch.inference_mode():
        image_emb = teachers.encode_unit_images(views).float().cpu().view(len(items), count, -1)

    syn = [dict(item["syn"]) for item in items]
    if captioner is not None:
        batch = torch.stack([item["caption_input"] for item in items])
        for row, captions in zip(syn, captioner.caption(batch, options.num_captions, caption_seed)):
            row[options.caption_key] = captions

    texts, owners = [], []
    for i, item in enumerate(items):
        texts.append(item["caption"])
        owners.append((i, "text"))
        for key, captions in syn[i].items():
            if re.match(options.syn_text_key_regex, key):
                texts += captions
                owners += [(i, key)] * len(captions)
    text_emb: dict[tuple[int, str], list[torch.Tensor]] = {}
    with torch.inference_mode():
        for start in range(0, len(texts), options.batch_size):
            rows = teachers.encode_strings(texts[start : start + options.batch_size], device).float().cpu()
            for owner, row in zip(owners[start : start + options.batch_size], rows):
                text_emb.setdefault(owner, []).append(row)

    out = []
    for i, item in enumerate(items):
        sample = dict(samples[item["index"]])
        for stale in EMBEDDING_KEYS:
            sample.pop(stale, None)
        embeddings = {"image_emb": image_emb[i]}
        for (owner, key), rows in text_emb.items():
            if owner == i:
                embeddings[f"{key}_emb"] = torch.stack(rows)
        extension, payload = encode_embeddings(embeddings, options.bfloat16)
        sample[extension] = payload
        sample["paug.json"] = encode_augmentation_params(item["params"])
        if syn[i]:
            sample["syn.json"] = encode_synthetic_captions(syn[i])
        out.append(sample)
    return out


# ---------------------------------------------------------------------------------------------
# The config record.
# ---------------------------------------------------------------------------------------------


def _request(specs: Sequence[tuple[str, str | None]], options: ReinforceOptions) -> dict[str, Any]:
    """Every argument that changes the bytes written (not device, workers or world size)."""
    return {
        "teachers": [[name, tag] for name, tag in specs],
        "num_augmentations": options.num_augmentations,
        "augmentation": options.augmentation,
        "captioner": options.captioner,
        "captioner_pretrained": options.captioner_pretrained if options.captioner else None,
        "num_captions": options.num_captions if options.captioner else None,
        "caption_key": options.caption_key if options.captioner else None,
        "syn_text_key_regex": options.syn_text_key_regex,
        "batch_size": options.batch_size,
        "bfloat16": options.bfloat16,
        "seed": options.seed,
        "precision": options.precision,
    }


def config_record(
    specs: Sequence[tuple[str, str | None]],
    options: ReinforceOptions,
    config: Mapping[str, Any] | None = None,
    teachers: TeacherEnsemble | None = None,
) -> dict[str, Any]:
    """config.json in Apple's layout (model_name, pretrained, num_samples, reinforce) plus our record;
    without ``teachers`` (before they load) the records that need them are left out."""
    from .. import __version__

    record: dict[str, Any] = {
        "model_name": ",".join(name for name, _ in specs),
        "pretrained": ",".join(tag or "N/A" for _, tag in specs),
        "num_samples": options.num_augmentations,
    }
    if teachers is not None and config is not None:
        record["reinforce"] = {"image_augmentation": dict(config)}
        record["teacher_dimension"] = teachers.dims
        record["teacher_logit_scale"] = teachers.logit_scales
        record["teacher_image_size"] = [list(member.size) for member in teachers.members]
    else:
        record["status"] = "teachers not loaded yet: rerun reinforce with the same arguments to complete"
    record["syn_text_key_regex"] = options.syn_text_key_regex
    record["captioner"] = (
        None
        if options.captioner is None
        else {
            "model": options.captioner,
            "pretrained": options.captioner_pretrained,
            "key": options.caption_key,
        }
    )
    record["embedding_format"] = "pth.gz (bfloat16)" if options.bfloat16 else "npz (float32)"
    record["request"] = _request(specs, options)
    record["created_by"] = f"mobileclip2 {__version__} reinforce"
    return record


# ---------------------------------------------------------------------------------------------
# Devices.
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """'auto'/'cuda' -> this rank's CUDA device (LOCAL_RANK) when there is one; precision 'auto' ->
    bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow on most CPUs)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    resolved = torch.device(device)
    if precision == "auto":
        precision = "bf16" if resolved.type == "cuda" else "fp32"
    return resolved, torch_dtype(precision)


# ---------------------------------------------------------------------------------------------
# Reinforcing.
# ---------------------------------------------------------------------------------------------


def _teacher_specs(teachers: TeacherEnsemble | Sequence) -> list[tuple[str, str | None]]:
    if isinstance(teachers, TeacherEnsemble):
        return [(member.name, member.pretrained) for member in teachers.members]
    specs = list(teachers)
    if specs and isinstance(specs[0], str):
        return parse_teacher_specs(specs, None)
    return [(name, tag) for name, tag in specs]


def _prepare_output(output: storage.Output, record: dict, overwrite: bool) -> None:
    """Rank 0, before any teacher loads: clear what --overwrite redoes, then write config.json
    (an existing one with the same request is kept: it may already be complete)."""
    if overwrite:
        output.remove(RECORDS)
        output.remove(MANIFEST)
    if overwrite or output.read_json(CONFIG) is None:
        output.write_json(CONFIG, record)


def _progress(options: ReinforceOptions, rank: int, shards: int):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=None, unit="img", position=rank, desc=f"rank {rank}: 0/{shards} shards", dynamic_ncols=True
    )


def _reinforce_shard(
    source: str,
    name: str,
    samples: list[dict],
    output: storage.Output,
    teachers: TeacherEnsemble,
    augmentation: Augmentation,
    options: ReinforceOptions,
    captioner: Captioner | None,
    bar,
) -> dict[str, Any]:
    """One shard: decode/augment in workers, embed in batches, commit, record. -> its manifest record."""
    started = time.perf_counter()
    dataset = ShardViews(samples, name, augmentation, options, captioner.preprocess if captioner else None)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=options.batch_size,
        shuffle=False,
        num_workers=options.num_workers,
        collate_fn=_as_list,
        pin_memory=next(teachers.parameters()).device.type == "cuda",
    )
    written, skipped = [], []
    for batch in loader:
        kept = [item for item in batch if item["skip"] is None]
        skipped += [
            {"key": item["key"], "reason": item["skip"]} for item in batch if item["skip"] is not None
        ]
        seed = sample_seed(options.seed, name, batch[0]["key"])
        written += embed_items(kept, samples, teachers, options, captioner, seed)
        if bar is not None:
            bar.update(len(batch))
    embedded = time.perf_counter()
    size, checksum = output.write_shard(name, written)
    finished = time.perf_counter()
    return {
        "shard": name,
        "input": source,
        "samples": len(written),
        "skipped": skipped,
        "bytes": size,
        "sha256": checksum,
        "seconds": {"embed": round(embedded - started, 3), "write": round(finished - embedded, 3)},
    }


def reinforce(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    teachers: TeacherEnsemble | Sequence[tuple[str, str | None]],
    options: ReinforceOptions | None = None,
    log: Callable[[str], None] = logging.info,
) -> ReinforceReport:
    """Write a reinforced copy of every input shard into ``output_dir`` (plus config.json and a manifest).

    ``inputs``: paths, brace patterns, ``pipe:`` commands or fsspec URLs; ``output_dir``: a path
    or fsspec URL. ``teachers``: a loaded ensemble, or ``(name, pretrained)`` specs loaded on this
    rank's device only after the output has been checked. Under ``torch.distributed`` every rank
    calls this with the same arguments and takes its share of the pending shards.
    """
    options = options or ReinforceOptions()
    if options.num_augmentations < 1 or options.batch_size < 1:
        raise ValueError("num_augmentations and batch_size must be >= 1")
    started = time.perf_counter()
    rank, world = distributed.world()
    device, dtype = resolve_device(options.device, options.precision)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # pinned memory and kernels on this rank's GPU, not on GPU 0
    precision = next(name for name in PRECISIONS if torch_dtype(name) == dtype)
    specs = _teacher_specs(teachers)
    sources = storage.expand_inputs(str(source) for source in inputs)
    output = storage.Output(output_dir)
    record = config_record(specs, options)
    record["request"]["precision"] = precision

    def check_and_start() -> tuple[Plan, bool]:
        plan = plan_run(sources, output, record["request"], options.overwrite)
        _prepare_output(output, record, options.overwrite)
        return plan, "reinforce" in (output.read_json(CONFIG) or {})

    plan, config_complete = distributed.on_rank0(check_and_start)
    mine = plan.share(rank, world)
    if plan.pending or not config_complete:  # else all done: no teacher to load
        if not isinstance(teachers, TeacherEnsemble):
            teachers = TeacherEnsemble.load(specs, device=device)
        teachers = teachers.to(device=device, dtype=dtype)
        config = augmentation_config(options.augmentation, teachers)
        augmentation = unit_range_augmentation(config)
        captioner = None
        if options.captioner and mine:
            captioner = Captioner(options.captioner, options.captioner_pretrained, device, dtype)
        if rank == 0:
            full = config_record(specs, options, config, teachers)
            full["request"]["precision"] = precision
            output.write_json(CONFIG, full)

    bar = _progress(options, rank, len(mine))
    records, images, busy = [], 0, 0.0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reinforce-read") as reader:
        reads = [reader.submit(storage.read_shard, source) for source, _ in mine[:1]]
        for position, (source, name) in enumerate(mine):
            read_started = time.perf_counter()
            samples = reads[position].result()  # reading the next shard overlaps this one's work
            waited = time.perf_counter() - read_started
            if position + 1 < len(mine):
                reads.append(reader.submit(storage.read_shard, mine[position + 1][0]))
            if bar is not None and bar.total is None:
                bar.total = len(samples) * len(mine)
            shard_record = _reinforce_shard(
                source, name, samples, output, teachers, augmentation, options, captioner, bar
            )
            shard_record["seconds"]["read_wait"] = round(waited, 3)
            shard_record.update(rank=rank, device=str(device), precision=precision)
            output.write_json(record_name(name), shard_record)  # after the commit: finished means finished
            records.append(shard_record)
            images += len(samples)
            busy += sum(shard_record["seconds"].values())
            if bar is not None:
                bar.set_description(f"rank {rank}: {position + 1}/{len(mine)} shards")
            log(
                f"{source} -> {output.display(name)}: {shard_record['samples']} samples"
                + (f", {len(shard_record['skipped'])} skipped" if shard_record["skipped"] else "")
            )
    if bar is not None:
        bar.close()

    mine_summary = {
        "rank": rank,
        "device": str(device),
        "images": images,
        "seconds": round(busy, 3),
        "images_per_s": round(images / busy, 3) if busy else None,
        "records": records,
    }
    everyone = distributed.gather(mine_summary)
    report = ReinforceReport(config_path=output.display(CONFIG))
    report.shards = [output.display(name) for name in plan.names]
    report.resumed = sorted(plan.finished)
    all_records = {name: dict(entry) for name, entry in plan.finished.items()}
    for summary in everyone:
        for shard_record in summary.pop("records"):
            all_records[shard_record["shard"]] = shard_record
            report.written.append(shard_record["shard"])
            report.samples += shard_record["samples"]
            for skip in shard_record["skipped"]:
                report.skipped[skip["reason"]] = report.skipped.get(skip["reason"], 0) + 1
                report.skipped_keys.append({"shard": shard_record["shard"], **skip})
        report.devices.append(summary)
    report.seconds = time.perf_counter() - started
    if rank == 0:
        output.write_json(
            MANIFEST,
            {
                "shards": [all_records[name] for name in plan.names if name in all_records],
                "last_run": {
                    "world_size": world,
                    "written": report.written,
                    "resumed": report.resumed,
                    "samples": report.samples,
                    "skipped": report.skipped,
                    "devices": report.devices,
                    "seconds": round(report.seconds, 3),
                },
            },
        )
    return report


def summary_lines(report: ReinforceReport) -> list[str]:
    """The final summary a person reads: shards, samples, skips with reasons, images/s per device."""
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped.items())) or "none"
    lines = [
        f"{len(report.shards)} shards: {len(report.written)} written, "
        f"{len(report.resumed)} already finished; "
        f"{report.samples} samples written, skipped: {skipped}; {report.seconds:.1f} s",
    ]
    for device in report.devices:
        rate = device["images_per_s"]
        lines.append(
            f"  rank {device['rank']} ({device['device']}): {device['images']} images, "
            + (f"{rate:.1f} images/s" if rate else "idle")
        )
    for skip in report.skipped_keys[:20]:
        lines.append(f"  skipped {skip['shard']}:{skip['key']} ({skip['reason']})")
    if len(report.skipped_keys) > 20:
        lines.append(f"  ... {len(report.skipped_keys) - 20} more skipped keys in manifest.json")
    return lines
