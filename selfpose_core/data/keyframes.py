"""Choosing keyframes while the robot drives, and writing them as a recording (the logic of collect_sequence).

`KeyframeSelector` keeps a frame when the camera has moved at least ``min_translation_m`` or turned at least
``min_rotation_deg`` since the last keyframe. `ViewCoverage` tells how much of the circle around the scene the
keyframes see: the scene centre is the point closest to all optical axes (least squares), azimuth is measured about
the world's up axis (z, REP-103) in ``bins`` sectors, elevation above the horizontal plane through the centre.

`SequenceCollector` takes frames already converted from ROS messages plus a camera pose lookup (tf2 in the node, a
`TfBuffer` in tests and replays) and writes the keyframes through `RecordingWriter`:
- frames wait (in image-stamp order) until their pose can be looked up, at most ``tf_wait_s`` of image time; then
  they are given up and counted as "no TF";
- a frame stamped at or before the last frame already decided is counted "out of order" and ignored;
- free disk is checked before writing anything and every ``disk_check_every`` keyframes;
- ``close()`` (also on Ctrl-C / SIGTERM through the context manager) decides the frames still waiting and closes
  the bag, so it holds every keyframe reported before the signal.
"""
from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfpose_core.data.recording import RecordingTopics
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.errors import ConfigError, RecordingError, ShapeError
from selfpose_core.geometry.projection import optical_axes_center
from selfpose_core.geometry.se3 import rotation_angle
from selfpose_core.types import Frame

log = logging.getLogger(__name__)

PoseLookup = Callable[[int], "np.ndarray | None"]  # stamp_ns -> T_world_cam (4, 4), or None when not available


@dataclass(slots=True)
class KeyframeConfig:
    """When a frame becomes a keyframe, how long it waits for TF, and the disk reserve."""

    min_translation_m: float = 0.05
    min_rotation_deg: float = 5.0
    tf_wait_s: float = 0.5
    coverage_bins: int = 36
    min_free_gb: float = 1.0
    disk_check_every: int = 20

    def __post_init__(self) -> None:
        for name in ("min_translation_m", "min_rotation_deg", "tf_wait_s", "min_free_gb"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"keyframe parameter {name} must be >= 0, got {getattr(self, name)}")
        if self.min_translation_m == 0 and self.min_rotation_deg == 0:
            log.info("min_translation_m and min_rotation_deg are 0: every frame with a pose is kept")
        if self.coverage_bins < 1 or self.disk_check_every < 1:
            raise ConfigError("coverage_bins and disk_check_every must be >= 1")


