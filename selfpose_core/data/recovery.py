"""Repairing rosbag2 recordings that were not closed (recorder killed, disk full, power loss).

`recover_bag` makes a bag directory readable again:
- every storage file whose index cannot be read (an MCAP without summary/footer, e.g. from a killed
  ``ros2 bag record`` or a truncated copy) is salvaged: all complete records are scanned from the start, complete
  chunks decoded, and every complete message is written to a new, closed MCAP file (the original is kept as
  ``<name>.unclosed``);
- every MCAP file with a chunk whose CRC does not match its bytes (damaged on disk or in a copy) is salvaged the same
  way without the damaged chunks (the original is kept as ``<name>.damaged``);
- the unclosed segments selfpose's writer leaves in ``segment_<k>.partial/`` are salvaged the same way (MCAP) or
  taken over as they are (sqlite3 keeps every committed row) and become ``<bag>_<k>.mcap|db3``;
- metadata.yaml (version 8) is regenerated from the storage files themselves.

Nothing of the bag changes until everything new is written: the salvaged files and the new metadata.yaml are first
written beside the originals under temporary names (unique to the process), then swapped in by renames. A failure
before the swap (a full disk, a damaged file) removes the temporary files and leaves the bag exactly as it was, so
it opens as before and `recover` can be run again once the cause is fixed.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import shutil
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2.storage_mcap import decompress, get_qos

from selfpose_core.data.bag_files import (METADATA_VERSION, PARTIAL_SUFFIX, ChecksummedWriter, FileSummary,
                                          segment_name, summarize_storage_file, write_metadata)
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
    damaged: list[tuple[int, int]] = field(default_factory=list)  # (byte offset, size) of chunks that failed to decode


@dataclass(slots=True)
class RecoveryReport:
    """What `recover_bag` did."""

    path: Path
    files: list[str]
    salvaged: dict[str, int] = field(default_factory=dict)  # new file -> messages salvaged into it
    topics: dict[str, int] = field(default_factory=dict)  # topic -> messages in the recovered bag
    dropped_bytes: int = 0  # bytes of incomplete records at the end of unclosed files
    damaged: dict[str, int] = field(default_factory=dict)  # file -> chunks dropped (CRC mismatch, undecodable)


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4: pos + 4 + n]).decode(), pos + 4 + n


def _records(buf: memoryview, out: SalvagedMcap, base: int, top: bool, keep: bool = True) -> int:
    """Parse the records in ``buf``; returns the offset after the last complete one (relative to ``buf``). A chunk
    that does not decode (CRC mismatch, bad size or compression) is listed in ``out.damaged`` and skipped; ``keep``:
    collect schemas, channels and messages (else only check the chunks)."""
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
            if op == 0x06 and top:
                try:
                    _, _, usize, crc = struct.unpack_from("<QQQI", body, 0)
                    comp, p = _string(body, 28)
                    (csize,) = struct.unpack_from("<Q", body, p)
                    data = decompress(bytes(body[p + 8: p + 8 + csize]), comp, usize, crc)
                except Exception as exc:  # noqa: BLE001 - rosbags/zstd/lz4 errors: the chunk's bytes are damaged
                    log.log(logging.WARNING if keep else logging.DEBUG, "MCAP chunk at byte %d (%d bytes) is "
                            "damaged (%s); its messages are dropped", base + pos, 9 + size, exc)
                    out.damaged.append((base + pos, 9 + size))
                else:
                    if keep:
                        inner = memoryview(data)
                        if _records(inner, out, base + body_start, top=False) != len(inner):
                            log.warning("chunk at byte %d has a truncated record", base + pos)
            elif keep:
                _collect(op, body, out)
        except Exception as exc:  # a damaged record: keep what came before it
            log.warning("damaged MCAP record (op 0x%02x) at byte %d: %s; stopping there", op, base + pos, exc)
            break
        finally:
            body.release()
        pos = body_start + size
    return pos


def _collect(op: int, body: memoryview, out: SalvagedMcap) -> None:
    """Add a schema (0x03), channel (0x04) or message (0x05) record to ``out``; other records are skipped."""
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


def salvage_mcap(path: Path, keep: bool = True) -> SalvagedMcap:
    """Every complete schema, channel and message of the MCAP file ``path``, even without summary or footer, and
    the chunks that failed to decode (``keep=False``: only check the chunks; the file is mapped, not read)."""
    size = path.stat().st_size
    if size < len(MCAP_MAGIC):
        if MCAP_MAGIC.startswith(path.read_bytes()):  # killed before the header reached the disk
            return SalvagedMcap(stopped_at=size)
        raise RecordingError(f"{path} is not an MCAP file (bad magic bytes)")
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        if mapped[:len(MCAP_MAGIC)] != MCAP_MAGIC:
            raise RecordingError(f"{path} is not an MCAP file (bad magic bytes)")
        out = SalvagedMcap()
        with memoryview(mapped) as view, view[len(MCAP_MAGIC):] as records:
            out.stopped_at = len(MCAP_MAGIC) + _records(records, out, len(MCAP_MAGIC), top=True, keep=keep)
    if not out.complete and keep:
        log.info("%s: salvaged %d messages; %d trailing bytes were incomplete", path, len(out.messages),
                 size - out.stopped_at)
    return out


def damaged_chunks(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of the chunks of the MCAP file ``path`` that fail their CRC check or do not decode."""
    return salvage_mcap(path, keep=False).damaged


