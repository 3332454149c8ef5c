"""``python -m mobileclip2.train``: open_clip_train's own main loop plus DR data and distillation.

Why hooks and not a fork. open_clip_train.main.main() already does everything a run needs (DDP
setup, model/optimizer/scheduler, resume, logging, checkpoints, evaluation). DR changes only three
of its steps, so this entry runs that very function with three of its module-level names swapped
for the duration of the call (mobileclip2.compat.open_clip_train.open_clip_train_hooks; which three
depends on the installed open_clip_train's loop, see that module):

* ``parse_args``: our flags (mobileclip2.train.args, Apple's names) are parsed first, the rest by
  open_clip_train's parser; ``--distill-model/--distill-pretrained`` are taken over (kept as
  ``args.online_distill_model/pretrained``) so that open_clip_train does not build its own
  single-teacher ``dist_model``: the teachers live in our loss instead;
* ``get_data``: with ``--dataset-reinforcement`` the train split is the DR pipeline
  (mobileclip2.train.data); other splits (val, ImageNet) are open_clip_train's. For online
  distillation on ordinary data, open_clip_train's train loader is wrapped so each batch also
  reaches the teachers;
* ``create_loss`` (open_clip_train 3.x): ``DRClipLoss`` (mobileclip2.train.losses) when DR or
  distillation is on, open_clip_train's loss otherwise;
* ``create_task`` (open_clip_train >= 4, whose loop runs a training task): a ``DRCLIPTask`` when DR or
  distillation is on (its ``DRClipLoss`` is attached by ``get_data``, which runs after it and is the
  first step that knows the shards and the student's preprocessing), open_clip_train's task otherwise.

The loop still sees its own batch shape and calls ``loss(**model_out)``; the teacher half of every step
travels through a StepChannel (mobileclip2.train.channel). Without DR/distillation flags this entry
behaves exactly like ``python -m open_clip_train.main`` (DDP on CPU-only machines included).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MobileCLIP2Error
from . import check_webdataset
from .args import (
    TrainArgsError,
    build_parser,
    resolve_teacher_dims,
    resolve_teacher_scales,
    split_argv,
    validate,
)

__all__ = ["main", "StudentPreprocess", "load_dr_config"]


@dataclass(frozen=True)
class StudentPreprocess:
    """What DR replay and online teachers need to know about the student's train transform."""

    size: tuple[int, int] | None  # None when the transform has no torchvision crop (timm aug-cfg)
    interpolation: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, transform) -> StudentPreprocess:
        from torchvision import transforms as T

        from ..shapes import height_width

        steps = list(getattr(transform, "transforms", [transform]))
        crop = next((t for t in steps if isinstance(t, T.RandomResizedCrop)), None)
        crop = crop or next((t for t in steps if isinstance(t, (T.CenterCrop, T.RandomCrop))), None)
        normalize = next((t for t in steps if isinstance(t, T.Normalize)), None)
        if normalize is None:
            raise TrainArgsError(
                f"cannot find the student's normalization in its train transform {transform!r}; "
                "DR/distillation needs to know it (open_clip's train transforms end with Normalize)"
            )
        size = None
        if crop is not None:
            size = height_width(crop.size)
        return cls(
            size=size,
            interpolation=getattr(crop, "interpolation", None),
            mean=tuple(float(v) for v in normalize.mean),
            std=tuple(float(v) for v in normalize.std),
        )


def load_dr_config(path: str) -> dict:
    """The DR config (Apple's layout: {"reinforce": {"image_augmentation": {...}}, ...})."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainArgsError(f"--dataset-reinforcement-config {path!r} does not exist") from None
    except json.JSONDecodeError as error:
        raise TrainArgsError(f"--dataset-reinforcement-config {path!r} is not JSON: {error}") from None
    augmentation = config.get("reinforce", {}).get("image_augmentation") if isinstance(config, dict) else None
    if not isinstance(augmentation, dict):
        raise TrainArgsError(
            f"--dataset-reinforcement-config {path!r} has no reinforce.image_augmentation section"
        )
    return config


def warn_if_warmup_outlasts_the_run(args, data: dict) -> None:
    """Say so when the learning-rate warmup is longer than the whole run: open_clip_train's default
    ``--warmup 10000`` keeps the learning rate near 0 through any short run, which looks like a model
    that does not learn. ``data`` is open_clip_train's dict of loaders; anything else has no run length."""
    loader = getattr(data.get("train"), "dataloader", None) if isinstance(data, dict) else None
    batches = getattr(loader, "num_batches", None)
    warmup, epochs = getattr(args, "warmup", None), getattr(args, "epochs", None)
    if not batches or warmup is None or not epochs:
        return
    steps = batches * epochs // max(1, getattr(args, "accum_freq", 1))
    if warmup >= steps:
        logging.warning(
            f"--warmup {warmup} is not shorter than the run ({steps} optimizer steps): the learning rate "
            "stays in its warmup the whole time. Pass a smaller --warmup for a short run."
        )


