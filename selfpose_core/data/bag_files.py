"""rosbag2 directory bookkeeping shared by the writer and `selfpose recover`: segment file names and metadata.yaml.

A selfpose bag is a standard rosbag2 *split* bag: ``BAG/metadata.yaml`` (version 8, readable by Humble and Jazzy)
lists the closed storage files ``BAG/<name>_<k>.mcap`` (or ``.db3``). The segment being written lives in
``BAG/segment_<k>.partial/`` until it is closed, then its file is moved next to the others and metadata.yaml is
rewritten atomically, so a killed recorder leaves a readable bag plus at most one unclosed partial segment.

Every MCAP chunk selfpose writes carries the CRC-32 of its records (`ChecksummedWriter`; rosbags' own writer stores 0,
"not computed"), so a reader notices damaged bytes instead of decoding them (rosbags' reader checks a non-zero CRC).
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

from rosbags.interfaces import Qos
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import dump_qos_v8
from rosbags.rosbag2.storage_mcap import McapWriter
from ruamel.yaml import YAML

log = logging.getLogger(__name__)

METADATA_VERSION = 8
SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
PARTIAL_SUFFIX = ".partial"
CHUNK_CRC_OFFSET = 1 + 8 + 24  # in an MCAP chunk record: opcode, record length, start/end time, uncompressed size


class _ChecksummedMcapWriter(McapWriter):
    """rosbags' MCAP storage writer, storing each chunk's CRC-32 (of its uncompressed records) in the chunk record."""

    def close_chunk(self) -> None:
        start = self.bio.tell()
        crc = zlib.crc32(self.chunk.bio.getbuffer())
        super().close_chunk()
        end = self.bio.tell()
        self.bio.seek(start + CHUNK_CRC_OFFSET)
        self.bio.write(struct.pack("<I", crc))
        self.bio.seek(end)


class ChecksummedWriter(Writer):
    """rosbags' rosbag2 `Writer` whose MCAP files carry chunk CRCs (sqlite3 storage has none)."""

    STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: _ChecksummedMcapWriter}


@dataclass(slots=True)
class TopicCount:
    """One topic of one storage file."""

    msgtype: str
    count: int
    qos: list[Qos] = field(default_factory=list)
    digest: str = ""


@dataclass(slots=True)
class FileSummary:
    """What metadata.yaml says about one storage file of the bag."""

    name: str  # file name relative to the bag directory
    start_ns: int
    end_ns: int  # stamp of the last message
    count: int
    topics: dict[str, TopicCount] = field(default_factory=dict)


def segment_name(bag: Path, index: int, storage: str) -> str:
    """File name of closed segment ``index``: ``<bag name>_<index>.mcap`` (rosbag2's split naming)."""
    return f"{bag.name}_{index}{SUFFIX[storage]}"


def partial_dir(bag: Path, index: int) -> Path:
    """Directory holding segment ``index`` while it is being written."""
    return bag / f"segment_{index}{PARTIAL_SUFFIX}"


def write_metadata(bag: Path, storage: str, files: list[FileSummary], file_name: str = "metadata.yaml"
                   ) -> None:
    """Write ``bag/metadata.yaml`` (rosbag2 version 8) listing ``files``, atomically (tmp file + rename); ``file_name``:
    another file name (`selfpose recover` writes the new metadata beside the old one before swapping)."""
    files = [f for f in files if f.count > 0] or files[:1]
    topics: dict[str, TopicCount] = {}
    for f in files:
        for name, tc in f.topics.items():
            have = topics.setdefault(name, TopicCount(tc.msgtype, 0, tc.qos, tc.digest))
            have.count += tc.count
    counted = [f for f in files if f.count > 0]
    start = min((f.start_ns for f in counted), default=0)
    end = max((f.end_ns for f in counted), default=0)
    total = sum(f.count for f in files)
    info = {
        "version": METADATA_VERSION,
        "storage_identifier": storage,
        "relative_file_paths": [f.name for f in files],
        "duration": {"nanoseconds": max(0, end - start)},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": total,
        "topics_with_message_count": [
            {"topic_metadata": {"name": name, "type": tc.msgtype, "serialization_format": "cdr",
                                "offered_qos_profiles": dump_qos_v8(tc.qos), "type_description_hash": tc.digest},
             "message_count": tc.count}
            for name, tc in topics.items()],
        "compression_format": "",
        "compression_mode": "",
        "files": [{"path": f.name, "starting_time": {"nanoseconds_since_epoch": f.start_ns if f.count else 0},
                   "duration": {"nanoseconds": max(0, f.end_ns - f.start_ns) if f.count else 0},
                   "message_count": f.count} for f in files],
        "custom_data": None,
        "ros_distro": "rosbags",
    }
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    text = StringIO()
    yaml.dump({"rosbag2_bagfile_information": info}, text)
    tmp = bag / f"{file_name}.tmp{os.getpid()}"
    try:
        tmp.write_text(text.getvalue(), "utf8")
        tmp.replace(bag / file_name)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("wrote %s (%d files, %d messages)", bag / file_name, len(files), total)


def summarize_storage_file(path: Path) -> FileSummary:
    """Read a closed MCAP/sqlite3 storage file's index and summarise it for metadata.yaml."""
    from rosbags.interfaces import ConnectionExtRosbag2
    from rosbags.rosbag2.storage_mcap import McapReader
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

    from selfpose_core.data.ros_types import typestore

    reader = McapReader(path) if path.suffix == ".mcap" else Sqlite3Reader(path)
    reader.open()
    try:
        store = typestore()
        topics: dict[str, TopicCount] = {}
        for c in reader.connections:
            qos = c.ext.offered_qos_profiles if isinstance(c.ext, ConnectionExtRosbag2) else []
            digest = c.digest or (store.hash_rihs01(c.msgtype) if c.msgtype in store.types else "")
            have = topics.get(c.topic)
            if have is None:
                topics[c.topic] = TopicCount(c.msgtype, c.msgcount, list(qos), digest)
            else:
                have.count += c.msgcount
        md = reader.metadata
        count = md.message_count
        return FileSummary(path.name, md.start_time if count else 0, (md.end_time - 1) if count else 0, count, topics)
    finally:
        reader.close()
