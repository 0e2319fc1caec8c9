"""Writing rosbag2 recordings that survive being interrupted.

`BagWriter` writes any messages by topic into a rosbag2 directory through `rosbags` (MCAP by default, sqlite3 on
request, metadata version 8 for Humble and Jazzy). It writes a *split* bag: every ``split()`` (or every
``segment_messages`` messages) the current storage file is closed, moved next to the others and metadata.yaml is
rewritten atomically. So at any moment the directory is a valid bag of all closed segments:

- Interrupts: the writer installs no signal handlers (signals belong to the process's entry point). Writing
  happens in `atomic` sections (all messages of one frame); an entry point's SIGINT/SIGTERM handler calls
  `raise_after_sections(exc)`, which raises ``exc`` at once, or, when the main thread is inside a section, at the
  end of its outermost one, so the frame being written is complete; the ``with`` block (or ``finally: close()``)
  then closes the bag: nothing is lost. Sections of other threads (`selfpose estimate` writes from its worker) are
  serialised by a lock, so a ``close()`` from the main thread waits for the frame a worker is writing.
  `selfpose_core.cli.signals.StopSignals` is that handler for `selfpose` and the ROS nodes.
- kill -9 / power loss: the open segment stays behind unclosed in ``segment_<k>.partial/``; the bag still reads
  without it, and `selfpose recover BAG` salvages every complete message from it (MCAP) and re-indexes the bag.
- A write that fails (full disk, ...): the open segment is abandoned as it is (its flushed frames stay salvageable),
  nothing more is written, and a `BagWriteError` says how many frames are kept (`end_frame` counts them): readable
  now in closed segments, and how many more `selfpose recover` salvages. ``close()`` then writes nothing.

`RecordingWriter` is the selfpose recording on top of it (DESIGN.md section 4): colour (Image or CompressedImage),
optional depth (16UC1 mm or 32FC1 m), camera_info and /tf ``world -> camera`` per frame, /tf_static (re-written at
the start of every segment, like a transient-local publisher, so each segment is self-contained).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rosbags.interfaces import Connection, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, WriterError

from selfpose_core.data.bag_files import (METADATA_VERSION, SUFFIX, ChecksummedWriter, FileSummary, TopicCount,
                                          partial_dir, segment_name, write_metadata)
from selfpose_core.data.image_codec import (array_to_compressed_msg, array_to_image_msg, intrinsics_to_camera_info)
from selfpose_core.data.recording import RecordingTopics
from selfpose_core.data.ros_types import register_msgdef, require_type, typestore
from selfpose_core.data.tf_buffer import tf_message
from selfpose_core.errors import BagWriteError, ConfigError, RecordingError, ShapeError
from selfpose_core.types import Frame

log = logging.getLogger(__name__)

_INF = QosTime(0, 0)  # rosbag2's "default" duration
LATCHED_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, _INF, _INF,
                  QosLiveliness.AUTOMATIC, _INF, False)
SENSOR_QOS = Qos(QosHistory.KEEP_LAST, 5, QosReliability.RELIABLE, QosDurability.VOLATILE, _INF, _INF,
                 QosLiveliness.AUTOMATIC, _INF, False)


class BagWriter:
    """A rosbag2 writer with crash-safe segments; write messages by topic and type.

    Args:
        path: bag directory to create (refused if it exists).
        storage: "mcap" (default) or "sqlite3".
        segment_messages: close the segment automatically after this many messages (None: only on `split`).

    Use as a context manager; ``write(topic, msgtype, msg, stamp_ns)``; ``split()`` closes the current segment.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", segment_messages: int | None = 2000) -> None:
        self.path = Path(path)
        if storage not in SUFFIX:
            raise ConfigError(f"bag storage must be one of {sorted(SUFFIX)}, got {storage!r}")
        if self.path.exists():
            raise RecordingError(f"{self.path} exists already; selfpose never overwrites a recording")
        self.storage = storage
        self.segment_messages = segment_messages
        self._plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._files: list[FileSummary] = []
        self._writer: ChecksummedWriter | None = None
        self._conns: dict[tuple[str, str], Connection] = {}
        self._qos: dict[str, Qos] = {}
        self._latched: dict[str, tuple[str, bytes, int]] = {}
        self._segment_count = 0
        self._closed = False
        self.failure: BagWriteError | None = None  # set when a write failed; nothing more is written then
        self.frames_flushed = 0  # frames (see `end_frame`) on disk: in closed segments or flushed to the open one
        self.frames_closed = 0  # frames in closed segments listed in metadata.yaml (readable without `recover`)
        self._lock = threading.RLock()  # held by the thread inside an atomic section
        try:
            self.path.mkdir(parents=True)
            write_metadata(self.path, storage, [])  # an empty, valid bag from the start
        except OSError as exc:
            raise BagWriteError(f"cannot create bag {self.path}: {exc.strerror or exc}") from exc

    # ------------------------------------------------------------------ writing
    def set_qos(self, topic: str, qos: Qos) -> None:
        """Offered QoS recorded for ``topic`` (call before its first message)."""
        self._qos[topic] = qos

    def write(self, topic: str, msgtype: str, msg: Any, stamp_ns: int, latch: bool = False) -> None:
        """Serialize ``msg`` (a rosbags dataclass of ROS type ``msgtype``) and write it at log time ``stamp_ns``.

        ``latch``: also repeat the last such message at the start of every later segment (for /tf_static), at the
        log time of that segment's first message.
        """
        require_type(msgtype)
        try:
            data = bytes(typestore().serialize_cdr(msg, msgtype))
        except Exception as exc:  # rosbags raises plain errors for a message that does not fit its type
            raise RecordingError(f"cannot serialize a {msgtype} message for topic {topic}: {exc}") from exc
        self.write_raw(topic, msgtype, data, stamp_ns, latch)

    def write_raw(self, topic: str, msgtype: str, data: bytes, stamp_ns: int, latch: bool = False,
                  msgdef: str | None = None) -> None:
        """Write CDR bytes ``data`` of type ``msgtype`` on ``topic`` at log time ``stamp_ns``.

        ``msgdef``: the type's ros2msg definition (as embedded in another bag) for types the typestore lacks.
        """
        if not 0 <= int(stamp_ns) < 2**63:
            raise RecordingError(f"cannot write topic {topic} at log time {int(stamp_ns)} ns into bag {self.path}: "
                                 "log times are nanoseconds since the epoch, 0 to 2^63 - 1 (a negative stamp?)")
        if self.failure is not None:
            raise self.failure
        if self._closed:
            raise RecordingError(f"bag {self.path} is closed; cannot write topic {topic}")
        if msgtype not in typestore().types:
            if msgdef is None:
                require_type(msgtype)
            register_msgdef(typestore(), msgtype, msgdef)
        with self.atomic(), self._disk():
            if self._writer is None:
                self._open_segment(int(stamp_ns))
            self._write_now(topic, msgtype, data, int(stamp_ns))
            if latch:
                self._latched[topic] = (msgtype, data, int(stamp_ns))
            if self.segment_messages and sum(self._writer.counts.values()) >= self.segment_messages:
                self._close_segment()

    def end_frame(self, split: bool = False) -> None:
        """The messages written since the last call form one complete frame: push them to the open segment's file
        (`flush`) and, with ``split``, close the segment. Counted in `frames_flushed` / `frames_closed`, which a
        failed write reports as what is kept."""
        with self.atomic():
            self.flush()
            self.frames_flushed += 1
            if split:
                self.split()

    @contextlib.contextmanager
    def _disk(self) -> Iterator[None]:
        """Turn an OSError of the file system (full disk, ...) into `BagWriteError`, after abandoning the open
        segment: nothing more is written."""
        if self.failure is not None:
            raise self.failure
        try:
            yield
        except (OSError, sqlite3.Error) as exc:  # sqlite3: "database or disk is full"
            self._abandon_segment()
            reason = getattr(exc, "strerror", None) or exc
            salvage = self.frames_flushed - self.frames_closed
            self.failure = BagWriteError(
                f"writing bag {self.path} failed ({reason}); kept {self.frames_flushed} complete frames: "
                f"{self.frames_closed} in closed segments, readable as they are"
                + (f", {salvage} more flushed to a segment not yet closed (`selfpose recover {self.path}` salvages "
                   "them)" if salvage else ""))
            raise self.failure from exc

    def _abandon_segment(self) -> None:
        writer, self._writer = self._writer, None
        storage = getattr(writer, "storage", None)
        for handle in (getattr(storage, "bio", None), getattr(storage, "conn", None)):
            if handle is not None:
                with contextlib.suppress(Exception):  # the disk is full: what Python still buffers is lost
                    handle.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A section (e.g. all messages of one frame) that an entry point's stop signal does not cut: see
        `raise_after_sections`. One thread at a time is inside a section of this writer (others wait)."""
        with self._lock, _section():
            yield

    def _write_now(self, topic: str, msgtype: str, data: bytes, stamp_ns: int) -> None:
        assert self._writer is not None
        key = (topic, msgtype)
        conn = self._conns.get(key)
        if conn is None:
            qos = [self._qos[topic]] if topic in self._qos else []
            conn = self._writer.add_connection(topic, msgtype, typestore=typestore(), offered_qos_profiles=qos)
            self._conns[key] = conn
        self._writer.write(conn, stamp_ns, data)

    def _open_segment(self, stamp_ns: int) -> None:
        tmp = partial_dir(self.path, self._segment_count)
        try:
            self._writer = ChecksummedWriter(tmp, version=METADATA_VERSION, storage_plugin=self._plugin)
            self._writer.open()
        except WriterError as exc:
            raise RecordingError(f"cannot open segment {tmp}: {exc}") from exc
        self._conns = {}
        conn = getattr(self._writer.storage, "conn", None)
        if conn is not None:  # rosbags Sqlite3Writer: like rosbag2's default, let the OS write the pages (survives
            conn.execute("PRAGMA synchronous=OFF")  # a killed process; commits in `flush` mark complete frames)
        for topic, (msgtype, data, _) in self._latched.items():
            self._write_now(topic, msgtype, data, stamp_ns)

    def _close_segment(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        tmp = partial_dir(self.path, self._segment_count)
        counts = {c.id: writer.counts[c.id] for c in writer.connections}
        topics: dict[str, TopicCount] = {}
        for c in writer.connections:
            qos = list(c.ext.offered_qos_profiles)
            have = topics.setdefault(c.topic, TopicCount(c.msgtype, 0, qos, c.digest))
            have.count += counts[c.id]
        total = sum(counts.values())
        summary = FileSummary(segment_name(self.path, self._segment_count, self.storage), writer.min_timestamp,
                              writer.max_timestamp, total, topics)
        writer.close()
        src = tmp / f"{tmp.name}{SUFFIX[self.storage]}"
        src.replace(self.path / summary.name)
        # counted at once: no later segment reuses index k (`recover` drops a segment_k.partial once <name>_k exists)
        self._segment_count += 1
        shutil.rmtree(tmp)
        write_metadata(self.path, self.storage, self._files + [summary])
        self._files.append(summary)
        self.frames_closed = self.frames_flushed
        log.debug("closed segment %s (%d messages)", summary.name, total)

    def flush(self) -> None:
        """Push everything written so far to the open segment's file (an MCAP chunk / a sqlite3 commit), so that a
        killed process loses nothing written before this call once `selfpose recover` has run."""
        writer = self._writer
        if writer is None or writer.storage is None:
            return
        with self.atomic(), self._disk():
            storage = writer.storage
            if hasattr(storage, "close_chunk") and hasattr(storage, "chunk"):  # rosbags McapWriter
                if storage.chunk.bio.tell():
                    storage.close_chunk()
                storage.bio.flush()
            elif hasattr(storage, "conn"):  # rosbags Sqlite3Writer
                storage.conn.commit()

    def split(self) -> None:
        """Close the current segment now (a no-op when nothing was written since the last split)."""
        with self.atomic(), self._disk():
            self._close_segment()

    def close(self) -> None:
        """Close the last segment and write the final metadata.yaml. Idempotent. After a failed write it only marks
        the bag closed (the failure has been raised; the open segment stays for `selfpose recover`)."""
        if self._closed:
            return
        with self.atomic():
            if self._closed:  # closed by another thread while this one waited for the section
                return
            self._closed = True
            if self.failure is not None:
                return
            with self._disk():
                self._close_segment()
        log.info("wrote bag %s (%d segments, %d messages)", self.path, len(self._files),
                 sum(f.count for f in self._files))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def message_count(self) -> int:
        """Messages written so far (closed segments + the open one)."""
        open_count = sum(self._writer.counts.values()) if self._writer is not None else 0
        return sum(f.count for f in self._files) + open_count

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Close (not abort) on errors and interrupts too: what was written is kept.
        self.close()


class _MainThreadSections:
    """Depth of the `BagWriter.atomic` sections the main thread is in, and the interrupt waiting for their end."""

    depth = 0
    pending: BaseException | None = None


@contextlib.contextmanager
def _section() -> Iterator[None]:
    main = threading.current_thread() is threading.main_thread()
    if main:
        _MainThreadSections.depth += 1
    try:
        yield
    finally:
        if main:
            _MainThreadSections.depth -= 1
    if main and _MainThreadSections.depth == 0 and _MainThreadSections.pending is not None:
        exc, _MainThreadSections.pending = _MainThreadSections.pending, None
        raise exc


def raise_after_sections(exc: BaseException, at_once: bool = False) -> None:
    """For an entry point's signal handler (it runs in the main thread): raise ``exc`` now, or, while the main
    thread is inside a `BagWriter.atomic` section, when its outermost section ends (the frame is then complete).
    With ``at_once``, or a second call before that, it raises now (an interrupt already waiting is dropped)."""
    if at_once or _MainThreadSections.depth == 0 or _MainThreadSections.pending is not None:
        _MainThreadSections.pending = None
        raise exc
    _MainThreadSections.pending = exc


class RecordingWriter:
    """Write `Frame`s as a selfpose rosbag2 recording (DESIGN.md section 4).

    Args:
        path: bag directory to create (refused if it exists).
        topics: topic and frame names.
        storage: "mcap" (default) or "sqlite3".
        image_format: colour as "raw" (sensor_msgs/Image rgb8), "jpeg" or "png" (sensor_msgs/CompressedImage).
        depth_format: "16UC1" (millimetres) or "32FC1" (metres).
        segment_frames: frames per closed segment. After kill -9 the closed segments read as they are, and
            `selfpose recover` salvages the frames of the open one (each frame is flushed to it when written).
    """

    def __init__(self, path: str | Path, topics: RecordingTopics | None = None, storage: str = "mcap",
                 image_format: str = "raw", depth_format: str = "16UC1", segment_frames: int = 30) -> None:
        if image_format not in ("raw", "jpeg", "png"):
            raise ConfigError(f"image_format must be raw, jpeg or png, got {image_format!r}")
        if depth_format not in ("16UC1", "32FC1"):
            raise ConfigError(f"depth_format must be 16UC1 or 32FC1, got {depth_format!r}")
        if segment_frames < 1:
            raise ConfigError(f"segment_frames must be >= 1, got {segment_frames}")
        self.topics = topics or RecordingTopics()
        self.image_format = image_format
        self.depth_format = depth_format
        self.segment_frames = int(segment_frames)
        self.bag = BagWriter(path, storage=storage, segment_messages=None)
        self.bag.set_qos(self.topics.tf_static, LATCHED_QOS)
        self.frames_written = 0
        self._static: dict[str, tuple[str, int | None, np.ndarray]] = {}
        self._static_dirty = False

    @property
    def path(self) -> Path:
        return self.bag.path

    def write_static_tf(self, parent: str, child: str, T_parent_child: np.ndarray, stamp_ns: int | None = None
                        ) -> None:
        """Record a static transform ``T_parent_child`` (4, 4) on /tf_static; all static transforms so far are
        re-sent together, as tf2's static broadcaster does. Without ``stamp_ns`` it is written with the next
        frame's stamp."""
        if np.shape(T_parent_child) != (4, 4):
            raise ShapeError(f"T_parent_child must be (4, 4), got {np.shape(T_parent_child)}")
        self._static[child] = (parent, stamp_ns, np.asarray(T_parent_child, dtype=np.float64))
        self._static_dirty = True
        if stamp_ns is not None:
            self._flush_static(int(stamp_ns))

    def _flush_static(self, stamp_ns: int) -> None:
        self._static = {c: (p, stamp_ns if s is None else s, T) for c, (p, s, T) in self._static.items()}
        msg = tf_message((p, c, s, T) for c, (p, s, T) in self._static.items())
        self.bag.write(self.topics.tf_static, "tf2_msgs/msg/TFMessage", msg, stamp_ns, latch=True)
        self._static_dirty = False

    def write_frame(self, frame: Frame) -> None:
        """Write one frame: colour, depth (if any), camera_info and /tf world -> camera at ``frame.stamp_ns``.

        A frame without ``T_world_cam`` is written without /tf (a reader will report it as pose-less).
        """
        with self.bag.atomic():
            self._write_frame(frame)

    def _write_frame(self, frame: Frame) -> None:
        t = self.topics
        stamp = int(frame.stamp_ns)
        cam = t.camera_frame or frame.frame_id
        if self._static_dirty:
            self._flush_static(stamp)
        if self.image_format == "raw":
            self.bag.write(t.color, "sensor_msgs/msg/Image", array_to_image_msg(frame.rgb, "rgb8", stamp, cam), stamp)
        else:
            self.bag.write(t.color, "sensor_msgs/msg/CompressedImage",
                           array_to_compressed_msg(frame.rgb, self.image_format, stamp, cam), stamp)
        if frame.depth is not None and t.depth:
            self.bag.write(t.depth, "sensor_msgs/msg/Image",
                           array_to_image_msg(frame.depth, self.depth_format, stamp, cam), stamp)
        self.bag.write(t.camera_info, "sensor_msgs/msg/CameraInfo", intrinsics_to_camera_info(frame.K, stamp, cam),
                       stamp)
        if frame.T_world_cam is not None:
            self.bag.write(t.tf, "tf2_msgs/msg/TFMessage",
                           tf_message([(t.world_frame, cam, stamp, frame.T_world_cam)]), stamp)
        self.bag.end_frame(split=(self.frames_written + 1) % self.segment_frames == 0)
        self.frames_written += 1

    def close(self) -> None:
        """Close the last segment; the bag is complete. Idempotent."""
        if self._static_dirty and not self.bag.closed and self.bag.failure is None:
            self._flush_static(0)
        self.bag.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
