"""Command-line arguments that ``python -m mobileclip2.train`` adds to open_clip_train's own.

Names, types and defaults are those of Apple's patch (ml-mobileclip training/open_clip_v2.patch),
so Apple's run scripts (training/configs/run_*.sh) work with ``-m mobileclip2.train`` in place
of ``-m src.open_clip_train.main``. open_clip_train's ``parse_args`` builds its parser inside the
function, so instead of editing it we parse our flags first (``parse_known_args``, no prefix
abbreviations) and hand the rest to it unchanged; ``--distill-model`` / ``--distill-pretrained``
are open_clip_train's own flags and stay with it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import TrainArgsError

__all__ = ["build_parser", "split_argv", "validate", "TrainArgsError"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mobileclip2.train",
        add_help=False,
        allow_abbrev=False,
        description="open_clip_train with dataset reinforcement (DR) and ensemble distillation.",
    )
    group = parser.add_argument_group("mobileclip2: dataset reinforcement and distillation (Apple's flags)")
    group.add_argument(
        "--dataset-reinforcement",
        action="store_true",
        default=False,
        help="Read augmentation parameters, synthetic captions and teacher embeddings from the (webdataset) "
        "train shards.",
    )
    group.add_argument(
        "--dataset-reinforcement-config",
        type=str,
        default=None,
        help="JSON with reinforce.image_augmentation: the augmentation config the shards were generated with "
        "(config.json written by `mobileclip2 reinforce`, or Apple's configs/datacompdr*.json).",
    )
    group.add_argument(
        "--dataset-reinforcement-mix-synthetic",
        action="store_true",
        default=False,
        help="Use one caption per image: the synthetic one with probability "
        "--dataset-reinforcement-mix-synthetic-ratio, else the real one "
        "(no separate synthetic-caption loss).",
    )
    group.add_argument(
        "--dataset-reinforcement-mix-synthetic-ratio",
        type=float,
        default=0.0,
        help="Probability of a synthetic caption when mixing; 0.0: all real, 1.0: all synthetic.",
    )
    group.add_argument(
        "--dataset-reinforcement-sample-sequential",
        action="store_true",
        default=False,
        help="Pick augmentation/caption by epoch instead of at random.",
    )
    group.add_argument(
        "--dataset-reinforcement-syn-text-key-regex",
        type=str,
        default=r"^syn_text.*$",
        help="syn.json keys to draw synthetic captions from.",
    )
    group.add_argument(
        "--dataset-reinforcement-filter-image-size",
        type=int,
        default=None,
        help="Skip images smaller than this (px) on their short side.",
    )
    group.add_argument(
        "--dataset-reinforcement-max-skip-fraction",
        type=float,
        default=0.01,
        help="Stop with an error once more than this fraction of the samples read had to be skipped "
        "(undecodable, incomplete, crop boxes that do not fit the image, shards that are missing or "
        "cannot be read to their end); size filtering does not count. "
        "Each epoch's skips are summarized in the log.",
    )
    group.add_argument(
        "--distill-loss-weights",
        type=float,
        nargs="+",
        default=[1.0, 1.0],
        help="[contrastive, distillation] loss weights (Apple: 0 1 for MobileCLIP-S*, 0.25 0.75 for B).",
    )
    group.add_argument(
        "--distill-teacher-dimension",
        type=int,
        nargs="+",
        default=[-1],
        help="Embedding width of each ensemble member, in order (-1: one teacher, or the widths recorded "
        "in the DR config).",
    )
    group.add_argument(
        "--distill-average-after-softmax",
        action="store_true",
        default=False,
        help="Average the ensemble members' softmaxed similarities instead of summing their logits.",
    )
    group.add_argument(
        "--distill-logit-scale",
        type=float,
        nargs="+",
        default=None,
        help="Teacher logit scale(s), one per member or one for all "
        "(Apple: 100 for DataCompDR, 70 60 for DFNDR). "
        "Default: the teachers' own (online), or those recorded in the DR config.",
    )
    return parser


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(our flags, the remaining argv for open_clip_train's parse_args)."""
    return build_parser().parse_known_args(list(argv))


