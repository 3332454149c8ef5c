"""`mobileclip2` command line: a thin dispatcher over mobileclip2.commands.*.

Each subcommand lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules import torch/open_clip inside ``run`` so ``--help`` stays fast.

:func:`main` is the one place errors become messages: every subcommand's failure prints
``mobileclip2 COMMAND: error: ...`` on stderr and exits 1, never a traceback (``--traceback`` or
``MOBILECLIP2_TRACEBACK=1`` shows it). It also registers the plugin itself, so the command works
when the startup hook is off (``MOBILECLIP2_AUTOLOAD=0``) or site is skipped (``python -S``).
"""

from __future__ import annotations

import argparse
import importlib
import os
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

TRACEBACK_ENV = "MOBILECLIP2_TRACEBACK"

# Errors whose message already says what is wrong (ours, and the OS's about paths): printed as is,
# ours in the command line's words. Anything else is unexpected and is printed with its type and a
# pointer to --traceback.
_EXPECTED = (OSError, ValueError)


def _add_traceback_flag(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=default,
        help=f"show the Python traceback of an error (also: {TRACEBACK_ENV}=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mobileclip2",
        description="MobileCLIP / MobileCLIP2 models through OpenCLIP and timm.",
    )
    parser.add_argument("--version", action="version", version=f"mobileclip2 {__version__}")
    _add_traceback_flag(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        # SUPPRESS: `mobileclip2 --traceback info X` must not be reset by the subparser's default.
        _add_traceback_flag(sub, default=argparse.SUPPRESS)
        sub.set_defaults(_run=module.run)
    return parser


def error_message(command: str, error: BaseException) -> str:
    """The one-paragraph message `main` prints for an error that ended a subcommand."""
    from .errors import MobileCLIP2Error

    text = (error.for_cli() if isinstance(error, MobileCLIP2Error) else str(error)) or type(error).__name__
    if isinstance(error, KeyError):  # str(KeyError('x')) is "'x'": say what it is
        text = f"missing key {text}"
    if isinstance(error, (MobileCLIP2Error, *_EXPECTED)):
        return f"mobileclip2 {command}: error: {text}"
    return (
        f"mobileclip2 {command}: error: {type(error).__name__}: {text}\n"
        f"This is unexpected: rerun with --traceback (or {TRACEBACK_ENV}=1) to see where it happened, "
        "and report it with the command you ran."
    )


def _traceback_wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def register_plugin() -> None:
    """Register the models with open_clip and timm now, whether or not the startup hook ran."""
    from .plugin import register

    register()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        register_plugin()
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"mobileclip2 {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the single place errors become messages
        if _traceback_wanted(args):
            raise
        print(error_message(args.command, error), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