def relative_motion(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation in metres, rotation in degrees) between two camera poses (4, 4)."""
    return float(np.linalg.norm(T_b[:3, 3] - T_a[:3, 3])), math.degrees(float(rotation_angle(T_a, T_b)))


class KeyframeSelector:
    """Keep a pose when it moved >= ``min_translation_m`` or turned >= ``min_rotation_deg`` since the last kept one
    (the first pose is always kept)."""

    def __init__(self, min_translation_m: float = 0.05, min_rotation_deg: float = 5.0) -> None:
        self.min_translation_m = float(min_translation_m)
        self.min_rotation_deg = float(min_rotation_deg)
        self.last: np.ndarray | None = None

    def consider(self, T_world_cam: np.ndarray) -> bool:
        """Whether this pose is a keyframe; if so it becomes the reference for the next decisions."""
        T = np.asarray(T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ShapeError(f"T_world_cam must be a finite (4, 4) pose, got {T.shape}")
        if self.last is not None:
            dt, dr = relative_motion(self.last, T)
            if dt < self.min_translation_m and dr < self.min_rotation_deg:
                return False
        self.last = T.copy()
        return True


@dataclass(slots=True)
class CoverageSummary:
    """How the keyframes surround the scene."""

    centre: np.ndarray  # (3,) world point the cameras look at
    azimuth_fraction: float  # share of azimuth sectors holding a keyframe
    sectors: int
    sectors_seen: int
    elevation_deg: tuple[float, float]  # (min, max)
    distance_m: tuple[float, float]  # (min, max) camera distance to the centre

    def __str__(self) -> str:
        return (f"azimuth {100 * self.azimuth_fraction:.0f}% ({self.sectors_seen}/{self.sectors} sectors), "
                f"elevation {self.elevation_deg[0]:.0f}..{self.elevation_deg[1]:.0f} deg, "
                f"distance {self.distance_m[0]:.2f}..{self.distance_m[1]:.2f} m")


class ViewCoverage:
    """Camera positions and viewing directions of the keyframes, summarised as coverage of the view sphere.

    Args:
        bins: azimuth sectors over 360 degrees.
        up: the world's up axis (3,).
        default_distance_m: where the scene is assumed to be along the optical axis while the axes do not yet
            intersect (fewer than two, or all parallel).
    """

    def __init__(self, bins: int = 36, up: tuple[float, float, float] = (0.0, 0.0, 1.0),
                 default_distance_m: float = 1.0) -> None:
        self.bins = int(bins)
        self.up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
        self.default_distance_m = float(default_distance_m)
        self._poses: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._poses)

    def add(self, T_world_cam: np.ndarray) -> None:
        """Add a keyframe pose (4, 4); the optical axis is the camera's z axis."""
        self._poses.append(np.asarray(T_world_cam, dtype=np.float64))

    def centre(self) -> np.ndarray:
        """(3,) the point with the least squared distance to all optical axes (``optical_axes_center``); while they
        do not intersect (fewer than two, or all parallel) the mean point ``default_distance_m`` along them."""
        if not self._poses:
            return np.zeros(3)
        T = np.stack(self._poses)
        axes = T[:, :3, 2] / np.linalg.norm(T[:, :3, 2], axis=1, keepdims=True)
        if np.linalg.norm(np.cross(axes, axes[0]), axis=1).max() > 1e-3:
            return optical_axes_center(T)
        return (T[:, :3, 3] + self.default_distance_m * axes).mean(0)

    def summary(self) -> CoverageSummary:
        """Azimuth sectors seen, elevation and distance ranges of the keyframes about `centre`."""
        if not self._poses:
            return CoverageSummary(np.zeros(3), 0.0, self.bins, 0, (0.0, 0.0), (0.0, 0.0))
        c = self.centre()
        v = np.stack(self._poses)[:, :3, 3] - c
        height = v @ self.up
        horiz = v - height[:, None] * self.up
        ref = np.eye(3)[int(np.argmin(np.abs(self.up)))]  # a world axis far from up
        e1 = ref - (ref @ self.up) * self.up
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(self.up, e1)
        az = np.arctan2(horiz @ e2, horiz @ e1)
        sector = np.floor((az + np.pi) / (2 * np.pi) * self.bins).astype(int) % self.bins
        seen = int(np.unique(sector).size)
        dist = np.linalg.norm(v, axis=1)
        elev = np.degrees(np.arctan2(height, np.linalg.norm(horiz, axis=1)))
        return CoverageSummary(c, seen / self.bins, self.bins, seen, (float(elev.min()), float(elev.max())),
                               (float(dist.min()), float(dist.max())))


@dataclass(slots=True)
class CollectorStats:
    """Counters of a collection run."""

    received: int = 0
    keyframes: int = 0
    no_tf: int = 0
    out_of_order: int = 0
    path_length_m: float = 0.0
    keyframe_stamps: list[int] = field(default_factory=list)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


