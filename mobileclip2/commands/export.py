"""`mobileclip2 export NAME --pretrained TAG|FILE --format onnx --out DIR`: one ONNX graph per tower.

Writes ``NAME.image.onnx`` and ``NAME.text.onnx`` (dynamic batch axis, reparameterized model) and
``NAME.json`` (preprocessing, tokenizer, embed dim, logit scale, parity) into DIR, then checks
each graph against PyTorch in onnxruntime and fails (exit 1) above the tolerance.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Export the image and text towers as separate ONNX graphs with a JSON sidecar and a parity check."
# Same values as mobileclip2.exporting (kept here so `--help` does not import torch; a test checks).
FORMATS = ("onnx",)
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="open_clip model name, e.g. MobileCLIP2-S0")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag or local checkpoint file (default: none -- random weights, for testing)",
    )
    parser.add_argument(
        "--format", default="onnx", help=f"output format: {', '.join(FORMATS)} (default onnx)"
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--normalize", action="store_true", help="export L2-normalized embeddings")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"max abs difference onnxruntime vs PyTorch before failing (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument(
        "--dynamo",
        action="store_true",
        help="use torch's dynamo-based exporter (needs the onnxscript package)",
    )


def run(args: argparse.Namespace) -> int:
    from mobileclip2.errors import MobileCLIP2Error
    from mobileclip2.exporting import export

    try:
        result = export(
            args.name,
            args.out,
            pretrained=args.pretrained,
            format=args.format,
            opset=args.opset,
            normalize=args.normalize,
            check=not args.no_check,
            tolerance=args.tolerance,
            dynamo=args.dynamo,
        )
    except (MobileCLIP2Error, FileNotFoundError, ValueError, ImportError) as error:
        print(f"mobileclip2 export: error: {error}", file=sys.stderr)
        return 1
    for tower in (result.image, result.text):
        diff = (
            "not checked"
            if tower.max_abs_diff is None
            else f"max abs diff vs PyTorch {tower.max_abs_diff:.2e}"
        )
        print(f"wrote  {tower.path}  ({tower.input_name} {tower.input_shape} -> {tower.output_name}; {diff})")
    print(f"wrote  {result.config_path}  (preprocessing, tokenizer, embed dim {result.config['embed_dim']})")
    return 0
