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

Failure (docs/training.md, "What reinforce promises on failure"): every argument is checked
before anything is written; a damaged input shard fails the run (``on_bad_shard="record"``: is
recorded as failed, never as finished); a sample whose teacher embeddings are not finite is
skipped with its reason (``on_nonfinite="fail"``: fails the run); each output shard is written
under its lock, whole or not at all.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..augment import Augmentation, decode_image, enabled_steps
from ..errors import ReinforceOutputError, ShardStorageError
from ..shapes import height_width
from ..system import PRECISIONS, torch_dtype
from ..teachers import (
    TeacherEnsemble,
    TeacherError,
    check_model_specs,
    parse_teacher_specs,
    require_finite_weights,
)
from . import distributed, storage
from .manifest import CONFIG, MANIFEST, Plan, plan_run, record_name, request_digest
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

# Reasons a sample is left out (keys of the summary and of the manifest's skipped lists), beside
# the input's own problems (no image, no caption, ...).
SKIP_UNSAFE_KEY = "unsafe key (absolute or with '..')"
SKIP_NONFINITE = "non-finite teacher embedding"
ON_BAD_SHARD = ("fail", "record")
ON_NONFINITE = ("skip", "fail")


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
    on_bad_shard: str = "fail"  # an unreadable input shard: fail the run, or record it as failed
    on_nonfinite: str = "skip"  # NaN/inf teacher embeddings: skip the sample, or fail the run


@dataclass
class ReinforceReport:
    shards: list[str] = field(default_factory=list)  # every output shard of the inputs (display paths)
    written: list[str] = field(default_factory=list)  # shard names written by this run (all ranks on rank 0)
    resumed: list[str] = field(default_factory=list)  # shard names found finished and skipped
    samples: int = 0  # samples written by this run
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_keys: list[dict] = field(default_factory=list)  # {"shard", "key", "reason"}
    failed: list[dict] = field(default_factory=list)  # records of input shards that could not be read
    records: dict[str, dict] = field(default_factory=dict)  # shard name -> finished record (manifest.json)
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