class Session:
    """State shared by the three hooks of one training run."""

    def __init__(self):
        self.args = None
        self.teacher_specs: list[tuple[str, str | None]] = []
        self.dr_config: dict | None = None
        self.student: StudentPreprocess | None = None
        self.tokenizer = None
        self.layout = None
        self.channel = None
        self.task = None  # open_clip_train >= 4: the DRCLIPTask built by the create_task hook

    @property
    def active(self) -> bool:
        return bool(self.args is not None and (self.args.dataset_reinforcement or self.teacher_specs))

    # -- parse_args ------------------------------------------------------------------------
    def wrap_parse_args(self, original):
        def parse_args(argv):
            from ..teachers import parse_teacher_specs

            ours, rest = split_argv(argv)
            args = original(rest)
            for name, value in vars(ours).items():
                setattr(args, name, value)
            validate(args)
            args.online_distill_model, args.online_distill_pretrained = (
                args.distill_model,
                args.distill_pretrained,
            )
            if args.distill_model is not None:
                self.teacher_specs = parse_teacher_specs(args.distill_model, args.distill_pretrained)
                # open_clip_train would build one dist_model from these; our loss owns the teachers.
                args.distill_model = args.distill_pretrained = None
            if args.dataset_reinforcement:
                self.dr_config = load_dr_config(args.dataset_reinforcement_config)
            self.args = args
            return args

        return parse_args

    # -- get_data --------------------------------------------------------------------------
    def wrap_get_data(self, original):
        def get_data(args, preprocess_fns, epoch=0, tokenizer=None, **extra):
            data = self._get_data(original, args, preprocess_fns, epoch, tokenizer, **extra)
            warn_if_warmup_outlasts_the_run(args, data)
            return data

        return get_data

    def _get_data(self, original, args, preprocess_fns, epoch, tokenizer, **extra):
        """open_clip_train's data, with the DR train split (or online distillation's teacher feed)."""
        if not self.active:
            return original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer, **extra)
        self.student = StudentPreprocess.from_transform(preprocess_fns[0])
        self.tokenizer = tokenizer
        if self.channel is None:
            self.channel = self._new_channel(args)
        if not args.dataset_reinforcement:
            data = original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer, **extra)
            if "train" in data:
                info = data["train"]
                info.dataloader = self._channel_loader(info.dataloader, raw_batch=True)
        else:
            without_train = argparse.Namespace(**{**vars(args), "train_data": None})
            data = original(without_train, preprocess_fns, epoch=epoch, tokenizer=tokenizer, **extra)
            info = self._dr_train_data(args, epoch, tokenizer)
            info.dataloader = self._channel_loader(info.dataloader, raw_batch=bool(self.teacher_specs))
            data["train"] = info
        if self.task is not None and not hasattr(self.task, "loss"):
            self.task.attach_loss(self._build_loss(args))
        return data

    @staticmethod
    def _new_channel(args):
        from .channel import StepChannel

        return StepChannel(keep=args.accum_freq)

    def _channel_loader(self, loader, raw_batch: bool):
        from ..compat.open_clip_train import PAYLOAD_KEY
        from .channel import ChannelLoader

        if self.task is not None:  # the task pushes each payload in prepare_batch (loop order)
            return ChannelLoader(loader, None, raw_batch=raw_batch, payload_key=PAYLOAD_KEY)
        return ChannelLoader(loader, self.channel, raw_batch=raw_batch)

    def _dr_train_data(self, args, epoch, tokenizer):
        from ..augment import Augmentation, student_augmentation_config
        from .data import DRSampling, build_dr_dataloader, inspect_shards

        sampling = DRSampling(
            mix_synthetic=args.dataset_reinforcement_mix_synthetic,
            mix_synthetic_ratio=args.dataset_reinforcement_mix_synthetic_ratio,
            sample_sequential=args.dataset_reinforcement_sample_sequential,
            syn_text_key_regex=args.dataset_reinforcement_syn_text_key_regex,
            online=bool(self.teacher_specs),
        )
        if self.student.size is None:
            raise TrainArgsError(
                "cannot read the student's input size from its train transform (a timm --aug-cfg?); "
                "DR replays augmentations at that size, so use open_clip's default train transform"
            )
        try:
            config = student_augmentation_config(
                self.dr_config["reinforce"]["image_augmentation"],
                self.student.size,
                self.student.interpolation,
                self.student.mean,
                self.student.std,
            )
            augmentation = Augmentation.from_config(config)
        except ValueError as error:
            raise TrainArgsError(
                f"--dataset-reinforcement-config {args.dataset_reinforcement_config!r}: {error}"
            ) from None
        self.layout = inspect_shards(args.train_data, sampling, augmentation)
        if args.rank == 0:
            augmentations = (
                "fresh augmentations for live teachers"
                if sampling.online
                else "replaying stored augmentations"
            )
            captions = (
                "separate synthetic-caption loss" if sampling.separate_synthetic else "one caption per image"
            )
            logging.info(
                f"DR shards: keys {list(self.layout.keys)}, "
                f"teacher embedding width {self.layout.embedding_width}, "
                f"{self.layout.num_augmentations} stored augmentations, "
                f"synthetic caption keys {list(self.layout.syn_keys)}; "
                f"{augmentations}, {captions}"
            )
        return build_dr_dataloader(args, augmentation, sampling, tokenizer, epoch=epoch)

    # -- create_loss (open_clip_train 3.x) ---------------------------------------------------
    def wrap_create_loss(self, original):
        def create_loss(args):
            if not self.active:
                return original(args)
            return self._build_loss(args)

        return create_loss

    # -- create_task (open_clip_train >= 4) ---------------------------------------------------
    def wrap_create_task(self, original):
        def create_task(args, model, dist_model=None, naflex_data_config=None, **extra):
            from ..compat.ddp import cpu_safe_task
            from ..compat.open_clip_train import dr_task_class

            if not self.active:
                task = original(
                    args, model=model, dist_model=dist_model, naflex_data_config=naflex_data_config, **extra
                )
                return cpu_safe_task(task)
            if naflex_data_config is not None:
                raise TrainArgsError("dataset reinforcement / distillation does not support --use-naflex")
            self.channel = self._new_channel(args)
            self.task = dr_task_class()(
                model, channel=self.channel, rank=args.rank, world_size=args.world_size
            )
            return cpu_safe_task(self.task)

        return create_task

    def _build_loss(self, args):
        """DRClipLoss for this run: teachers (online) or the shards' recorded widths and scales (DR)."""
        from .losses import DistillConfig, DistInfo, DRClipLoss

        teachers = self._load_teachers(args) if self.teacher_specs else None
        if teachers is not None:
            dims = teachers.dims
            if list(args.distill_teacher_dimension) not in ([-1], dims):
                raise TrainArgsError(
                    f"--distill-teacher-dimension {args.distill_teacher_dimension} "
                    f"does not match the teachers' embedding widths {dims}"
                )
            scales = resolve_teacher_scales(
                args.distill_logit_scale, teachers.logit_scales, len(dims), "the teachers"
            )
        else:
            recorded = self.dr_config.get("teacher_dimension")
            dims = resolve_teacher_dims(args.distill_teacher_dimension, recorded, self.layout.embedding_width)
            scales = resolve_teacher_scales(
                args.distill_logit_scale,
                self.dr_config.get("teacher_logit_scale"),
                len(dims),
                f"the DR shards (config {args.dataset_reinforcement_config!r} records none)",
            )
        cfg = DistillConfig(
            teacher_dims=tuple(dims),
            teacher_scales=tuple(scales),
            loss_weights=tuple(args.distill_loss_weights),
            average_after_softmax=args.distill_average_after_softmax,
        )
        if args.rank == 0:
            logging.info(f"Distillation: {cfg}")
        dist = DistInfo(args.rank, args.world_size, args.local_loss, args.gather_with_grad)
        return DRClipLoss(cfg, self.channel, teachers=teachers, accum_freq=args.accum_freq, dist=dist)

    def _load_teachers(self, args):
        from ..teachers import TeacherEnsemble

        teachers = TeacherEnsemble.load(self.teacher_specs, device=args.device, cache_dir=args.cache_dir)
        teachers.check_tokenizer(self.tokenizer)
        teachers.set_student_normalization(self.student.mean, self.student.std)
        if args.rank == 0:
            logging.info(f"Online distillation teachers: {teachers.describe()}")
        return teachers


def main(argv: Sequence[str] | None = None) -> int:
    """Run open_clip_train's main with DR/distillation hooks; returns a process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        print("\nAll other flags are open_clip_train's:\n")
    from ..compat.open_clip_train import open_clip_train_hooks

    session = Session()
    hooks = {
        "parse_args": session.wrap_parse_args,
        "get_data": session.wrap_get_data,
        "create_loss": session.wrap_create_loss,  # hooked on open_clip_train 3.x's loop
        "create_task": session.wrap_create_task,  # hooked on open_clip_train >= 4's task loop
    }
    try:
        check_webdataset()
        with open_clip_train_hooks(hooks) as train_main:
            result = train_main.main(argv)
    except MobileCLIP2Error as error:
        print(f"mobileclip2.train: error: {error}", file=sys.stderr)
        return 2
    return 0 if result is None else 1