def validate(args: argparse.Namespace) -> None:
    """Reject combinations this entry cannot run, before any model is built."""
    online = args.distill_model is not None or args.distill_pretrained is not None
    if online and (args.distill_model is None or args.distill_pretrained is None):
        raise TrainArgsError(
            "online distillation needs both --distill-model and --distill-pretrained "
            "(comma lists for an ensemble; N/A for hf-hub:/local-dir: names)"
        )
    if not (args.dataset_reinforcement or online):
        return
    if args.dataset_reinforcement:
        if not args.dataset_reinforcement_config:
            raise TrainArgsError(
                "--dataset-reinforcement needs --dataset-reinforcement-config (the config.json written next "
                "to the shards by `mobileclip2 reinforce`, or Apple's configs/datacompdr*.json)"
            )
        if args.dataset_type not in ("webdataset", "auto"):
            raise TrainArgsError(
                f"--dataset-reinforcement reads webdataset shards, not --dataset-type {args.dataset_type}"
            )
        if not args.train_data:
            raise TrainArgsError("--dataset-reinforcement needs --train-data (the reinforced shards)")
        if not 0.0 <= args.dataset_reinforcement_mix_synthetic_ratio <= 1.0:
            raise TrainArgsError("--dataset-reinforcement-mix-synthetic-ratio must be in [0, 1]")
        if not 0.0 <= args.dataset_reinforcement_max_skip_fraction <= 1.0:
            raise TrainArgsError(
                "--dataset-reinforcement-max-skip-fraction must be in [0, 1] "
                "(a fraction of the samples read), "
                f"got {args.dataset_reinforcement_max_skip_fraction:g}"
            )
    if len(args.distill_loss_weights) != 2:
        raise TrainArgsError(
            "--distill-loss-weights takes two numbers [contrastive, distill], "
            f"got {args.distill_loss_weights}"
        )
    unsupported = {
        "--siglip": args.siglip,
        "--horovod": getattr(args, "horovod", False),  # open_clip_train >= 4 has no --horovod
        "a CoCa model": "coca" in args.model.lower(),
    }
    for what, used in unsupported.items():
        if used:
            raise TrainArgsError(
                f"dataset reinforcement / distillation in mobileclip2.train does not support {what}"
            )
    if args.distill_logit_scale is not None and any(scale <= 0 for scale in args.distill_logit_scale):
        raise TrainArgsError(f"--distill-logit-scale must be positive, got {args.distill_logit_scale}")


def resolve_teacher_dims(flag: Sequence[int], recorded: Sequence[int] | None, width: int) -> list[int]:
    """Ensemble member widths: the flag, else the DR config's record, else one teacher of ``width``."""
    flag = list(flag)
    if flag != [-1]:
        if sum(flag) != width or any(dim <= 0 for dim in flag):
            raise TrainArgsError(
                f"--distill-teacher-dimension {flag} does not split the {width}-wide teacher embeddings"
            )
        if recorded is not None and list(recorded) != flag:
            raise TrainArgsError(
                f"--distill-teacher-dimension {flag} contradicts the DR config's teacher widths "
                f"{list(recorded)}"
            )
        return flag
    if recorded is not None:
        if sum(recorded) != width:
            raise TrainArgsError(
                f"the DR config's teacher widths {list(recorded)} do not sum to the stored width {width}"
            )
        return list(recorded)
    return [width]


def resolve_teacher_scales(
    flag: Sequence[float] | None, fallback: Sequence[float] | None, members: int, source: str
) -> list[float]:
    """Per-member logit scales: the flag (one value is used for every member), else ``fallback``."""
    if flag is not None:
        flag = [float(v) for v in flag]
        if len(flag) == 1:
            return flag * members
        if len(flag) != members:
            accepted = (
                "1 value" if members == 1 else f"1 value (for every teacher) or {members}, one per teacher"
            )
            raise TrainArgsError(
                f"--distill-logit-scale has {len(flag)} values for {members} teacher(s); give {accepted}"
            )
        return flag
    if fallback is None:
        raise TrainArgsError(
            f"no teacher logit scale known for {source}; pass --distill-logit-scale "
            "(Apple uses 100 for DataCompDR and 70 60 for DFNDR)"
        )
    if len(fallback) != members:
        raise TrainArgsError(f"{source} records {len(fallback)} logit scales for {members} teachers")
    return [float(v) for v in fallback]
