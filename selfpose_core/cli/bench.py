"""`selfpose bench NAME`: run a benchmark of bench/ (a source checkout) and print its figures."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from selfpose_core.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def available() -> list[str]:
    """Names of the benchmarks in bench/ (modules with a ``main(argv) -> int``)."""
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark from bench/ and print its figures (ratios measured in one run)")
    p.add_argument("name", help="benchmark name, or 'all'")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = available()
    if not names:
        raise ConfigError(f"no benchmarks in {BENCH_DIR} (benchmarks run from a source checkout of selfpose)")
    if args.name != "all" and args.name not in names:
        raise ConfigError(f"unknown benchmark {args.name!r}; available: {', '.join(names)}")
    if str(BENCH_DIR.parent) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR.parent))
    status = 0
    for name in names if args.name == "all" else [args.name]:
        print(f"== bench {name} ==", flush=True)
        status |= int(importlib.import_module(f"bench.{name}").main(list(args.rest)) or 0)
    return status
