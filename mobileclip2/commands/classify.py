"""`mobileclip2 classify IMAGE... --labels ... --model NAME --pretrained TAG|FILE`: zero-shot labels.

Each image gets the labels ranked by probability (softmax over the model's scaled cosine
similarities between the image and ``template.format(label)``). Images are checked before the model
loads, weights that cannot be fetched fail within seconds (mobileclip2.loading), and a progress bar
runs on stderr when there are several images. The model runs through mobileclip2.optimize on CPU.

Example (the bundled picture; with a local checkpoint file instead of a tag it works offline):

    mobileclip2 classify "$(python -c 'import mobileclip2; print(mobileclip2.EXAMPLE_IMAGE)')" \\
        --labels "a house on a hill" "a cat" "a city at night" --model MobileCLIP2-S0 --pretrained dfndr2b
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HELP = "Zero-shot classify images against text labels and print the labels ranked per image."
DEFAULT_TEMPLATE = "a photo of {}."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument(
        "--labels", nargs="+", default=[], help="candidate labels, e.g. --labels cat dog 'a red car'"
    )
    parser.add_argument(
        "--labels-file", default=None, help="file with one label per line (added to --labels)"
    )
    parser.add_argument("--model", required=True, help="open_clip model name, e.g. MobileCLIP2-S0")
    parser.add_argument(
        "--pretrained", required=True, help="pretrained tag (e.g. dfndr2b) or local checkpoint file"
    )
    parser.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE,
        help=f"prompt with {{}} for the label (default {DEFAULT_TEMPLATE!r}; '{{}}' uses labels verbatim)",
    )
    parser.add_argument("--top", type=int, default=5, help="labels to print per image (default 5, 0 = all)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument(
        "--no-optimize", action="store_true", help="skip mobileclip2.optimize (plain eager model)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_labels(labels: list[str], labels_file: str | None = None) -> list[str]:
    """Labels from the command line and/or a file (one per line, blank lines and duplicates dropped)."""
    found = [label.strip() for label in labels]
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {labels_file!r}")
        found += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    unique = list(dict.fromkeys(label for label in found if label))
    if not unique:
        raise ValueError("no labels given: pass --labels LABEL [LABEL ...] and/or --labels-file FILE")
    return unique


def check_images(paths: list[str]) -> list[Path]:
    """The image paths as Paths, checked before any model loads.

    Raises FileNotFoundError naming every missing file, ValueError for a file Pillow cannot
    identify (only the header is read here).
    """
    from PIL import Image, UnidentifiedImageError

    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(repr(path) for path in missing)}")
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path!r} is not an image Pillow can read ({error})") from error
    return [Path(path) for path in paths]


def prompts(labels: list[str], template: str) -> list[str]:
    if "{}" not in template:
        raise ValueError(f"--template must contain '{{}}' where the label goes, got {template!r}")
    return [template.format(label) for label in labels]


@dataclass
class Ranked:
    image: str
    labels: list[tuple[str, float]]  # (label, probability), best first


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not an image Pillow can read ({error})") from error


def classify_images(
    model,
    preprocess,
    tokenizer,
    images: list[Path],
    labels: list[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[Ranked]:
    """Rank ``labels`` for each image with an open_clip CLIP model (any model with encode_image/text)."""
    import torch
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    with torch.inference_mode():
        text = model.encode_text(tokenizer(prompts(labels, template)), normalize=True)
        scale = model.logit_scale.exp() if hasattr(model, "logit_scale") else torch.tensor(100.0)
        bias = getattr(model, "logit_bias", None)
        results = []
        show = len(images) > 1 if progress is None else progress
        with tqdm(total=len(images), unit="img", disable=not show, file=sys.stderr) as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                pixels = torch.stack([preprocess(_open_rgb(path)) for path in chunk])
                image = model.encode_image(pixels, normalize=True)
                logits = scale * image @ text.T + (bias if bias is not None else 0)
                probs = logits.softmax(dim=-1)
                for path, row in zip(chunk, probs):
                    order = row.argsort(descending=True).tolist()
                    results.append(Ranked(str(path), [(labels[i], float(row[i])) for i in order]))
                bar.update(len(chunk))
    return results


def format_results(results: list[Ranked], top: int = 5) -> str:
    lines = []
    for result in results:
        lines.append(result.image)
        shown = result.labels if top <= 0 else result.labels[:top]
        lines += [f"  {prob * 100:6.2f}%  {label}" for label, prob in shown]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Errors propagate to mobileclip2.cli.main, which prints them (one handler for every command)."""
    labels = read_labels(args.labels, args.labels_file)
    images = check_images(args.images)
    prompts(labels, args.template)
    from mobileclip2.loading import load_for_inference

    loaded = load_for_inference(args.model, args.pretrained)
    model = loaded.model
    if not args.no_optimize:
        from mobileclip2.inference import optimize

        model = optimize(model, inplace=True)
    results = classify_images(
        model, loaded.preprocess, loaded.tokenizer, images, labels, args.template, args.batch_size
    )
    if args.json:
        print(
            json.dumps(
                [{"image": r.image, "labels": [[lab, p] for lab, p in r.labels]} for r in results], indent=2
            )
        )
    else:
        print(format_results(results, args.top))
    return 0
