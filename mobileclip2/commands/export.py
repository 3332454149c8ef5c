"""`mobileclip2 export NAME --pretrained TAG|FILE --format FMT --out DIR [--int8 ...]`: one artifact
per tower.

Writes ``NAME[.int8].image<suffix>``, ``NAME[.int8].text<suffix>`` and ``NAME[.int8].<format>.json``
(preprocessing, tokenizer, embed dim, format, precision, sizes, parity or int8 fidelity) into DIR,
moved into place only after the checks pass (exit 1 otherwise, previous export untouched).
"""

from __future__ import annotations

import argparse
import sys

from mobileclip2.export.formats import (
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_MIN_COSINE,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    FORMATS,
)

HELP = (
    "Export the image and text towers (ONNX, ExecuTorch, Core ML, LiteRT, OpenVINO; fp32 or int8) "
    "with a JSON sidecar."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="open_clip model name, e.g. MobileCLIP2-S0")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="pretrained tag or local checkpoint file (default: none -- random weights, for testing)",
    )
    extras = ", ".join(f"{spec.name}: pip install 'mobileclip2[{spec.extra}]'" for spec in FORMATS.values())
    parser.add_argument(
        "--format",
        default="onnx",
        choices=list(FORMATS),
        help=f"output format (default onnx; installs: {extras})",
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    int8_formats = ", ".join(spec.name for spec in FORMATS.values() if spec.int8)
    parser.add_argument("--int8", action="store_true", help=f"int8 weights and activations ({int8_formats})")
    parser.add_argument(
        "--calibration-images",
        metavar="DIR",
        help="images to calibrate int8 on (recursive; sub-folder names = labels for zero-shot agreement)",
    )
    parser.add_argument(
        "--calibration-captions",
        metavar="FILE",
        help="captions to calibrate the int8 text tower on, one per line",
    )
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help="fail an int8 export whose cosine to fp32 on any evaluated input (calibration, held-out and "
        f"built-in captions: the minimum, not the mean) is below this (default {DEFAULT_MIN_COSINE})",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="fail an int8 export whose zero-shot top-1 agreement with fp32 (when labels exist: image "
        f"sub-folders or captions) is below this (default {DEFAULT_MIN_AGREEMENT})",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    precision_formats = ", ".join(s.name for s in FORMATS.values() if "compute_precision" in dict(s.options))
    parser.add_argument(
        "--precision",
        choices=("fp16", "fp32"),
        default=None,
        help=f"compute precision of both towers ({precision_formats}; default: image fp16, text fp16 when "
        "its fp16 check passes, else fp32)",
    )
    parser.add_argument("--normalize", action="store_true", help="export L2-normalized embeddings")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max abs difference of an fp32 artifact vs PyTorch before failing "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity / fidelity checks")
    parser.add_argument(
        "--dynamo",
        action="store_true",
        help="ONNX: use torch's dynamo-based exporter (needs the onnxscript package)",
    )


def run(args: argparse.Namespace) -> int:
    import os
    import warnings

    import mobileclip2
    from mobileclip2.export.pipeline import export_model

    takes = dict(FORMATS[args.format].options)
    if args.precision is not None and "compute_precision" not in takes:
        raise ValueError(
            f"--precision does not apply to --format {args.format} (it takes: {', '.join(takes)})"
        )
    given = {"opset": args.opset, "dynamo": args.dynamo, "compute_precision": args.precision}
    options = {key: value for key, value in given.items() if key in takes and value is not None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = export_model(
            args.name,
            args.out,
            pretrained=args.pretrained,
            format=args.format,
            int8=args.int8,
            calibration_images=args.calibration_images,
            calibration_captions=args.calibration_captions,
            normalize=args.normalize,
            check=not args.no_check,
            tolerance=args.tolerance,
            min_cosine=args.min_cosine,
            min_agreement=args.min_agreement,
            **options,
        )
    ours = os.path.dirname(os.path.abspath(mobileclip2.__file__)) + os.sep
    for warning in caught:  # ours (unmeasured int8 fidelity, an unsafe fp16 asked for), not third parties'
        if issubclass(warning.category, UserWarning) and os.path.abspath(warning.filename).startswith(ours):
            print(f"mobileclip2 export: warning: {warning.message}", file=sys.stderr)
    for tower in (result.image, result.text):
        if tower.fidelity:
            check = f"{tower.precision} cosine to fp32, mean/min: " + ", ".join(
                f"{summary['mean']:.4f}/{summary['min']:.4f} ({name.replace('_', ' ')})"
                for name, summary in tower.fidelity.items()
                if summary is not None
            )
        elif tower.structure:
            check = f"{tower.precision}; structure checked (numerics need macOS, see docs/deployment.md)"
            if tower.fp16_check:
                check += f"; fp16 check: {tower.fp16_check['why']}"
        elif tower.max_abs_diff is not None:
            check = f"max abs diff vs PyTorch {tower.max_abs_diff:.2e}"
        else:
            check = "not checked"
        size = tower.size_bytes / 2**20
        print(
            f"wrote  {tower.path}  ({tower.input_name} {tower.input_shape} {tower.input_dtype} -> "
            f"{tower.output_name}; {size:.1f} MiB; {check})"
        )
    print(f"wrote  {result.config_path}  (preprocessing, tokenizer, embed dim {result.config['embed_dim']})")
    return 0