class SequenceCollector:
    """Keyframe selection + recording writer for collect_sequence (see the module docstring).

    Args:
        path: bag directory to create (refused if it exists).
        pose_lookup: image stamp (ns) -> T_world_cam (4, 4), or None while the transform is not available.
        config: keyframe and waiting parameters.
        topics, storage, image_format, depth_format, segment_frames: passed to `RecordingWriter`.
        free_bytes_fn: free disk space probe (injectable for tests).
    """

    def __init__(self, path: str | Path, pose_lookup: PoseLookup, config: KeyframeConfig | None = None,
                 topics: RecordingTopics | None = None, storage: str = "mcap", image_format: str = "raw",
                 depth_format: str = "16UC1", segment_frames: int = 30,
                 free_bytes_fn: Callable[[Path], int] = free_bytes) -> None:
        self.path = Path(path)
        self.config = config or KeyframeConfig()
        self.pose_lookup = pose_lookup
        self._free_bytes = free_bytes_fn
        if self.path.exists():
            raise RecordingError(f"{self.path} exists already; collect_sequence never overwrites a recording "
                                 "(choose another output path)")
        self._check_disk()
        self.writer = RecordingWriter(self.path, topics=topics, storage=storage, image_format=image_format,
                                      depth_format=depth_format, segment_frames=segment_frames)
        self.selector = KeyframeSelector(self.config.min_translation_m, self.config.min_rotation_deg)
        self.coverage = ViewCoverage(self.config.coverage_bins)
        self.stats = CollectorStats()
        self._pending: list[Frame] = []
        self._last_decided: int | None = None
        self._newest: int | None = None
        self._last_pose: np.ndarray | None = None
        self._closed = False

    def _check_disk(self) -> None:
        need = int(self.config.min_free_gb * 1e9)
        free = self._free_bytes(self.path.parent)
        if free < need:
            raise RecordingError(f"only {free / 1e9:.2f} GB free for {self.path} (min_free_gb is "
                                 f"{self.config.min_free_gb:g}); free some space or record elsewhere")

    # ------------------------------------------------------------------ feeding
    def add_frame(self, frame: Frame) -> list[int]:
        """Offer one synchronised frame (``T_world_cam`` is ignored: the pose comes from ``pose_lookup``).

        Returns the stamps of the keyframes written by this call (frames may wait for their TF and be written by a
        later call).
        """
        if self._closed:
            raise RecordingError(f"recording {self.path} is closed")
        self.stats.received += 1
        stamp = int(frame.stamp_ns)
        if (self._last_decided is not None and stamp <= self._last_decided) or any(
                f.stamp_ns == stamp for f in self._pending):
            self.stats.out_of_order += 1
            log.debug("frame at %d ns is out of order (last decided %s); ignored", stamp, self._last_decided)
            return []
        self._pending.append(frame)
        self._pending.sort(key=lambda f: f.stamp_ns)
        self._newest = stamp if self._newest is None else max(self._newest, stamp)
        return self._drain(final=False)

    def _drain(self, final: bool) -> list[int]:
        wait_ns = int(self.config.tf_wait_s * 1e9)
        written = []
        while self._pending:
            frame = self._pending[0]
            T = self.pose_lookup(int(frame.stamp_ns))
            if T is None:
                if final or self._newest - frame.stamp_ns > wait_ns:
                    self._pending.pop(0)
                    self.stats.no_tf += 1
                    self._last_decided = int(frame.stamp_ns)
                    continue
                break
            self._pending.pop(0)
            self._last_decided = int(frame.stamp_ns)
            if self._decide(frame, np.asarray(T, dtype=np.float64)):
                written.append(int(frame.stamp_ns))
        return written

    def _decide(self, frame: Frame, T: np.ndarray) -> bool:
        if self._last_pose is not None:
            self.stats.path_length_m += float(np.linalg.norm(T[:3, 3] - self._last_pose[:3, 3]))
        self._last_pose = T
        if not self.selector.consider(T):
            return False
        frame.T_world_cam = T
        self.writer.write_frame(frame)
        self.coverage.add(T)
        self.stats.keyframes += 1
        self.stats.keyframe_stamps.append(int(frame.stamp_ns))
        if self.stats.keyframes % self.config.disk_check_every == 0:
            try:
                self._check_disk()
            except RecordingError as exc:
                self._pending.clear()
                self.close()
                raise RecordingError(f"{exc}; stopped after {self.stats.keyframes} keyframes, {self.path} is "
                                     "closed and readable") from None
        return True

    # ------------------------------------------------------------------ reporting
    @property
    def pending(self) -> int:
        """Frames waiting for their camera pose."""
        return len(self._pending)

    def progress(self) -> str:
        """One line: keyframes, frames, losses, path length and view coverage."""
        s = self.stats
        return (f"{s.keyframes} keyframes of {s.received} frames (no TF {s.no_tf}, out of order {s.out_of_order}, "
                f"waiting {self.pending}), path {s.path_length_m:.2f} m, {self.coverage.summary()}")

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Decide the frames still waiting for TF (one last lookup each), then close the bag. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            with self.writer.bag.atomic():
                self._drain(final=True)
        finally:
            self.writer.close()
        log.info("recording %s closed: %s", self.path, self.progress())

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SequenceCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
