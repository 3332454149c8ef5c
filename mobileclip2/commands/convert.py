"""`mobileclip2 convert SRC DST [--model NAME]`: Apple V1 checkpoint -> OpenCLIP safetensors.

The format is detected from the keys; Apple V1 files reveal their architecture, so ``--model`` is
only needed for OpenCLIP-format files (or to insist on a name). The result is verified with a
strict load into ``open_clip.create_model(NAME)`` before anything is written. Nothing is lost:
an existing output needs ``--overwrite``, the input is never the output, and the file appears
under its name only when complete (mobileclip2.files.atomic_output).
"""

from __future__ import annotations

import argparse
import os

HELP = "Convert an Apple MobileCLIP V1 checkpoint (mobileclip_*.pt) to an OpenCLIP .safetensors file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="checkpoint to read (.pt/.pth/.bin/.safetensors), read with weights_only=True"
    )
    parser.add_argument(
        "dst", help="output file; must end in .safetensors (missing parent folders are created)"
    )
    parser.add_argument(
        "--model", default=None, help="OpenCLIP model name (default: recognised from the checkpoint)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it already exists")


def check_destination(src: str, dst: str, overwrite: bool) -> None:
    """Refuse, before any slow work, outputs that would lose data: the input itself, or an existing
    file without --overwrite."""
    from mobileclip2.convert import check_output_name

    check_output_name(dst)
    same = os.path.realpath(src) == os.path.realpath(dst) or (
        os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst)
    )
    if same:
        raise ValueError(
            f"the output {dst!r} is the input file: converting in place would destroy the original "
            "if anything went wrong; choose another output name."
        )
    if os.path.isdir(dst):
        raise IsADirectoryError(f"the output {dst!r} is a folder; give a file name ending in '.safetensors'.")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(
            f"the output {dst!r} already exists; pass --overwrite to replace it, or choose another name."
        )


def run(args: argparse.Namespace) -> int:
    """Errors propagate to mobileclip2.cli.main, which prints them (one handler for every command)."""
    from mobileclip2.convert import read_and_convert, save_safetensors

    check_destination(args.src, args.dst, args.overwrite)
    converted = read_and_convert(args.src, args.model)
    save_safetensors(converted.state_dict, args.dst)
    print(f"read   {args.src}: {converted.source_format}, {converted.source_tensors} tensors")
    print(
        f"wrote  {args.dst}: {len(converted.state_dict)} tensors, strict load into {converted.model_name} ok"
    )
    print(f"use    open_clip.create_model_and_transforms({converted.model_name!r}, pretrained={args.dst!r})")
    return 0
