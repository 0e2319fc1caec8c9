"""`selfpose recover BAG`: make an unclosed, truncated or damaged rosbag2 recording readable again (see
data/recovery.py). Exit 2 when nothing can be recovered (no complete message)."""
from __future__ import annotations

import argparse
from pathlib import Path

from selfpose_core.data.recovery import recover_bag


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="salvage an interrupted or damaged recording: re-index unclosed "
                                       "MCAP/sqlite3 files, drop chunks that fail their CRC, regenerate "
                                       "metadata.yaml")
    p.add_argument("bag", type=Path, help="rosbag2 directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = recover_bag(args.bag)
    print(f"recovered {report.path}: {len(report.files)} storage files")
    for name, n in report.salvaged.items():
        print(f"  salvaged {n} messages into {name}")
    for name, n in report.damaged.items():
        print(f"  {n} damaged chunks of {name} (CRC mismatch) were left out")
    if report.dropped_bytes:
        print(f"  {report.dropped_bytes} bytes of incomplete records at file ends could not be used")
    for topic, n in sorted(report.topics.items()):
        print(f"  {topic}: {n} messages")
    return 0
