"""The DR webdataset pipeline: reinforced shards -> ``(images, texts)`` for the loop + teacher payloads.

The shard format is :mod:`mobileclip2.reinforce.shards` (Apple's DataCompDR / DFNDR layout).

Per sample (Apple's ``preprocess_dr``): pick one stored augmentation and replay it at the
student's size and normalization, pick one real caption, pick one synthetic caption (a random
``syn.json`` key matching ``--dataset-reinforcement-syn-text-key-regex``, then a random caption),
and take the matching stored teacher embeddings. ``--dataset-reinforcement-sample-sequential``
picks by epoch instead of at random. With ``--dataset-reinforcement-mix-synthetic`` the synthetic
caption replaces the real one with probability ``--dataset-reinforcement-mix-synthetic-ratio``
and no separate synthetic-caption loss is computed; otherwise the batch's ``texts`` holds the
``B`` real captions followed by the ``B`` synthetic ones (Apple's layout), so the unchanged loop
embeds both with the student.

Online distillation on DR shards (``--distill-model`` with ``--dataset-reinforcement``) draws a
fresh augmentation from the config, as Apple's patch does, and needs no stored embeddings.

Shard listing, shuffling, node/worker splitting, resampling and epoch sizing reuse
open_clip_train.data's own pieces, so DR data is sharded exactly like open_clip_train's webdataset.

Wrong data is never trained on silently: every skipped sample is counted by reason (in the
loader workers, carried to the training process inside each batch's payload), each epoch ends
with a summary in the log, and training stops with DRDataError once more than
``--dataset-reinforcement-max-skip-fraction`` of the samples were skipped. Shards are opened as
open_clip_train's webdataset loader opens them and read with the package's strict tar reader
(:func:`mobileclip2.reinforce.storage.iter_samples`, the one reinforce uses): a shard that is
missing, truncated or corrupt is named in the log and counted as skipped samples (the ones it
would have held, estimated from the shards read whole, at least 1), so it reaches that limit too;
the whole samples read before the damage are used. Stored crop boxes are
checked against the decoded image (an image resized after reinforcement is a skip, not a mostly
black crop), and batch assembly names the shard and sample key of a sample that does not fit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..augment import Augmentation, decode_image
from ..errors import CropMismatchError, DRDataError
from ..reinforce.shards import (
    EMBEDDING_KEYS,
    IMAGE_KEYS,
    augmentation_params,
    decode_embeddings,
    image_key,
    synthetic_captions,
)
from ..reinforce.storage import iter_samples

__all__ = [
    "DRDataError",
    "DRSampling",
    "ShardLayout",
    "SkipMonitor",
    "SkipTally",
    "build_dr_dataloader",
    "check_stored_crop",
    "inspect_shards",
    "prepare_sample",
    "read_shards",
    "shard_samples",
]


# open_clip_train.data's shuffle buffers (module constants there, not public API).
SHARD_SHUFFLE_SIZE, SHARD_SHUFFLE_INITIAL = 2000, 500
SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL = 5000, 1000


# Why a sample is skipped (keys of the per-epoch summary). Filtering by size is what the user
# asked for, so it is reported but does not count toward --dataset-reinforcement-max-skip-fraction.
SKIP_INCOMPLETE = "no image or no caption"
SKIP_SMALL = "image smaller than --dataset-reinforcement-filter-image-size (filtered on purpose)"
SKIP_CROP = "stored crop box does not fit the decoded image (image resized after reinforcement?)"
SKIP_SHARD = "shard cannot be read (missing, truncated or corrupt)"
INTENDED_SKIPS = frozenset({SKIP_SMALL})
DEFAULT_MAX_SKIP_FRACTION = 0.01


@dataclass(frozen=True)
class DRSampling:
    """How one training sample is drawn from a reinforced sample (Apple's DR flags)."""

    mix_synthetic: bool = False
    mix_synthetic_ratio: float = 0.0
    sample_sequential: bool = False
    syn_text_key_regex: str = r"^syn_text.*$"
    online: bool = False  # live teachers: fresh augmentation, stored embeddings unused

    @property
    def uses_synthetic(self) -> bool:
        """Whether synthetic captions are read at all (mixing with ratio 0 never picks one)."""
        return not (self.mix_synthetic and self.mix_synthetic_ratio <= 0.0)

    @property
    def separate_synthetic(self) -> bool:
        """Whether each batch carries synthetic captions beside the real ones (the summed loss)."""
        return self.uses_synthetic and not self.mix_synthetic


# ---------------------------------------------------------------------------------------------
# Decoding one raw sample (dict of extension -> bytes, as webdataset's tar reader yields).
# ---------------------------------------------------------------------------------------------


def decode_sample(raw: Mapping[str, Any], online: bool) -> dict[str, Any]:
    """Raw tar members -> image, captions, augmentation params, synthetic captions, embeddings."""
    sample = {
        "__key__": raw.get("__key__"),
        "__url__": raw.get("__url__"),
        "image": decode_image(raw[image_key(raw)]),
        "texts": [raw["txt"].decode("utf-8") if isinstance(raw["txt"], bytes) else raw["txt"]],
        "syn": synthetic_captions(raw),
    }
    if not online:
        sample["params"] = augmentation_params(raw)
        sample["emb"] = decode_embeddings(raw)
    return sample


def sample_location(sample: Mapping[str, Any]) -> str:
    """'sample KEY of shard URL', for messages about one sample."""
    where = f"sample {sample.get('__key__')!r}"
    return where + (f" of shard {sample['__url__']!r}" if sample.get("__url__") else "")


def check_stored_crop(
    augmentation: Augmentation, params: Mapping[str, Any], image_hw: tuple[int, int]
) -> None:
    """Raise CropMismatchError when the stored crop of the first geometric step cannot have been
    sampled from an image of ``image_hw`` = (height, width).

    The box is in the pixels of the image the shard was reinforced from. Replayed on a smaller
    image it reaches past the border (torchvision pads with black); on a larger one it covers
    less than ``scale[0]`` of the area random_resized_crop can sample. Boxes of steps after a
    resize or another crop are in other coordinates and are not checked.
    """
    height, width = image_hw
    for step in augmentation.steps:
        if step.name in ("resize", "center_crop"):
            return
        box = params.get(step.name)
        if step.name == "random_crop":
            if box is None or getattr(step, "padding", None) or getattr(step, "pad_if_needed", False):
                return
            top, left = (int(v) for v in box)
            box = [top, left, *step.size]
        elif step.name != "random_resized_crop" or box is None:
            continue
        top, left, crop_h, crop_w = (int(v) for v in box)
        if top < 0 or left < 0 or top + crop_h > height or left + crop_w > width:
            raise CropMismatchError(
                f"stored {step.name} box [top {top}, left {left}, height {crop_h}, width {crop_w}] "
                f"reaches outside the decoded {height}x{width} image"
            )
        scale = getattr(step, "scale", None)
        if (
            step.name == "random_resized_crop"
            and scale
            and (crop_h + 1) * (crop_w + 1) < scale[0] * height * width
        ):
            raise CropMismatchError(
                f"stored random_resized_crop box {crop_h}x{crop_w} covers less than the minimum scale "
                f"{scale[0]} of the decoded {height}x{width} image: "
                "the image is larger than when it was reinforced"
            )
        return


def _pick(count: int, sequential: bool, epoch: int, rng: random.Random) -> int:
    return epoch % count if sequential else rng.randrange(count)


def _row(array, index: int) -> torch.Tensor:
    row = array[index]
    return (row if isinstance(row, torch.Tensor) else torch.from_numpy(np.asarray(row))).to(torch.float32)


def synthetic_embedding(emb: Mapping[str, Any], syn_key: str, index: int, num_texts: int) -> torch.Tensor:
    """Embedding of synthetic caption ``index`` of ``syn_key``, in either stored layout."""
    if f"{syn_key}_emb" in emb:
        return _row(emb[f"{syn_key}_emb"], index)
    if len(emb["text_emb"]) > num_texts:  # DataCompDR-12M: synthetic rows follow the real ones
        return _row(emb["text_emb"], num_texts + index)
    raise DRDataError(f"no stored embeddings for synthetic captions {syn_key!r} (expected key {syn_key}_emb)")


def prepare_sample(
    sample: Mapping[str, Any],
    augmentation: Augmentation,
    tokenizer,
    sampling: DRSampling,
    epoch: int = 0,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """One decoded sample -> student image/tokens and the matching teacher embeddings."""
    rng = rng or random
    if sampling.online:
        image, _ = augmentation.augment(sample["image"])
    else:
        stored = sample["params"]
        aug_index = _pick(len(stored), sampling.sample_sequential, epoch, rng)
        params = augmentation.decompress(stored[aug_index])
        width, height = sample["image"].size
        check_stored_crop(augmentation, params, (height, width))
        image = augmentation.replay(sample["image"], params)

    texts = sample["texts"]
    caption_index = _pick(len(texts), sampling.sample_sequential, epoch, rng)
    text = texts[caption_index]
    out = {"image": image, "syn_text": None, "teacher": None, "__key__": sample.get("__key__")}
    if sample.get("__url__"):
        out["__url__"] = sample["__url__"]
    if not sampling.online:
        emb = sample["emb"]
        image_emb = _row(emb["image_emb"], aug_index)
        text_emb = _row(emb["text_emb"], caption_index)
        syn_emb = None

    syn_text = None
    if sampling.uses_synthetic:
        keys = [key for key in sample["syn"] if re.match(sampling.syn_text_key_regex, key)]
        if not keys:
            raise DRDataError(
                f"sample {sample.get('__key__')!r} has no synthetic captions matching "
                f"{sampling.syn_text_key_regex!r} (syn.json keys: {sorted(sample['syn'])})"
            )
        syn_key = keys[rng.randrange(len(keys))]
        candidates = sample["syn"][syn_key]
        candidates = [candidates] if isinstance(candidates, str) else candidates
        syn_index = _pick(len(candidates), sampling.sample_sequential, epoch, rng)
        syn_text = candidates[syn_index]
        if not sampling.online:
            syn_emb = synthetic_embedding(emb, syn_key, syn_index, len(texts))
        if sampling.mix_synthetic:
            if rng.random() < sampling.mix_synthetic_ratio:
                text = syn_text
                if not sampling.online:
                    text_emb = syn_emb
            syn_text, syn_emb = None, None

    out["text"] = tokenizer([text])[0]
    if syn_text is not None:
        out["syn_text"] = tokenizer([syn_text])[0]
    if not sampling.online:
        out["teacher"] = (image_emb, text_emb, syn_emb)
    return out


def _check_batch_fits(samples: list[dict[str, Any]]) -> None:
    """Raise DRDataError naming the shard and key of the first sample unlike the batch's first one
    (a missing synthetic caption or teacher embedding, another embedding width)."""
    first = samples[0]
    has_syn, has_teacher = first["syn_text"] is not None, first["teacher"] is not None
    widths = [None if e is None else int(e.shape[-1]) for e in first["teacher"]] if has_teacher else []
    names = ("image_emb", "text_emb", "synthetic-caption emb")
    for sample in samples[1:]:
        where = sample_location(sample)
        if (sample["syn_text"] is not None) != has_syn:
            raise DRDataError(
                f"{where} {'lacks' if has_syn else 'has'} a synthetic caption, "
                f"unlike {sample_location(first)} "
                "in the same batch; check its syn.json against --dataset-reinforcement-syn-text-key-regex"
            )
        if (sample["teacher"] is not None) != has_teacher:
            raise DRDataError(f"{where} lacks stored teacher embeddings, unlike the rest of its batch")
        for name, width, emb in zip(names, widths, sample["teacher"] or ()):
            if (emb is None) != (width is None) or (emb is not None and int(emb.shape[-1]) != width):
                got = "none" if emb is None else f"width {int(emb.shape[-1])}"
                raise DRDataError(
                    f"{where}: stored {name} has {got}, but {sample_location(first)} has width {width}; "
                    "every sample needs the same teachers' embeddings (regenerate the shard with "
                    "`mobileclip2 reinforce`, or leave it out of --train-data)"
                )


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Prepared samples -> (images, texts, payload). ``texts`` = real captions then synthetic ones."""
    _check_batch_fits(samples)
    images = torch.stack([s["image"] for s in samples])
    texts = torch.stack([s["text"] for s in samples])
    has_syn = samples[0]["syn_text"] is not None
    if has_syn:
        texts = torch.cat([texts, torch.stack([s["syn_text"] for s in samples])])
    payload = {"batch_size": len(samples), "has_syn": has_syn}
    if samples[0]["teacher"] is not None:
        image_emb, text_emb, syn_emb = zip(*(s["teacher"] for s in samples))
        payload["teacher"] = (
            torch.stack(image_emb),
            torch.stack(text_emb),
            torch.stack(syn_emb) if has_syn else None,
        )
    return images, texts, payload


def batches(
    samples: Iterable[dict[str, Any]], batch_size: int, partial_batches: bool, tally: SkipTally | None = None
) -> Iterator[tuple]:
    """A webdataset stage: group prepared samples into collated batches. With ``tally``, each
    batch's payload carries the skip counts since the previous batch (key SKIPS_KEY), and skips
    left when the samples end (a shard lost at the end of a worker's list) travel in a last item
    without a batch, which SkipMonitor takes out."""
    bucket = []
    for sample in samples:
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield _with_skips(collate(bucket), tally)
            bucket = []
    if bucket and partial_batches:
        yield _with_skips(collate(bucket), tally)
    if tally is not None and tally.skipped:  # (samples merely read wait for the next batch)
        yield None, None, {SKIPS_KEY: tally.take(), COUNTS_ONLY_KEY: True}


def _with_skips(batch: tuple, tally: SkipTally | None) -> tuple:
    if tally is not None:
        batch[2][SKIPS_KEY] = tally.take()
    return batch


# ---------------------------------------------------------------------------------------------
# Skip accounting: counted where samples are read (loader workers), judged where training runs.
# ---------------------------------------------------------------------------------------------

SKIPS_KEY = "dr_skips"
COUNTS_ONLY_KEY = "dr_counts_only"  # an item that carries skip counts and no batch


@dataclass
class SkipTally:
    """Samples read and skipped (by reason, with the first example of each) since the last take()."""

    seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def read(self) -> None:
        self.seen += 1

    def skip(self, reason: str, raw: Mapping[str, Any], detail: str = "") -> None:
        if reason not in self.examples:
            example = sample_location(raw) + (f": {detail}" if detail else "")
            self.examples[reason] = example
            logging.warning(f"DR data: skipping {example} ({reason}); later skips are counted, not logged")
        self.skipped[reason] += 1

    def lose_shard(self, url: str, lost: int, error: Exception) -> None:
        """A shard that could not be read to its end: the ``lost`` samples it would still have held
        (at least 1) count as read and skipped. Each one is logged: a lost shard is rare and big."""
        lost = max(1, lost)
        self.seen += lost
        self.skipped[SKIP_SHARD] += lost
        self.examples.setdefault(SKIP_SHARD, f"shard {url!r}: {error}")
        logging.warning(f"DR data: counting {lost} samples of shard {url!r} as skipped: {error}")

    def take(self) -> dict[str, Any]:
        """Counts since the previous take (a plain dict, cheap to send between processes); resets."""
        counts = {"seen": self.seen, "skipped": dict(self.skipped), "examples": dict(self.examples)}
        self.seen, self.skipped = 0, Counter()
        return counts


def _skip_reason(error: Exception) -> str:
    if isinstance(error, CropMismatchError):
        return SKIP_CROP
    return f"cannot be decoded or prepared ({type(error).__name__})"


class SkipMonitor:
    """Wraps the DR loader in the training process: sums the skip counts the workers send with
    each batch, logs a summary at the end of every epoch, and raises DRDataError once more than
    ``max_fraction`` of the samples read were skipped for reasons other than filtering.

    The running check waits for ``ceil(10 / max_fraction)`` samples so that one early bad sample
    does not stop a run; the end-of-epoch check always applies.
    """

    def __init__(self, loader: Iterable, max_fraction: float, epoch_of=None):
        self.loader = loader
        self.max_fraction = max_fraction
        self.epoch_of = epoch_of or (lambda: None)
        self.num_batches = getattr(loader, "num_batches", None)
        self.num_samples = getattr(loader, "num_samples", None)
        self.last_epoch: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple]:
        totals = {"seen": 0, "skipped": Counter(), "examples": {}}
        min_seen = 1 if self.max_fraction <= 0 else math.ceil(10 / self.max_fraction)
        for batch in self.loader:
            counts = batch[2].pop(SKIPS_KEY, None) if len(batch) > 2 else None
            if counts:
                totals["seen"] += counts["seen"]
                totals["skipped"].update(counts["skipped"])
                for reason, example in counts["examples"].items():
                    totals["examples"].setdefault(reason, example)
                if totals["seen"] >= min_seen:
                    self.check(totals)
            if len(batch) > 2 and batch[2].get(COUNTS_ONLY_KEY):
                continue
            yield batch
        self.last_epoch = totals
        logging.info(self.summary(totals))
        self.check(totals)

    def summary(self, totals: Mapping[str, Any]) -> str:
        epoch = self.epoch_of()
        head = f"DR data{'' if epoch is None else f', epoch {epoch}'}: {totals['seen']} samples read"
        if not totals["skipped"]:
            return head + ", none skipped"
        parts = [
            f"{count} {reason} (e.g. {totals['examples'].get(reason, '?')})"
            for reason, count in totals["skipped"].most_common()
        ]
        return f"{head}, {sum(totals['skipped'].values())} skipped: " + "; ".join(parts)

    def check(self, totals: Mapping[str, Any]) -> None:
        bad = sum(count for reason, count in totals["skipped"].items() if reason not in INTENDED_SKIPS)
        if totals["seen"] and bad / totals["seen"] > self.max_fraction:
            raise DRDataError(
                f"{bad} of {totals['seen']} samples read ({bad / totals['seen']:.1%}) were skipped, "
                f"more than --dataset-reinforcement-max-skip-fraction {self.max_fraction:g}. "
                f"{self.summary(totals)}. Fix or leave out the shards named above (regenerate them with "
                "`mobileclip2 reinforce` from the images as they are now), or raise "
                "--dataset-reinforcement-max-skip-fraction if these skips are expected."
            )


# ---------------------------------------------------------------------------------------------
# Checking the shards up front, so a wrong flag fails before training with a message.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardLayout:
    """What the first sample of the first shard holds."""

    keys: tuple[str, ...]
    embedding_width: int | None
    num_augmentations: int | None
    syn_keys: tuple[str, ...]


def shard_samples(url: str) -> Iterator[dict[str, Any]]:
    """The raw samples of one training shard, in order, with ``__key__`` and ``__url__``. It is
    opened as open_clip_train's webdataset loader opens it (webdataset's ``gopen``: paths, ``file:``,
    ``pipe:``, http(s)/scp through curl, ``gs:`` through gsutil) and read with the strict tar reader.
    Raises OSError (ShardReadError for a damaged shard) once it cannot be opened or read to its end,
    after the whole samples before the damage."""
    from webdataset.gopen import gopen

    stream = gopen(url)
    complete = False
    try:
        for sample in iter_samples(stream, url):
            yield {**sample, "__url__": url}
        complete = True
    finally:
        if complete:
            stream.close()  # a pipe: command's exit status is checked here
        else:
            with contextlib.suppress(Exception):  # the reason is already on its way (or reading stopped)
                stream.close()


def first_sample(urls: str | list[str]) -> dict[str, Any]:
    """The first raw sample of the first shard."""
    from ..compat.open_clip_train import expand_urls

    shard = expand_urls(urls)[0][0]
    try:
        with contextlib.closing(shard_samples(shard)) as samples:
            for sample in samples:
                return sample
    except OSError as error:
        raise DRDataError(f"the first training shard cannot be read: {error}") from None
    raise DRDataError(f"shard {shard!r} holds no samples")


def inspect_shards(
    urls: str | list[str], sampling: DRSampling, augmentation: Augmentation | None = None
) -> ShardLayout:
    """Check that the shards can feed ``sampling``; raise DRDataError naming what is missing."""
    raw = first_sample(urls)
    keys = tuple(sorted(k for k in raw if not k.startswith("__")))
    hint = (
        "make DR shards from plain image/caption shards with `mobileclip2 reinforce` (see docs/training.md), "
        "or distill online from live teachers with --distill-model/--distill-pretrained"
    )
    missing = []
    if image_key(raw) is None:
        missing.append("an image (" + "/".join(IMAGE_KEYS) + ")")
    if "txt" not in raw:
        missing.append("txt")
    if not sampling.online:
        missing += [key for key in ("paug.json",) if key not in raw]
        if not any(key in raw for key in EMBEDDING_KEYS):
            missing.append("stored teacher embeddings (npz or pth.gz)")
    syn = synthetic_captions(raw)
    syn_keys = tuple(key for key in syn if re.match(sampling.syn_text_key_regex, key))
    if sampling.uses_synthetic and not syn_keys:
        missing.append(
            f"synthetic captions (syn.json keys matching {sampling.syn_text_key_regex!r}; found "
            f"{sorted(syn) if syn else 'no syn.json'}) -- or train on real captions only with "
            "--dataset-reinforcement-mix-synthetic --dataset-reinforcement-mix-synthetic-ratio 0"
        )
    if missing:
        raise DRDataError(
            f"DR shards lack {', '.join(missing)} "
            f"(sample {raw.get('__key__')!r} has keys {list(keys)}); {hint}"
        )

    width = num_augs = None
    if not sampling.online:
        emb = decode_embeddings(raw)
        absent = [key for key in ("image_emb", "text_emb") if key not in emb]
        if absent:
            raise DRDataError(f"stored embeddings lack {absent} (have {sorted(emb)}); {hint}")
        widths = {key: int(np.asarray(value[0]).shape[-1]) for key, value in emb.items()}
        if len(set(widths.values())) != 1:
            raise DRDataError(f"stored embeddings have different widths {widths}")
        width = widths["image_emb"]
        params = augmentation_params(raw)
        num_augs = len(params)
        if len(emb["image_emb"]) != num_augs:
            raise DRDataError(f"{num_augs} stored augmentations but {len(emb['image_emb'])} image embeddings")
        if augmentation is not None:
            try:
                augmentation.decompress(params[0])
            except ValueError as error:
                raise DRDataError(str(error)) from None
        if sampling.uses_synthetic:
            texts = 1
            for key in syn_keys:
                try:
                    synthetic_embedding(emb, key, 0, texts)
                except DRDataError as error:
                    raise DRDataError(f"{error}; stored embeddings: {sorted(emb)}; {hint}") from None
    return ShardLayout(keys=keys, embedding_width=width, num_augmentations=num_augs, syn_keys=syn_keys)


# ---------------------------------------------------------------------------------------------
# The dataloader, shaped like open_clip_train.data.get_wds_dataset.
# ---------------------------------------------------------------------------------------------


def read_shards(sources: Iterable[Mapping[str, Any]], tally: SkipTally) -> Iterator[dict[str, Any]]:
    """A webdataset stage: ``{"url": shard}`` -> its raw samples (:func:`shard_samples`). A shard that
    cannot be opened or read to its end is counted in ``tally`` (:meth:`SkipTally.lose_shard`)
    instead of being dropped in silence, as webdataset's ``tarfile_to_samples_nothrow`` does."""
    whole_shards, whole_samples = 0, 0
    for source in sources:
        url, count = source["url"], 0
        try:
            for sample in shard_samples(url):
                count += 1
                yield sample
        except OSError as error:
            typical = round(whole_samples / whole_shards) if whole_shards else 0
            tally.lose_shard(url, typical - count, error)
        else:
            whole_shards, whole_samples = whole_shards + 1, whole_samples + count


def _prepare_stage(samples, augmentation, tokenizer, sampling, shared_epoch, min_image_size, tally):
    """Decode and prepare each raw sample; count every sample read and every skip in ``tally``."""
    epoch_value = shared_epoch.get_value()
    for raw in samples:
        tally.read()
        if image_key(raw) is None or "txt" not in raw:
            tally.skip(SKIP_INCOMPLETE, raw, f"has {sorted(k for k in raw if not k.startswith('__'))}")
            continue
        try:
            sample = decode_sample(raw, sampling.online)
            if min_image_size is not None and min(sample["image"].size) < min_image_size:
                tally.skip(SKIP_SMALL, raw)
                continue
            prepared = prepare_sample(sample, augmentation, tokenizer, sampling, epoch=epoch_value)
        except Exception as error:  # noqa: BLE001 - counted and judged by SkipMonitor, never silent
            tally.skip(_skip_reason(error), raw, f"{type(error).__name__}: {error}")
            continue
        yield prepared


def build_dr_dataloader(args, augmentation: Augmentation, sampling: DRSampling, tokenizer, epoch: int = 0):
    """open_clip_train-style DataInfo whose loader yields (images, texts, payload) batches."""
    import webdataset as wds

    from ..compat.open_clip_train import (
        DataInfo,
        ResampledShards2,
        SharedEpoch,
        detshuffle2,
        expand_urls,
        get_dataset_size,
    )

    shards = args.train_data
    resampled = getattr(args, "dataset_resampled", False)
    num_shards = None
    if args.train_num_samples is not None:
        num_samples = args.train_num_samples
    else:
        num_samples, num_shards = get_dataset_size(shards)
        if not num_samples:
            raise DRDataError("the number of training samples is unknown; pass --train-num-samples")
    shared_epoch = SharedEpoch(epoch=epoch)
    tally = SkipTally()  # one per pipeline copy: each loader worker counts its own samples
    if resampled:
        pipeline = [
            ResampledShards2(
                shards, weights=args.train_data_upsampling_factors, deterministic=True, epoch=shared_epoch
            )
        ]
    else:
        pipeline = [
            wds.SimpleShardList(shards),
            detshuffle2(
                bufsize=SHARD_SHUFFLE_SIZE, initial=SHARD_SHUFFLE_INITIAL, seed=args.seed, epoch=shared_epoch
            ),
            wds.split_by_node,
            wds.split_by_worker,
        ]
    pipeline += [
        partial(read_shards, tally=tally),
        wds.shuffle(bufsize=SAMPLE_SHUFFLE_SIZE, initial=SAMPLE_SHUFFLE_INITIAL),
        partial(
            _prepare_stage,
            augmentation=augmentation,
            tokenizer=tokenizer,
            sampling=sampling,
            shared_epoch=shared_epoch,
            min_image_size=getattr(args, "dataset_reinforcement_filter_image_size", None),
            tally=tally,
        ),
        partial(batches, batch_size=args.batch_size, partial_batches=False, tally=tally),
    ]
    dataset = wds.DataPipeline(*pipeline)
    if not resampled:
        num_shards = num_shards or len(expand_urls(shards)[0])
        if num_shards < args.workers * args.world_size:
            raise DRDataError(
                f"{num_shards} shards cannot feed {args.workers} workers x {args.world_size} processes; "
                "use fewer --workers, more shards, or --dataset-resampled"
            )
    global_batch_size = args.batch_size * args.world_size
    num_batches = math.ceil(num_samples / global_batch_size)
    num_workers = max(1, args.workers)
    num_worker_batches = math.ceil(num_batches / num_workers)
    num_batches = num_worker_batches * num_workers
    num_samples = num_batches * global_batch_size
    dataset = dataset.with_epoch(num_worker_batches)
    loader = wds.WebLoader(
        dataset, batch_size=None, shuffle=False, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    loader.num_batches = num_batches
    loader.num_samples = num_samples
    max_fraction = getattr(args, "dataset_reinforcement_max_skip_fraction", DEFAULT_MAX_SKIP_FRACTION)
    logging.info(f"DR data: {num_samples} samples per epoch in {num_batches} batches from {shards}")
    monitored = SkipMonitor(loader, max_fraction, epoch_of=shared_epoch.get_value)
    return DataInfo(dataloader=monitored, shared_epoch=shared_epoch)
