"""`mobileclip2 convert SRC DST [--model NAME]`: Apple V1 checkpoint -> OpenCLIP safetensors.

The format is detected from the keys; Apple V1 files reveal their architecture, so ``--model`` is
only needed for OpenCLIP-format files (or to insist on a name). The result is verified with a
strict load into ``open_clip.create_model(NAME)`` before anything is written.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Convert an Apple MobileCLIP V1 checkpoint (mobileclip_*.pt) to an OpenCLIP .safetensors file."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="checkpoint to read (.pt/.pth/.bin/.safetensors), read with weights_only=True"
    )
    parser.add_argument("dst", help="output file; must end in .safetensors")
    parser.add_argument(
        "--model", default=None, help="OpenCLIP model name (default: recognised from the checkpoint)"
    )


def run(args: argparse.Namespace) -> int:
    from mobileclip2.convert import check_output_name, read_and_convert, save_safetensors
    from mobileclip2.errors import MobileCLIP2Error

    try:
        check_output_name(args.dst)
        converted = read_and_convert(args.src, args.model)
        save_safetensors(converted.state_dict, args.dst)
    except (MobileCLIP2Error, FileNotFoundError, ValueError) as error:
        print(f"mobileclip2 convert: error: {error}", file=sys.stderr)
        return 1
    print(f"read   {args.src}: {converted.source_format}, {converted.source_tensors} tensors")
    print(
        f"wrote  {args.dst}: {len(converted.state_dict)} tensors, strict load into {converted.model_name} ok"
    )
    print(f"use    open_clip.create_model_and_transforms({converted.model_name!r}, pretrained={args.dst!r})")
    return 0
