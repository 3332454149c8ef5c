"""`mobileclip2 list`: every model name, its tags, and whether upstream or we provide it."""

from __future__ import annotations

import argparse

HELP = "List MobileCLIP/MobileCLIP2 model names, pretrained tags, and native/backfilled status."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from mobileclip2.catalog import list_models

    infos = list_models()
    if args.json:
        print(json.dumps([dict(asdict(info), source=info.source) for info in infos], indent=2))
        return 0
    rows = [
        [
            info.name,
            ",".join(info.tags) or "-",
            "native" if info.config_native else "backfilled",
            f"{info.image_backbone} ({'native' if info.backbone_native else 'backfilled'})",
            info.text_tower,
        ]
        for info in infos
    ]
    print(format_table(rows, ["model", "tags", "open_clip config", "image backbone (timm)", "text tower"]))
    return 0
