"""`mobileclip2` command line: a thin dispatcher over mobileclip2.commands.*.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules import torch/open_clip inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "list": "mobileclip2.commands.list_models",
    "info": "mobileclip2.commands.info",
    "check": "mobileclip2.commands.check",
    "convert": "mobileclip2.commands.convert",
    "reinforce": "mobileclip2.commands.reinforce",
    "export": "mobileclip2.commands.export",
    "classify": "mobileclip2.commands.classify",
    "bench": "mobileclip2.commands.bench",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mobileclip2",
        description="MobileCLIP / MobileCLIP2 models through OpenCLIP and timm.",
    )
    parser.add_argument("--version", action="version", version=f"mobileclip2 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