def write_salvaged(salvaged: SalvagedMcap, dest: Path) -> int:
    """Write the salvaged messages to a new, closed MCAP file ``dest``; returns the number of messages. ``dest``
    appears only once it is complete (written in a temporary directory beside it, removed on failure)."""
    tmp = dest.parent / f".{dest.stem}.salvage{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        return _write_salvaged(salvaged, dest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_salvaged(salvaged: SalvagedMcap, dest: Path, tmp: Path) -> int:
    store = typestore()
    writer = ChecksummedWriter(tmp, version=METADATA_VERSION, storage_plugin=StoragePlugin.MCAP)
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
    return count


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


_TEMP_NAME = re.compile(r"^(?:\..*|metadata\.yaml)\.(?:recover|salvage|tmp)(\d+)(?:\.[^.]*)?$")


def remove_stale_temps(bag: Path) -> list[str]:
    """Remove the temporary files and directories a killed `recover` or writer left in ``bag`` (their names carry
    the pid of a process that no longer runs); returns their names."""
    removed = []
    for p in sorted(bag.iterdir()):
        m = _TEMP_NAME.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p.name)
    if removed:
        log.info("removed %d temporary files of an interrupted run from %s: %s", len(removed), bag, removed[:5])
    return removed


def _storage_of(path: Path) -> str:
    return "mcap" if path.suffix == ".mcap" else "sqlite3"


def _natural_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"(\d+)", name))


