"""`mobileclip2 reinforce`: make dataset-reinforcement (DR) shards from plain image/caption shards.

Example (Apple's MobileCLIP2 teachers; DataCompDR used 30 augmentations per image for 12M):

    mobileclip2 reinforce 'data/{00000..00099}.tar' --output data-dr \\
        --teachers hf-hub:apple/DFN2B-CLIP-ViT-L-14,hf-hub:apple/DFN2B-CLIP-ViT-L-14-39B \\
        --teachers-pretrained N/A,N/A --num-augmentations 10 \\
        --captioner coca_ViT-L-14 --captioner-pretrained mscoco_finetuned_laion2B-s13B-b90k

then train with ``python -m mobileclip2.train --dataset-reinforcement
--dataset-reinforcement-config data-dr/config.json --train-data 'data-dr/{00000..00099}.tar' ...``.
"""

from __future__ import annotations

import argparse

HELP = "Add teacher embeddings, augmentation parameters and synthetic captions to webdataset shards (DR)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shards", nargs="+", help="input .tar shards (local; brace patterns like 'd/{000..009}.tar' expand)"
    )
    parser.add_argument(
        "--output", required=True, help="output directory (same shard names, plus config.json)"
    )
    parser.add_argument(
        "--teachers", required=True, help="comma list of open_clip CLIP models (hf-hub:/local-dir: allowed)"
    )
    parser.add_argument(
        "--teachers-pretrained",
        default=None,
        help="comma list of pretrained tags/files, one per teacher (N/A: none)",
    )
    parser.add_argument(
        "--num-augmentations", type=int, default=10, help="augmentations stored per image (default 10)"
    )
    parser.add_argument(
        "--aug-config",
        default=None,
        help="augmentation config: JSON text or a .json file, Apple's format (default: DataCompDR's RandAugment + "
        "RandomResizedCrop at the largest teacher size)",
    )
    parser.add_argument(
        "--captioner", default=None, help="open_clip CoCa model to generate synthetic captions with"
    )
    parser.add_argument("--captioner-pretrained", default=None, help="pretrained tag/file of the captioner")
    parser.add_argument(
        "--num-captions", type=int, default=5, help="captions generated per image (default 5)"
    )
    parser.add_argument(
        "--caption-key", default="syn_text", help="syn.json key for generated captions (default syn_text)"
    )
    parser.add_argument(
        "--syn-text-key-regex", default=r"^syn_text.*$", help="syn.json keys to embed (default ^syn_text.*$)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--bfloat16", action="store_true", help="store embeddings as bfloat16 pth.gz instead of float32 npz"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output shards")


def _load_aug_config(value: str | None):
    import json
    from pathlib import Path

    if value is None:
        return None
    text = (
        Path(value).read_text(encoding="utf-8")
        if value.strip().endswith(".json") and Path(value).is_file()
        else value
    )
    config = json.loads(text)
    # Accept Apple's whole DR config file as well as the bare image_augmentation section.
    return config.get("reinforce", {}).get("image_augmentation", config)


def run(args: argparse.Namespace) -> int:
    import braceexpand
    import open_clip  # noqa: F401 - registers the MobileCLIP names

    from mobileclip2.errors import MobileCLIP2Error
    from mobileclip2.train.reinforce import ReinforceOptions, reinforce
    from mobileclip2.train.teachers import TeacherEnsemble, parse_teacher_specs

    shards = [path for pattern in args.shards for path in braceexpand.braceexpand(pattern)]
    try:
        teachers = TeacherEnsemble.load(
            parse_teacher_specs(args.teachers, args.teachers_pretrained), device=args.device
        )
        print(f"teachers: {teachers.describe()}", flush=True)
        options = ReinforceOptions(
            num_augmentations=args.num_augmentations,
            augmentation=_load_aug_config(args.aug_config),
            captioner=args.captioner,
            captioner_pretrained=args.captioner_pretrained,
            num_captions=args.num_captions,
            caption_key=args.caption_key,
            syn_text_key_regex=args.syn_text_key_regex,
            batch_size=args.batch_size,
            bfloat16=args.bfloat16,
            seed=args.seed,
            overwrite=args.overwrite,
        )
        report = reinforce(shards, args.output, teachers, options, log=lambda line: print(line, flush=True))
    except (MobileCLIP2Error, ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"mobileclip2 reinforce: error: {error}")
        return 1
    skipped = ", ".join(f"{count} ({reason})" for reason, count in report.skipped.items()) or "none"
    print(
        f"{report.samples} samples in {len(report.shards)} shards, skipped: {skipped}, {report.seconds:.1f}s"
    )
    print(f"train with: --dataset-reinforcement --dataset-reinforcement-config {report.config_path}")
    return 0
