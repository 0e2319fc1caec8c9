"""Entry point of the `selfpose` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``, which adds its parser
and sets ``func(args) -> int``. A `SelfposeError` becomes one line on stderr and exit code 2 (traceback only with
``--debug``); Ctrl-C exits with 130 after the command has flushed what it was writing.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from selfpose_core.errors import SelfposeError

# Subcommand modules, in the order `selfpose --help` lists them.
COMMANDS = [
    "bench",
    "inspect",
    "recover",
    "estimate",
    "simulate",
    "eval",
    "pretrain",
    "demo",
    "adapt",
    "nol_train",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="selfpose", description="Self-supervised 6D object pose estimation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"selfpose_core.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `selfpose` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SelfposeError as exc:
        if args.debug:
            raise
        print(f"selfpose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selfpose {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