def recover_bag(path: str | Path) -> RecoveryReport:
    """Make the bag directory ``path`` readable: salvage unclosed storage files and rewrite metadata.yaml.

    Raises `RecordingError` when ``path`` is no bag or the salvage cannot be written; the bag is then unchanged.
    """
    bag = Path(path)
    if not bag.is_dir():
        raise RecordingError(f"{bag} is not a bag directory" + ("" if bag.exists() else " (it does not exist)"))
    report = RecoveryReport(bag, [])
    remove_stale_temps(bag)
    partials = sorted(bag.glob(f"*{PARTIAL_SUFFIX}"), key=lambda p: _natural_key(p.name))
    files = sorted((p for p in bag.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")
                    and not p.name.startswith(".")),  # hidden: temporary files of an interrupted recover
                   key=lambda p: _natural_key(p.name))
    storages = {_storage_of(p) for p in files} | {_storage_of(f) for d in partials for f in d.iterdir()
                                                  if f.suffix in (".mcap", ".db3")}
    if not storages:
        raise RecordingError(f"{bag} holds no .mcap or .db3 storage files to recover")
    if len(storages) > 1:
        raise RecordingError(f"{bag} mixes MCAP and sqlite3 storage files; cannot index them as one bag")
    storage = storages.pop()

    plan = _Plan(bag)
    try:
        summaries = _prepare(bag, storage, files, partials, report, plan)
    except BaseException as exc:
        plan.discard()
        if isinstance(exc, RecordingError):
            raise RecordingError(f"cannot recover {bag}: {exc}; the bag is unchanged") from exc
        if isinstance(exc, OSError):
            need = sum(f.stat().st_size for f in plan.sources if f.exists()) / 1e6
            raise RecordingError(f"cannot recover {bag}: writing the salvage failed ({exc.strerror or exc}"
                                 f"{': ' + str(exc.filename) if exc.filename else ''}); the bag is unchanged "
                                 f"(the salvage needs about {need:.0f} MB free beside it)") from exc
        raise
    plan.commit()
    report.files = [s.name for s in summaries]
    counts: Counter[str] = Counter()
    for s in summaries:
        for topic, tc in s.topics.items():
            counts[topic] += tc.count
    report.topics = dict(counts)
    log.info("recovered %s: %d files, %d messages", bag, len(summaries), sum(counts.values()))
    return report


class _Plan:
    """The new files of a recovery, written beside the bag's files under temporary names, and the renames that swap
    them in (`commit`) or their removal (`discard`)."""

    def __init__(self, bag: Path) -> None:
        self.bag = bag
        self.tag = f"recover{os.getpid()}"
        self.replace: list[tuple[Path, Path, str]] = []  # (new file, the original it replaces, backup suffix)
        self.add: list[tuple[Path, Path]] = []  # (new file, its final name)
        self.moves: list[tuple[Path, Path]] = []  # sqlite3 files of partial segments: (source, final name)
        self.sources: list[Path] = []  # files being salvaged
        self.partials: list[Path] = []
        self.metadata: Path | None = None
        self._temps: list[Path] = []

    def temp(self, final: Path) -> Path:
        """A hidden temporary name beside ``final`` with its suffix (the readers go by the suffix), removed by
        `discard`."""
        tmp = final.with_name(f".{final.stem}.{self.tag}{final.suffix}")
        self._temps.append(tmp)
        return tmp

    def discard(self) -> None:
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)

    def commit(self) -> None:
        """Swap everything in: renames only (no new space needed), metadata.yaml last but one, partial segments
        removed last."""
        for tmp, original, suffix in self.replace:
            backup = _backup_name(original, suffix)
            try:
                os.link(original, backup)  # the original stays in place until the salvage replaces it atomically
            except OSError:
                shutil.copy2(original, backup)
            tmp.replace(original)
        for tmp, final in self.add:
            tmp.replace(final)
        for src, final in self.moves:
            for side in (src.with_name(src.name + "-journal"), src.with_name(src.name + "-wal")):
                if side.exists():
                    shutil.move(str(side), str(final.with_name(final.name + side.name[len(src.name):])))
            shutil.move(str(src), str(final))
        if self.metadata is not None:
            self.metadata.replace(self.bag / "metadata.yaml")
        for d in self.partials:
            shutil.rmtree(d)


def _backup_name(original: Path, suffix: str) -> Path:
    backup = original.with_name(original.name + suffix)
    k = 1
    while backup.exists():
        backup = original.with_name(f"{original.name}{suffix}{k}")
        k += 1
    return backup


