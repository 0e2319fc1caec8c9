"""Repairing rosbag2 recordings that were not closed (recorder killed, disk full, power loss).

`recover_bag` makes a bag directory readable again:
- every storage file whose index cannot be read (an MCAP without summary/footer, e.g. from a killed
  ``ros2 bag record`` or a truncated copy) is salvaged: all complete records are scanned from the start, complete
  chunks decoded, and every complete message is written to a new, closed MCAP file (the original is kept as
  ``<name>.unclosed``);
- the unclosed segments selfpose's writer leaves in ``segment_<k>.partial/`` are salvaged the same way (MCAP) or
  taken over as they are (sqlite3 keeps every committed row) and become ``<bag>_<k>.mcap|db3``;
- metadata.yaml (version 8) is regenerated from the storage files themselves.
"""
from __future__ import annotations

import logging
import re
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import decompress, get_qos

from selfpose_core.data.bag_files import (METADATA_VERSION, PARTIAL_SUFFIX, FileSummary, segment_name,
                                          summarize_storage_file, write_metadata)
from selfpose_core.data.ros_types import register_msgdef, typestore
from selfpose_core.errors import RecordingError

log = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass(slots=True)
class SalvagedMcap:
    """The complete content of a possibly truncated MCAP file."""

    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> (name, encoding, data)
    channels: dict[int, tuple[int, str, str, bytes]] = field(default_factory=dict)  # id -> (schema, topic, enc, meta)
    messages: list[tuple[int, int, bytes]] = field(default_factory=list)  # (channel id, log time, data)
    complete: bool = False  # the footer was reached
    stopped_at: int = 0  # byte offset where scanning stopped


@dataclass(slots=True)
class RecoveryReport:
    """What `recover_bag` did."""

    path: Path
    files: list[str]
    salvaged: dict[str, int] = field(default_factory=dict)  # new file -> messages salvaged into it
    topics: dict[str, int] = field(default_factory=dict)  # topic -> messages in the recovered bag
    dropped_bytes: int = 0  # bytes of incomplete records at the end of unclosed files


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4: pos + 4 + n]).decode(), pos + 4 + n


def _records(buf: memoryview, out: SalvagedMcap, base: int, top: bool) -> int:
    """Parse the records in ``buf``; returns the offset after the last complete one (relative to ``buf``)."""
    pos = 0
    end = len(buf)
    while pos + 9 <= end:
        op = buf[pos]
        (size,) = struct.unpack_from("<Q", buf, pos + 1)
        body_start = pos + 9
        if body_start + size > end:
            break  # truncated record
        body = buf[body_start: body_start + size]
        try:
            if op == 0x02 and top:  # footer
                out.complete = True
                return body_start + size
            if op == 0x03:
                (sid,) = struct.unpack_from("<H", body, 0)
                name, p = _string(body, 2)
                enc, p = _string(body, p)
                (n,) = struct.unpack_from("<I", body, p)
                out.schemas[sid] = (name, enc, bytes(body[p + 4: p + 4 + n]).decode())
            elif op == 0x04:
                cid, sid = struct.unpack_from("<HH", body, 0)
                topic, p = _string(body, 4)
                enc, p = _string(body, p)
                (n,) = struct.unpack_from("<I", body, p)
                out.channels[cid] = (sid, topic, enc, bytes(body[p: p + 4 + n]))
            elif op == 0x05:
                cid, _, log_time, _ = struct.unpack_from("<HIQQ", body, 0)
                out.messages.append((cid, log_time, bytes(body[22:])))
            elif op == 0x06 and top:
                _, _, usize, crc = struct.unpack_from("<QQQI", body, 0)
                comp, p = _string(body, 28)
                (csize,) = struct.unpack_from("<Q", body, p)
                data = decompress(bytes(body[p + 8: p + 8 + csize]), comp, usize, crc)
                inner = memoryview(data)
                if _records(inner, out, base + body_start, top=False) != len(inner):
                    log.warning("chunk at byte %d has a truncated record", base + pos)
        except Exception as exc:  # a damaged record: keep what came before it
            log.warning("damaged MCAP record (op 0x%02x) at byte %d: %s; stopping there", op, base + pos, exc)
            break
        pos = body_start + size
    return pos


def salvage_mcap(path: Path) -> SalvagedMcap:
    """Every complete schema, channel and message of the MCAP file ``path``, even without summary or footer."""
    data = path.read_bytes()
    if len(data) < len(MCAP_MAGIC) and MCAP_MAGIC.startswith(data):  # killed before the header reached the disk
        return SalvagedMcap(stopped_at=len(data))
    if not data.startswith(MCAP_MAGIC):
        raise RecordingError(f"{path} is not an MCAP file (bad magic bytes)")
    out = SalvagedMcap()
    out.stopped_at = len(MCAP_MAGIC) + _records(memoryview(data)[len(MCAP_MAGIC):], out, len(MCAP_MAGIC), top=True)
    if not out.complete:
        log.info("%s: salvaged %d messages; %d trailing bytes were incomplete", path, len(out.messages),
                 len(data) - out.stopped_at)
    return out


