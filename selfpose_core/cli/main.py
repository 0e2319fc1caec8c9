"""Entry point of the `selfpose` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``, which adds its parser
and sets ``func(args) -> int``. Exit codes (docs/cli.md):

- 0: done; 2: a `SelfposeError` (bad input or options, a refused overwrite, a locked output, nothing produced) or
  an environment `OSError` (full disk, read-only or unwritable path): one line on stderr;
- 3: anything else, a bug: one line "internal error: <type>: <message> (run with --debug for the traceback, please
  report)";
- 130: Ctrl-C, 143: SIGTERM, each after the command has closed what it was writing (one line on stderr); a second
  Ctrl-C/SIGTERM stops at once, a third kills (cli/signals.py).

``--debug`` prints the traceback too (same exit codes) and turns on debug logging.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
import sys
import traceback

from selfpose_core.cli.signals import StopSignals
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
    "category_prior",
]


def command_name(module: str) -> str:
    """The subcommand of a module of COMMANDS (``nol_train`` -> ``nol-train``)."""
    return module.replace("_", "-")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered, or only subcommand ``only`` (its module alone is
    imported: `selfpose recover` starts without loading torch)."""
    parser = argparse.ArgumentParser(prog="selfpose", description="Self-supervised 6D object pose estimation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if only is None or command_name(name) == only:
            importlib.import_module(f"selfpose_core.cli.{name}").register(sub)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if it is one of COMMANDS."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in {command_name(m) for m in COMMANDS} else None


EXIT_ERROR = 2  # the user's input, options or environment
EXIT_INTERNAL = 3  # a bug
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
MAX_ERROR_CHARS = 2000  # an error line is cut here (a message may quote a huge value)
# OSErrors that are the environment's, not a bug: reported like a SelfposeError
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line (line breaks become " | "), at most ``limit`` characters."""
    flat = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    if len(flat) > limit:
        flat = f"{flat[:limit]}... ({len(flat) - limit} more characters)"
    return flat


def main(argv: list[str] | None = None) -> int:
    """Run the `selfpose` command line; returns the process exit code (SIGTERM leaves by SystemExit(143))."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    name = f"selfpose {args.command}"
    try:
        with StopSignals():  # the only place `selfpose` handles SIGINT/SIGTERM (cli/signals.py)
            return int(args.func(args) or 0)
    except SelfposeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{name}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:
            print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a bare traceback
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            print(f"{name}: error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_ERROR
        print(f"{name}: internal error: {type(exc).__name__}: {one_line(str(exc))} (run with --debug for the "
              "traceback, please report)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
