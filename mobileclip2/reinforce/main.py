"""`mobileclip2 reinforce`: make dataset-reinforcement (DR) shards from plain image/caption shards.

Example (Apple's MobileCLIP2 teachers; DataCompDR used 30 augmentations per image for 12M):

    mobileclip2 reinforce 'data/{00000..00099}.tar' --output data-dr \\
        --teachers hf-hub:apple/DFN2B-CLIP-ViT-L-14,hf-hub:apple/DFN2B-CLIP-ViT-L-14-39B \\
        --teachers-pretrained N/A,N/A --num-augmentations 10 \\
        --captioner coca_ViT-L-14 --captioner-pretrained mscoco_finetuned_laion2B-s13B-b90k

Many GPUs / nodes (every rank takes its share of the shards; same flags):

    torchrun --nproc-per-node 8 --nnodes 2 ... -m mobileclip2.reinforce \\
        's3://bucket/data/{00000..09999}.tar' --output s3://bucket/data-dr ...

A rerun with the same arguments resumes (finished shards are kept); then train with
``python -m mobileclip2.train --dataset-reinforcement --dataset-reinforcement-config
data-dr/config.json --train-data 'data-dr/{00000..00099}.tar' ...``.
"""

from __future__ import annotations

import argparse

from ..system import PRECISIONS

HELP = "Add teacher embeddings, augmentation parameters and synthetic captions to webdataset shards (DR)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shards",
        nargs="+",
        help="input .tar shards: paths, brace patterns ('d/{000..009}.tar'), 'pipe:CMD' or fsspec URLs "
        "(s3://, gs://, hf://, file://, ...)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="output folder, path or fsspec URL (same shard names, plus config.json and the manifest)",
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
        help="augmentation config: JSON text or a .json file, Apple's format (default: DataCompDR's "
        "RandAugment + RandomResizedCrop at the largest teacher size)",
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
    parser.add_argument("--batch-size", type=int, default=32, help="images per teacher batch (default 32)")
    parser.add_argument(
        "--bfloat16", action="store_true", help="store embeddings as bfloat16 pth.gz instead of float32 npz"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="auto", help="auto (default: this rank's GPU if any, else cpu), cuda, cpu, ..."
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *PRECISIONS],
        help="teachers' and captioner's dtype (default auto: bf16 on GPU, fp32 on CPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader processes decoding and augmenting per rank (default: 0 on CPU, "
        "min(8, CPU cores / local ranks) on GPU)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="per-rank progress bars (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every shard and replace config.json (default: resume a run with the same arguments)",
    )
    parser.add_argument(
        "--on-bad-shard",
        choices=["fail", "record"],
        default="fail",
        help="an input shard that cannot be read (missing, truncated, corrupt): fail the run (default), "
        "or record it as failed in the manifest and go on; either way it is never taken for finished, "
        "a rerun retries it, and the exit status is 1",
    )
    parser.add_argument(
        "--on-nonfinite",
        choices=["skip", "fail"],
        default="skip",
        help="a sample whose teacher embeddings hold NaN or inf (e.g. an fp16/bf16 overflow): skip it "
        "with its reason in the manifest and summary (default), or fail the run",
    )
    parser.add_argument(
        "--dist-timeout-hours",
        type=float,
        default=72.0,
        help="under torchrun: how long a rank may wait for the others (default 72)",
    )


def _load_aug_config(value: str | None):
    import json
    from pathlib import Path

    if value is None:
        return None
    if value.strip().startswith("{"):
        text = value
    else:
        try:
            text = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"--aug-config {value!r} is neither JSON nor a readable file: {error}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--aug-config {value!r} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--aug-config must hold a JSON object, got {type(config).__name__}")
    # Accept Apple's whole DR config file as well as the bare image_augmentation section.
    section = config.get("reinforce")
    if isinstance(section, dict) and "image_augmentation" in section:
        return section["image_augmentation"]
    return config


def _default_workers(device: str) -> int:
    import os

    import torch

    from ..system import usable_cores

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return 0  # the teachers use the cores
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(8, usable_cores() // local))


def run(args: argparse.Namespace) -> int:
    import sys

    import open_clip  # noqa: F401 - registers the MobileCLIP names

    from ..errors import MobileCLIP2Error
    from ..teachers import parse_teacher_specs
    from .distributed import init_process_group
    from .generate import ReinforceOptions, reinforce, summary_lines

    started = init_process_group(args.dist_timeout_hours)
    rank = 0
    try:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        prefix = f"[rank {rank}] " if dist.is_initialized() else ""
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
            device=args.device,
            precision=args.precision,
            num_workers=_default_workers(args.device) if args.workers is None else args.workers,
            progress=sys.stderr.isatty() if args.progress is None else args.progress,
            on_bad_shard=args.on_bad_shard,
            on_nonfinite=args.on_nonfinite,
        )
        specs = parse_teacher_specs(args.teachers, args.teachers_pretrained)
        report = reinforce(
            args.shards, args.output, specs, options, log=lambda line: print(prefix + line, flush=True)
        )
    except (MobileCLIP2Error, ValueError, OSError) as error:
        print(f"mobileclip2 reinforce: error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        for line in summary_lines(report):
            print(line, flush=True)
        print(f"train with: --dataset-reinforcement --dataset-reinforcement-config {report.config_path}")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mobileclip2.reinforce`` (and under torchrun): the same flags as
    ``mobileclip2 reinforce``."""
    parser = argparse.ArgumentParser(prog="python -m mobileclip2.reinforce", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