def write_salvaged(salvaged: SalvagedMcap, dest: Path) -> int:
    """Write the salvaged messages to a new, closed MCAP file ``dest``; returns the number of messages."""
    tmp = dest.parent / f"{dest.stem}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    store = typestore()
    writer = Writer(tmp, version=METADATA_VERSION, storage_plugin=StoragePlugin.MCAP)
    count = 0
    with writer:
        conns = {}
        for cid, (sid, topic, enc, meta) in salvaged.channels.items():
            name, schema_enc, schema_data = salvaged.schemas.get(sid, ("", "", ""))
            if not name:
                log.warning("channel %s has no schema; its messages are dropped", topic)
                continue
            if name not in store.types:
                register_msgdef(store, name, schema_data)
            conns[cid] = writer.add_connection(topic, name, msgdef=schema_data or None,
                                               rihs01=store.hash_rihs01(name), typestore=store,
                                               serialization_format=enc, offered_qos_profiles=get_qos(meta[4:]))
        for cid, log_time, data in sorted(salvaged.messages, key=lambda m: m[1]):
            if cid in conns:
                writer.write(conns[cid], log_time, data)
                count += 1
    (tmp / f"{tmp.name}.mcap").replace(dest)
    shutil.rmtree(tmp)
    return count


def _storage_of(path: Path) -> str:
    return "mcap" if path.suffix == ".mcap" else "sqlite3"


def _natural_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name))


def recover_bag(path: str | Path) -> RecoveryReport:
    """Make the bag directory ``path`` readable: salvage unclosed storage files and rewrite metadata.yaml."""
    bag = Path(path)
    if not bag.is_dir():
        raise RecordingError(f"{bag} is not a bag directory" + ("" if bag.exists() else " (it does not exist)"))
    report = RecoveryReport(bag, [])
    partials = sorted(bag.glob(f"*{PARTIAL_SUFFIX}"), key=lambda p: _natural_key(p.name))
    files = sorted((p for p in bag.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")),
                   key=lambda p: _natural_key(p.name))
    storages = {_storage_of(p) for p in files} | {_storage_of(f) for d in partials for f in d.iterdir()
                                                  if f.suffix in (".mcap", ".db3")}
    if not storages:
        raise RecordingError(f"{bag} holds no .mcap or .db3 storage files to recover")
    if len(storages) > 1:
        raise RecordingError(f"{bag} mixes MCAP and sqlite3 storage files; cannot index them as one bag")
    storage = storages.pop()

    summaries: list[FileSummary] = []
    for f in files:
        try:
            summaries.append(summarize_storage_file(f))
        except Exception as exc:  # unreadable index: salvage
            if f.suffix != ".mcap":
                raise RecordingError(f"cannot read sqlite3 storage file {f}: {exc}") from exc
            log.warning("%s has no readable index (%s); salvaging its complete messages", f, exc)
            summaries.append(_salvage_into(f, f, report, keep_original=True))

    used = {s.name for s in summaries}
    next_index = 1 + max((int(m.group(1)) for n in used if (m := re.search(r"_(\d+)\.(mcap|db3)$", n))), default=-1)
    for d in partials:
        for src in sorted(d.iterdir()):
            if src.suffix not in (".mcap", ".db3"):
                continue
            dest = bag / segment_name(bag, next_index, storage)
            next_index += 1
            if src.suffix == ".mcap":
                summary = _salvage_into(src, dest, report, keep_original=False)
            else:
                for side in (src.with_name(src.name + "-journal"), src.with_name(src.name + "-wal")):
                    if side.exists():
                        shutil.move(str(side), str(dest.with_name(dest.name + side.name[len(src.name):])))
                shutil.move(str(src), str(dest))
                summary = summarize_storage_file(dest)
                report.salvaged[dest.name] = summary.count
            if summary.count:
                summaries.append(summary)
            else:
                dest.unlink()
                report.salvaged.pop(dest.name, None)
        shutil.rmtree(d)
    summaries.sort(key=lambda s: _natural_key(s.name))
    write_metadata(bag, storage, summaries)
    report.files = [s.name for s in summaries]
    counts: Counter[str] = Counter()
    for s in summaries:
        for topic, tc in s.topics.items():
            counts[topic] += tc.count
    report.topics = dict(counts)
    log.info("recovered %s: %d files, %d messages", bag, len(summaries), sum(counts.values()))
    return report


def _salvage_into(src: Path, dest: Path, report: RecoveryReport, keep_original: bool) -> FileSummary:
    salvaged = salvage_mcap(src)
    report.dropped_bytes += src.stat().st_size - salvaged.stopped_at if not salvaged.complete else 0
    if keep_original:
        backup = src.with_name(src.name + ".unclosed")
        src.replace(backup)
        src = backup
    n = write_salvaged(salvaged, dest)
    report.salvaged[dest.name] = n
    return summarize_storage_file(dest)