def check_augmentation_config(config: Any) -> None:
    """Refuse an augmentation config that cannot be built, before anything is written or loaded
    (a crop size left to the teachers gets a stand-in: their sizes are known only once loaded)."""
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise ValueError(f"--aug-config must be a JSON object, got {type(config).__name__}")
    trial = copy.deepcopy(dict(config))
    crop = trial.get("random_resized_crop")
    if isinstance(crop, dict) and crop.get("size") is None:
        crop["size"] = [224, 224]
    try:
        Augmentation.from_config(trial)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--aug-config cannot be used: {error}") from None


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
        if storage.unsafe_key(sample["__key__"]) is not None:
            return {**item, "skip": SKIP_UNSAFE_KEY}
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
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Prepared items of one batch (no skips) -> (their output samples in order, the skipped ones as
    ``{"key", "reason"}``: those whose teacher embeddings hold NaN or inf, e.g. an fp16 overflow)."""
    if not items:
        return [], []
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

    out, skipped = [], []
    for i, item in enumerate(items):
        rows = [image_emb[i], *(torch.stack(r) for (owner, _), r in text_emb.items() if owner == i)]
        if not all(bool(torch.isfinite(row).all()) for row in rows):
            skipped.append({"key": item["key"], "reason": SKIP_NONFINITE})
            continue
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
    return out, skipped


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


def _check_options(options: ReinforceOptions) -> None:
    if options.num_augmentations < 1 or options.batch_size < 1:
        raise ValueError("num_augmentations and batch_size must be >= 1")
    if options.on_bad_shard not in ON_BAD_SHARD:
        raise ValueError(f"on_bad_shard must be one of {ON_BAD_SHARD}, got {options.on_bad_shard!r}")
    if options.on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {options.on_nonfinite!r}")


def _arguments(sources: Sequence[str], output: str, request: Mapping[str, Any], options: ReinforceOptions):
    """What every rank must have been given alike: the request, the inputs, the output, the policies."""
    return {
        **request,
        "inputs": list(sources),
        "output": output,
        "overwrite": options.overwrite,
        "on_bad_shard": options.on_bad_shard,
        "on_nonfinite": options.on_nonfinite,
    }


def _prepare_output(output: storage.Output, plan: Plan, record: dict, overwrite: bool) -> None:
    """Rank 0, once every argument was checked: prove the folder takes files; with ``overwrite``
    remove this run's own records and shards (records first: a shard without one is redone), and
    nothing else in the folder; then write config.json (one with the same request is kept: it may
    already be complete)."""
    output.prepare()
    if overwrite:
        for name in plan.names:
            output.remove(record_name(name))
        for name in plan.names:
            output.remove(name)
        output.remove(MANIFEST)
    if overwrite or plan.replace_config or output.read_json(CONFIG) is None:
        output.write_json(CONFIG, record)


def _progress(options: ReinforceOptions, rank: int, shards: int):
    if not options.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=None, unit="img", position=rank, desc=f"rank {rank}: 0/{shards} shards", dynamic_ncols=True
    )


@dataclass
class _Tools:
    """What a rank with shards to make holds: the teachers, the augmentation, the captioner."""

    teachers: TeacherEnsemble
    augmentation: Augmentation
    captioner: Captioner | None


def _reinforce_shard(
    source: str,
    name: str,
    samples: list[dict],
    output: storage.Output,
    tools: _Tools,
    options: ReinforceOptions,
    bar,
) -> dict[str, Any]:
    """One shard: decode/augment in workers, embed in batches, commit, record. -> its manifest record."""
    teachers, augmentation, captioner = tools.teachers, tools.augmentation, tools.captioner
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
        embedded, nonfinite = embed_items(kept, samples, teachers, options, captioner, seed)
        if nonfinite and options.on_nonfinite == "fail":
            keys = [skip["key"] for skip in nonfinite]
            raise TeacherError(
                f"the teachers' embeddings of {len(keys)} samples of {source} hold NaN or inf (first: "
                f"{keys[0]!r}); nothing of this shard was written. Low precision can overflow: rerun with "
                "--precision fp32, or with --on-nonfinite skip to leave such samples out (they are counted)"
            )
        written += embedded
        skipped += nonfinite
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


def _check_arguments(
    specs: Sequence[tuple[str, str | None]], options: ReinforceOptions, loaded: bool
) -> None:
    """Every argument that can be checked without loading a model, before anything is written."""
    if not loaded:
        check_model_specs(specs, "teacher")
    if options.captioner:
        check_model_specs([(options.captioner, options.captioner_pretrained)], "captioner")
    check_augmentation_config(options.augmentation)


def _bad_shard(source: str, name: str, error: ShardStorageError, options: ReinforceOptions) -> dict:
    """An input shard that cannot be read: fail the run, or (``on_bad_shard="record"``) its failed
    record -- never a finished one, so a rerun retries it."""
    if options.on_bad_shard == "fail":
        raise ShardStorageError(
            f"{error}. Rerun once it is fixed (finished shards are kept), or pass --on-bad-shard record "
            "to record it as failed and go on with the other shards"
        ) from error
    return {
        "shard": name,
        "input": source,
        "status": "failed",
        "samples_read": getattr(error, "samples_read", 0),
        "error": str(error),
    }


def _make_shards(
    mine: Sequence[tuple[str, str]],
    output: storage.Output,
    tools: _Tools | None,
    options: ReinforceOptions,
    log: Callable[[str], None],
    stamp: Mapping[str, Any],
) -> tuple[list[dict], int, float]:
    """This rank's shards, each under its lock: read (the next one is read while this one is
    embedded), reinforce, commit, record. -> (records, images, busy seconds)."""
    rank = stamp["rank"]
    bar = _progress(options, rank, len(mine))
    records, images, busy = [], 0, 0.0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reinforce-read") as reader:
        reads = [reader.submit(storage.read_shard, source) for source, _ in mine[:1]]
        for position, (source, name) in enumerate(mine):
            with output.lock(name):
                read_started = time.perf_counter()
                try:
                    samples, failed = reads[position].result(), None
                except ShardStorageError as error:
                    samples, failed = [], _bad_shard(source, name, error, options)
                waited = time.perf_counter() - read_started
                if position + 1 < len(mine):
                    reads.append(reader.submit(storage.read_shard, mine[position + 1][0]))
                if failed is not None:
                    shard_record = {**failed, **stamp}
                    output.write_json(record_name(name), shard_record)
                    records.append(shard_record)
                    log(f"{source}: FAILED, recorded in {output.display(record_name(name))}")
                    continue
                if bar is not None and bar.total is None:
                    bar.total = len(samples) * len(mine)
                shard_record = _reinforce_shard(source, name, samples, output, tools, options, bar)
                shard_record["seconds"]["read_wait"] = round(waited, 3)
                shard_record.update(stamp)
                output.write_json(record_name(name), shard_record)  # after the commit: finished is finished
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
    return records, images, busy


def _check_listed_shards(output: storage.Output, records: Sequence[Mapping[str, Any]]) -> None:
    """Rank 0, before manifest.json: every shard a rank recorded as written is in the output as
    recorded. Why: ranks on several machines that each write into a node-local folder of the same
    name would otherwise leave a manifest listing shards that are not there."""
    missing = [record for record in records if output.size(record["shard"]) != record["bytes"]]
    if missing:
        first = missing[0]
        raise ReinforceOutputError(
            f"{len(missing)} shards recorded as written are not in {output.url} as recorded (e.g. "
            f"{first['shard']!r}, written by rank {first.get('rank')} on host {first.get('host')}): the "
            "ranks wrote into different folders of that name (node-local disks?). Give every node an "
            "--output on storage they all share, or run one reinforce per node with its own --output; "
            "manifest.json was not written"
        )


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
    calls this with the same arguments (checked: a rank given others fails every rank) and takes
    its share of the pending shards; a rank without one loads no model.
    """
    options = options or ReinforceOptions()
    _check_options(options)
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
    distributed.require_agreement(_arguments(sources, output.url, record["request"], options))

    def check_and_start() -> tuple[Plan, bool]:
        plan = plan_run(sources, output, record["request"], options.overwrite)
        _check_arguments(specs, options, loaded=isinstance(teachers, TeacherEnsemble))
        _prepare_output(output, plan, record, options.overwrite)
        return plan, "reinforce" in (output.read_json(CONFIG) or {})

    plan, config_complete = distributed.on_rank0(check_and_start)
    mine = plan.share(rank, world)
    tools = None
    if mine or (rank == 0 and not config_complete):  # else nothing to make: no model to load
        if not isinstance(teachers, TeacherEnsemble):
            teachers = TeacherEnsemble.load(specs, device=device)
        teachers = teachers.to(device=device, dtype=dtype)
        config = augmentation_config(options.augmentation, teachers)
        captioner = None
        if options.captioner and mine:
            captioner = Captioner(options.captioner, options.captioner_pretrained, device, dtype)
        tools = _Tools(teachers, unit_range_augmentation(config), captioner)
        if rank == 0:
            full = config_record(specs, options, config, teachers)
            full["request"]["precision"] = precision
            output.write_json(CONFIG, full)

    stamp = {
        "rank": rank,
        "host": socket.gethostname(),
        "device": str(device),
        "precision": precision,
        "request_sha256": request_digest(record["request"]),
    }
    records, images, busy = _make_shards(mine, output, tools, options, log, stamp)
    mine_summary = {
        "rank": rank,
        "device": str(device),
        "images": images,
        "seconds": round(busy, 3),
        "images_per_s": round(images / busy, 3) if busy else None,
        "records": records,
    }
    report = _report(plan, distributed.gather(mine_summary), output)
    report.seconds = time.perf_counter() - started
    if rank == 0:
        _check_listed_shards(output, [report.records[name] for name in report.written])
        output.write_json(MANIFEST, _manifest(plan, report, world))
    return report