def _prepare(bag: Path, storage: str, files: list[Path], partials: list[Path], report: RecoveryReport,
             plan: _Plan) -> list[FileSummary]:
    """Write every new file of the recovery under a temporary name into ``plan``; returns the final summaries."""
    summaries: list[FileSummary] = []
    for f in files:
        try:
            summary = summarize_storage_file(f)
        except Exception as exc:  # unreadable index: salvage
            if f.suffix != ".mcap":
                raise RecordingError(f"cannot read sqlite3 storage file {f}: {exc}") from exc
            log.warning("%s has no readable index (%s); salvaging its complete messages", f, exc)
            backup = ".unclosed"
        else:
            damaged = damaged_chunks(f) if f.suffix == ".mcap" else []
            if not damaged:
                summaries.append(summary)
                continue
            log.warning("%s has %d damaged chunks (first at byte %d); salvaging the intact ones", f, len(damaged),
                        damaged[0][0])
            backup = ".damaged"
        tmp = plan.temp(f)
        plan.sources.append(f)
        plan.replace.append((tmp, f, backup))
        summary = _salvage_into(f, tmp, report)
        summary.name = f.name
        report.salvaged[f.name] = report.salvaged.pop(tmp.name)
        if tmp.name in report.damaged:
            report.damaged[f.name] = report.damaged.pop(tmp.name)
        summaries.append(summary)

    used = {s.name for s in summaries}
    next_index = 1 + max((int(m.group(1)) for n in used if (m := re.search(r"_(\d+)\.(mcap|db3)$", n))), default=-1)
    for d in partials:
        plan.partials.append(d)
        m = re.fullmatch(r"segment_(\d+)" + re.escape(PARTIAL_SUFFIX), d.name)
        if m and segment_name(bag, int(m.group(1)), storage) in used:
            log.info("%s is already closed as %s (a writer or a recover was stopped after moving it); removing it",
                     d.name, segment_name(bag, int(m.group(1)), storage))
            continue
        if m:
            next_index = max(next_index, int(m.group(1)))
        for src in sorted(d.iterdir()):
            if src.suffix not in (".mcap", ".db3"):
                continue
            dest = bag / segment_name(bag, next_index, storage)
            while dest.exists():
                next_index += 1
                dest = bag / segment_name(bag, next_index, storage)
            next_index += 1
            if src.suffix == ".mcap":
                tmp = plan.temp(dest)
                plan.sources.append(src)
                summary = _salvage_into(src, tmp, report)
                report.salvaged[dest.name] = report.salvaged.pop(tmp.name)
                if tmp.name in report.damaged:
                    report.damaged[dest.name] = report.damaged.pop(tmp.name)
                if summary.count:
                    plan.add.append((tmp, dest))
                else:
                    tmp.unlink()
            else:  # sqlite3 keeps every committed row: the file is taken over as it is
                summary = summarize_storage_file(src)
                report.salvaged[dest.name] = summary.count
                if summary.count:
                    plan.moves.append((src, dest))
            summary.name = dest.name
            if summary.count:
                summaries.append(summary)
            else:
                report.salvaged.pop(dest.name, None)
    summaries.sort(key=lambda s: _natural_key(s.name))
    if not any(s.count for s in summaries):
        names = [f.name for f in files] + [f"{d.name}/{f.name}" for d in partials for f in sorted(d.iterdir())]
        lost = (f" ({report.dropped_bytes} bytes of incomplete records)" if report.dropped_bytes else "")
        raise RecordingError(f"its storage files {names[:5]}{' ...' if len(names) > 5 else ''} hold no complete "
                             f"message{lost}: nothing to recover")
    plan.metadata = plan.temp(bag / "metadata.yaml")
    write_metadata(bag, storage, summaries, file_name=plan.metadata.name)
    return summaries


def _salvage_into(src: Path, dest: Path, report: RecoveryReport) -> FileSummary:
    salvaged = salvage_mcap(src)
    report.dropped_bytes += src.stat().st_size - salvaged.stopped_at if not salvaged.complete else 0
    if salvaged.damaged:
        report.damaged[dest.name] = len(salvaged.damaged)
    n = write_salvaged(salvaged, dest)
    report.salvaged[dest.name] = n
    return summarize_storage_file(dest)
