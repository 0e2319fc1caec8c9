"""Reading rosbag2 recordings (MCAP or sqlite3; selfpose's own or from ``ros2 bag record``) as `Frame`s.

Opening a recording makes one pass over its messages without decoding any image: it indexes the colour and depth
messages (log time + header stamp), decodes every camera_info and fills a `TfBuffer` from /tf and /tf_static.
Then:
- depth is paired with colour by the nearest header stamp within ``depth_tolerance_ns``;
- intrinsics come from the latest camera_info at or before the image stamp (the first one for earlier images);
- ``T_world_cam`` is the TF lookup ``world_frame <- camera_frame`` at the image stamp (interpolated); frames where TF
  would extrapolate beyond ``tf_tolerance_ns`` are skipped (``require_pose=True``), logged once with their count and
  listed in ``.skipped``;
- ``recording[i]`` decodes only frame i (random access through the storage's time index).
Every problem is a `RecordingError` (or `CalibrationError` for intrinsics) naming the bag and the topic.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rosbags.rosbag2 import Reader

from selfpose_core.config_io import one_line
from selfpose_core.data.bag_files import PARTIAL_SUFFIX
from selfpose_core.data.image_codec import any_image_to_array, camera_info_to_intrinsics, check_image_size
from selfpose_core.data.recovery import damaged_chunks
from selfpose_core.data.ros_types import typestore
from selfpose_core.data.tf_buffer import TfBuffer
from selfpose_core.errors import CalibrationError, EncodingError, RecordingError, SelfposeError
from selfpose_core.types import CameraIntrinsics, Frame

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass(slots=True, frozen=True)
class RecordingTopics:
    """Topic and TF frame names of a recording (defaults: what selfpose's collect_sequence writes).

    ``depth=None`` ignores depth; ``camera_frame=""`` uses each colour image's header.frame_id.
    """

    color: str = "/selfpose/color/image_raw"
    depth: str | None = "/selfpose/depth/image_raw"
    camera_info: str = "/selfpose/color/camera_info"
    world_frame: str = "world"
    camera_frame: str = "camera"
    tf: str = "/tf"
    tf_static: str = "/tf_static"


@dataclass(slots=True, frozen=True)
class SkippedFrame:
    """A colour image left out of the recording's frames, and why."""

    message_index: int  # position among the colour messages of the bag
    stamp_ns: int
    reason: str


@dataclass(slots=True)
class RecordingSummary:
    """What `Recording.summary` reports."""

    path: str
    topics: dict[str, tuple[str, int]]  # topic -> (type, message count)
    frames: int
    skipped: int
    start_ns: int
    end_ns: int
    image_size: tuple[int, int]  # (width, height)
    has_depth: bool
    world_frame: str
    camera_frame: str

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9

    @property
    def rate_hz(self) -> float:
        """Mean frame rate over the frames kept (0 for fewer than two frames)."""
        return (self.frames - 1) / self.duration_s if self.frames > 1 and self.duration_s > 0 else 0.0


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """The ``header.stamp`` of a CDR-serialized message whose first field is a std_msgs/Header, in ns."""
    little = raw[1] == 1
    sec, nsec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nsec


def _wrap_reader_error(path: Path, exc: BaseException) -> RecordingError:
    text = one_line(str(exc), 160)
    if "is not supported" in text:  # rosbags: a serialization format, storage plugin or version it cannot read
        return RecordingError(f"cannot read bag {path}: unsupported by selfpose's reader (rosbags): {text}; "
                              "selfpose reads rosbag2 bags with CDR messages in MCAP or sqlite3 storage "
                              "(`ros2 bag convert` writes one)")
    if "checksum mismatch" in text.lower():  # rosbags checks the CRC an MCAP chunk carries (selfpose writes them)
        return RecordingError(f"cannot read bag {path}: {_damaged_chunks_text(path)}; `selfpose recover "
                              f"{path}` salvages the intact chunks")
    partial = sorted(p.name for p in path.glob(f"*{PARTIAL_SUFFIX}")) if path.is_dir() else []
    hint = f"; it has unclosed segments {partial}: run `selfpose recover {path}`" if partial else ""
    return RecordingError(f"cannot read bag {path}: corrupt or truncated ({type(exc).__name__}: {text}){hint}")


def _damaged_chunks_text(path: Path) -> str:
    """Which storage file of ``path`` holds chunks that fail their CRC check, in words."""
    for f in sorted(path.glob("*.mcap")) if path.is_dir() else [path]:
        try:
            bad = damaged_chunks(f)
        except (OSError, RecordingError):
            continue
        if bad:
            return (f"{len(bad)} chunk{'s' if len(bad) > 1 else ''} of {f.name} fail{'' if len(bad) > 1 else 's'} "
                    f"{'their' if len(bad) > 1 else 'its'} CRC check (at byte {bad[0][0]}): the file is damaged")
    return "a chunk fails its CRC check: the bag is damaged"


class Recording:
    """Frames of a rosbag2 recording, with camera poses from TF.

    Args:
        path: bag directory (or a single .mcap/.db3 file).
        topics: topic and frame names.
        require_pose: skip frames without a TF pose (else they come with ``T_world_cam=None``).
        depth_tolerance_ns: largest stamp difference at which a depth image is paired with a colour image.
        tf_tolerance_ns: how far a TF lookup may extrapolate beyond the samples of an edge.
    """

    def __init__(self, path: str | Path, topics: RecordingTopics | None = None, require_pose: bool = True,
                 depth_tolerance_ns: int = 20_000_000, tf_tolerance_ns: int = 50_000_000) -> None:
        self.path = Path(path)
        self.topics = topics or RecordingTopics()
        self.require_pose = require_pose
        self.depth_tolerance_ns = int(depth_tolerance_ns)
        self.tf = TfBuffer(max_extrapolation_ns=tf_tolerance_ns)
        self.skipped: list[SkippedFrame] = []
        self._reader = self._open_reader()
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open_reader(self) -> Reader:
        p = self.path
        if not p.exists():
            raise RecordingError(f"recording {p} does not exist")
        if p.is_dir() and not (p / "metadata.yaml").exists():
            partial = sorted(x.name for x in p.glob(f"*{PARTIAL_SUFFIX}"))
            if partial:
                raise RecordingError(f"recording {p} was not closed (no metadata.yaml, unclosed segments "
                                     f"{partial}): run `selfpose recover {p}`")
            storage = sorted(x.name for x in p.iterdir() if x.suffix in (".mcap", ".db3"))
            if storage:  # a recorder killed before writing it, or a file lost in a copy
                raise RecordingError(f"bag {p} has no metadata.yaml but storage files {storage[:5]}"
                                     f"{' ...' if len(storage) > 5 else ''}: `selfpose recover {p}` rebuilds it")
            raise RecordingError(f"{p} is not a rosbag2 directory (no metadata.yaml)")
        partial = sorted(x.name for x in p.glob(f"*{PARTIAL_SUFFIX}")) if p.is_dir() else []
        if partial:
            log.warning("bag %s has unclosed segments %s (recorder killed?); reading the closed ones. "
                        "`selfpose recover %s` salvages the rest", p, partial, p)
        try:
            reader = Reader(p)
            reader.open()
        except SelfposeError:
            raise
        except Exception as exc:  # rosbags/yaml/sqlite raise many kinds of errors for bad files
            raise _wrap_reader_error(p, exc) from exc
        return reader

    def _conns(self, topic: str | None, required: str | None, types: tuple[str, ...] | None = None) -> list:
        conns = [c for c in self._reader.connections if topic and c.topic == topic]
        if required and not conns:
            have = ", ".join(sorted(self._reader.topics)) or "none"
            raise RecordingError(f"bag {self.path} has no {required} topic {topic} (topics: {have})")
        for c in conns:
            if types and c.msgtype not in types:
                raise RecordingError(f"topic {c.topic} in bag {self.path} has type {c.msgtype}, expected "
                                     f"{' or '.join(types)}")
        return conns

    def _index(self) -> None:
        t = self.topics
        color = self._conns(t.color, "colour image", IMAGE_TYPES)
        depth = self._conns(t.depth, None, IMAGE_TYPES)
        if t.depth and not depth:
            log.info("bag %s has no depth topic %s; frames come without depth", self.path, t.depth)
        info = self._conns(t.camera_info, "camera_info", ("sensor_msgs/msg/CameraInfo",))
        tf = self._conns(t.tf, None, ("tf2_msgs/msg/TFMessage",))
        tf_static = self._conns(t.tf_static, None, ("tf2_msgs/msg/TFMessage",))
        kinds = {c.id: k for k, cs in (("color", color), ("depth", depth), ("info", info), ("tf", tf),
                                       ("tf_static", tf_static)) for c in cs}
        store = typestore()
        col_log, col_stamp, dep_log, dep_stamp, info_stamps = [], [], [], [], []
        infos: list[Any] = []
        try:
            for conn, log_ns, raw in self._reader.messages(color + depth + info + tf + tf_static):
                kind = kinds[conn.id]
                if kind == "color":
                    col_log.append(log_ns)
                    col_stamp.append(header_stamp_ns(raw) or log_ns)  # unstamped images: the log time
                elif kind == "depth":
                    dep_log.append(log_ns)
                    dep_stamp.append(header_stamp_ns(raw) or log_ns)
                elif kind == "info":
                    infos.append(store.deserialize_cdr(raw, conn.msgtype))
                    info_stamps.append(header_stamp_ns(raw) or log_ns)
                else:
                    try:
                        self.tf.add_message(store.deserialize_cdr(raw, conn.msgtype), static=kind == "tf_static")
                    except RecordingError as exc:
                        raise RecordingError(f"bag {self.path}, topic {conn.topic}: {exc}") from exc
        except SelfposeError:
            raise
        except Exception as exc:
            raise _wrap_reader_error(self.path, exc) from exc
        if not col_log:
            raise RecordingError(f"topic {t.color} in bag {self.path} has no messages")
        if not infos:
            raise RecordingError(f"bag {self.path} has no camera_info messages on {t.camera_info}")
        self._color_conns = color
        self._depth_conns = depth
        col_log_a = np.asarray(col_log, dtype=np.int64)
        # occurrence number among colour messages with the same log time (random access by time window)
        order = np.argsort(col_log_a, kind="stable")
        occ = np.zeros(len(col_log_a), dtype=np.int64)
        srt = col_log_a[order]
        occ[order] = np.arange(len(srt)) - np.searchsorted(srt, srt, side="left")
        by_stamp = np.argsort(np.asarray(col_stamp, dtype=np.int64), kind="stable")  # frames in image-time order
        col_log_a, occ = col_log_a[by_stamp], occ[by_stamp]
        col_stamp_a = np.asarray(col_stamp, dtype=np.int64)[by_stamp]

        # camera_info: latest at or before each image stamp (first one for earlier images)
        info_stamp_a = np.asarray(info_stamps, dtype=np.int64)
        iorder = np.argsort(info_stamp_a, kind="stable")
        info_stamp_a = info_stamp_a[iorder]
        intrinsics: list[CameraIntrinsics] = []
        cache: dict[tuple, CameraIntrinsics] = {}
        for j in iorder:
            msg = infos[j]
            key = (tuple(np.asarray(msg.k, dtype=np.float64).tolist()), int(msg.width), int(msg.height))
            if key not in cache:
                try:
                    cache[key] = camera_info_to_intrinsics(msg, t.camera_info)
                except CalibrationError as exc:
                    raise CalibrationError(f"bag {self.path}: {exc}") from None
            intrinsics.append(cache[key])
        info_idx = np.clip(np.searchsorted(info_stamp_a, col_stamp_a, side="right") - 1, 0, len(intrinsics) - 1)

        # depth: nearest stamp within tolerance
        dep_idx = np.full(len(col_stamp_a), -1, dtype=np.int64)
        if dep_stamp:
            dep_stamp_a = np.asarray(dep_stamp, dtype=np.int64)
            dorder = np.argsort(dep_stamp_a, kind="stable")
            ds = dep_stamp_a[dorder]
            pos = np.searchsorted(ds, col_stamp_a)
            lo, hi = np.clip(pos - 1, 0, len(ds) - 1), np.clip(pos, 0, len(ds) - 1)
            best = np.where(np.abs(ds[lo] - col_stamp_a) <= np.abs(ds[hi] - col_stamp_a), lo, hi)
            ok = np.abs(ds[best] - col_stamp_a) <= self.depth_tolerance_ns
            dep_idx = np.where(ok, dorder[best], -1)
            self._dep_log = np.asarray(dep_log, dtype=np.int64)
            dsrt_order = np.argsort(self._dep_log, kind="stable")
            dsrt = self._dep_log[dsrt_order]
            self._dep_occ = np.zeros(len(dsrt), dtype=np.int64)
            self._dep_occ[dsrt_order] = np.arange(len(dsrt)) - np.searchsorted(dsrt, dsrt, side="left")
            if not ok.all():
                log.info("bag %s: %d of %d colour images have no depth image within %.0f ms", self.path,
                         int((~ok).sum()), len(ok), self.depth_tolerance_ns * 1e-6)

        # poses
        poses, valid, reasons = self._poses(col_stamp_a)
        keep = valid if self.require_pose else np.ones(len(col_stamp_a), dtype=bool)
        self.skipped = [SkippedFrame(int(i), int(col_stamp_a[i]), reasons) for i in np.flatnonzero(~keep)]
        if self.skipped:
            log.warning("bag %s: %d of %d colour images have no camera pose (%s <- %s) and are skipped; first: %s",
                        self.path, len(self.skipped), len(keep), t.world_frame, t.camera_frame or "image frame",
                        reasons)
        if not keep.any():
            raise RecordingError(f"bag {self.path}: no colour image on {t.color} has a camera pose: {reasons}")
        sel = np.flatnonzero(keep)
        self._sel = sel
        self._col_log, self._col_stamp, self._col_occ = col_log_a[sel], col_stamp_a[sel], occ[sel]
        self._dep_idx = dep_idx[sel]
        self._intrinsics = [intrinsics[i] for i in info_idx[sel]]
        self._poses_kept = poses[sel] if poses is not None else None
        self._pose_valid = valid[sel]
        self._n_color_total = len(col_log_a)
        self._check_first_frame()

    def _poses(self, stamps: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, str]:
        t = self.topics
        cam = t.camera_frame
        if not cam:
            cam = self._color_frame_id()
        try:
            T, valid = self.tf.lookup_valid(t.world_frame, cam, stamps)
        except RecordingError as exc:
            if self.require_pose:
                raise RecordingError(f"bag {self.path} (topics {t.tf}, {t.tf_static}): {exc}") from None
            log.warning("bag %s: %s; frames come without camera pose", self.path, exc)
            return None, np.zeros(len(stamps), dtype=bool), str(exc)
        reason = ""
        if not valid.all():
            try:
                self.tf.lookup(t.world_frame, cam, stamps[~valid][:1])
            except RecordingError as exc:
                reason = str(exc)
        return T, valid, reason

    def _color_frame_id(self) -> str:
        msg = self._decode(self._color_conns, None, 0)
        return str(msg.header.frame_id).lstrip("/")

    def _decode(self, conns: list, log_ns: int | None, occurrence: int) -> Any:
        try:
            it = self._reader.messages(conns, start=log_ns, stop=None if log_ns is None else log_ns + 1)
            for k, (conn, _, raw) in enumerate(it):
                if k == occurrence:
                    return typestore().deserialize_cdr(raw, conn.msgtype)
        except SelfposeError:
            raise
        except Exception as exc:
            raise _wrap_reader_error(self.path, exc) from exc
        raise RecordingError(f"bag {self.path}: message at {log_ns} ns on {conns[0].topic} vanished while reading")

    def _check_first_frame(self) -> None:
        self[0]

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._col_log)

    def __getitem__(self, i: int) -> Frame:
        """Frame ``i`` (decodes only its own colour and depth messages)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"frame {i} out of range for a recording of {n} frames")
        i %= n
        msg = self._decode(self._color_conns, int(self._col_log[i]), int(self._col_occ[i]))
        j = int(self._dep_idx[i])
        dmsg = None
        if j >= 0:
            dmsg = self._decode(self._depth_conns, int(self._dep_log[j]), int(self._dep_occ[j]))
        return self._frame(i, msg, dmsg)

    def __iter__(self) -> Iterator[Frame]:
        """All frames in stamp order, in one streaming pass over the bag (each storage chunk is read once)."""
        want_color = {(int(lg), int(oc)): i for i, (lg, oc) in enumerate(zip(self._col_log, self._col_occ))}
        want_depth: dict[tuple[int, int], list[int]] = {}
        for i, j in enumerate(self._dep_idx):
            if j >= 0:
                want_depth.setdefault((int(self._dep_log[j]), int(self._dep_occ[j])), []).append(i)
        color_ids = {c.id for c in self._color_conns}
        seen: dict[tuple[bool, int], int] = {}
        colors: dict[int, tuple[Any, bytes]] = {}
        depths: dict[int, tuple[Any, bytes]] = {}
        nxt = 0
        try:
            stream = self._reader.messages(self._color_conns + self._depth_conns)
            for conn, log_ns, raw in stream:
                is_color = conn.id in color_ids
                occ = seen.get((is_color, log_ns), 0)
                seen[(is_color, log_ns)] = occ + 1
                if is_color and (log_ns, occ) in want_color:
                    colors[want_color[(log_ns, occ)]] = (conn, raw)
                elif not is_color:
                    for i in want_depth.get((log_ns, occ), ()):
                        depths[i] = (conn, raw)
                while nxt in colors and (self._dep_idx[nxt] < 0 or nxt in depths):
                    yield self._frame_from_raw(nxt, colors.pop(nxt), depths.pop(nxt, None))
                    nxt += 1
        except SelfposeError:
            raise
        except Exception as exc:
            raise _wrap_reader_error(self.path, exc) from exc
        if nxt != len(self):
            raise RecordingError(f"bag {self.path}: frame {nxt} on {self.topics.color} vanished while reading")

    def _frame_from_raw(self, i: int, color: tuple[Any, bytes], depth: tuple[Any, bytes] | None) -> Frame:
        store = typestore()
        msg = store.deserialize_cdr(color[1], color[0].msgtype)
        dmsg = store.deserialize_cdr(depth[1], depth[0].msgtype) if depth is not None else None
        return self._frame(i, msg, dmsg)

    def _frame(self, i: int, msg: Any, dmsg: Any | None) -> Frame:
        """Frame ``i`` from its decoded colour message and depth message (or None)."""
        t = self.topics
        try:
            rgb = any_image_to_array(msg, t.color)
        except EncodingError as exc:
            raise EncodingError(f"bag {self.path}: {exc}") from None
        if rgb.ndim != 3:
            raise RecordingError(f"bag {self.path}: colour topic {t.color} holds depth-like images")
        K = self._intrinsics[i]
        try:
            check_image_size(rgb, K, t.color, t.camera_info)
        except CalibrationError as exc:
            raise CalibrationError(f"bag {self.path}: {exc}") from None
        depth = None
        if dmsg is not None:
            try:
                depth = any_image_to_array(dmsg, t.depth)
            except EncodingError as exc:
                raise EncodingError(f"bag {self.path}: {exc}") from None
            if depth.ndim != 2:
                raise RecordingError(f"bag {self.path}: depth topic {t.depth} holds colour images "
                                     f"({getattr(dmsg, 'encoding', getattr(dmsg, 'format', '?'))})")
            if depth.shape != rgb.shape[:2]:
                raise CalibrationError(f"bag {self.path}: depth image on {t.depth} is {depth.shape[1]}x"
                                       f"{depth.shape[0]} but colour on {t.color} is {rgb.shape[1]}x{rgb.shape[0]}")
        T = None
        if self._poses_kept is not None and self._pose_valid[i]:
            T = self._poses_kept[i].copy()
        return Frame(rgb=rgb, K=K, stamp_ns=int(self._col_stamp[i]), depth=depth, T_world_cam=T,
                     frame_id=str(msg.header.frame_id), index=i)

    @property
    def stamps_ns(self) -> np.ndarray:
        """(N,) int64 image stamps of the frames."""
        return self._col_stamp.copy()

    @property
    def poses(self) -> np.ndarray:
        """(N, 4, 4) T_world_cam of the frames (NaN where a frame has none), without decoding images."""
        if self._poses_kept is None:
            return np.full((len(self), 4, 4), np.nan)
        out = self._poses_kept.copy()
        out[~self._pose_valid] = np.nan
        return out

    def intrinsics(self, i: int) -> CameraIntrinsics:
        """Intrinsics of frame ``i`` without decoding its image."""
        return self._intrinsics[i]

    def summary(self) -> RecordingSummary:
        """Topics with types and counts, frame count, time span, rate, image size."""
        topics = {name: (info.msgtype or "?", int(info.msgcount)) for name, info in self._reader.topics.items()}
        K = self._intrinsics[0]
        return RecordingSummary(
            path=str(self.path), topics=topics, frames=len(self), skipped=len(self.skipped),
            start_ns=int(self._col_stamp.min()), end_ns=int(self._col_stamp.max()), image_size=(K.width, K.height),
            has_depth=bool((self._dep_idx >= 0).any()), world_frame=self.topics.world_frame,
            camera_frame=self.topics.camera_frame)

    def close(self) -> None:
        """Close the bag."""
        if getattr(self, "_reader", None) is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