def _report(plan: Plan, everyone: Sequence[dict], output: storage.Output) -> ReinforceReport:
    """Every rank's summary (with its records) -> the run's report (records in ``report.records``
    and ``report.failed``, for manifest.json)."""
    report = ReinforceReport(config_path=output.display(CONFIG))
    report.shards = [output.display(name) for name in plan.names]
    report.resumed = sorted(plan.finished)
    report.records = {name: dict(entry) for name, entry in plan.finished.items()}
    for summary in everyone:
        for shard_record in summary.pop("records"):
            if shard_record.get("status") == "failed":
                report.failed.append(shard_record)
                continue
            report.records[shard_record["shard"]] = shard_record
            report.written.append(shard_record["shard"])
            report.samples += shard_record["samples"]
            for skip in shard_record["skipped"]:
                report.skipped[skip["reason"]] = report.skipped.get(skip["reason"], 0) + 1
                report.skipped_keys.append({"shard": shard_record["shard"], **skip})
        report.devices.append(summary)
    return report


def _manifest(plan: Plan, report: ReinforceReport, world: int) -> dict[str, Any]:
    return {
        "shards": [report.records[name] for name in plan.names if name in report.records],
        "failed": report.failed,
        "last_run": {
            "world_size": world,
            "written": report.written,
            "resumed": report.resumed,
            "failed": [record["shard"] for record in report.failed],
            "samples": report.samples,
            "skipped": report.skipped,
            "devices": report.devices,
            "seconds": round(report.seconds, 3),
        },
    }


def summary_lines(report: ReinforceReport) -> list[str]:
    """The final summary a person reads: shards, samples, skips with reasons, failed input shards,
    images/s per device."""
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(report.skipped.items())) or "none"
    lines = [
        f"{len(report.shards)} shards: {len(report.written)} written, "
        f"{len(report.resumed)} already finished, {len(report.failed)} failed; "
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
    for failed in report.failed:
        lines.append(f"  FAILED {failed['shard']} ({failed['samples_read']} samples read): {failed['error']}")
    if report.failed:
        lines.append(
            f"  {len(report.failed)} input shards could not be read and have no output shard; fix them and "
            "rerun the same command to make just those"
        )
    return lines
