"""The fuzz suite's shared pieces: hypothesis settings and the properties every hostile input must satisfy.

Default run: derandomized (the same cases every run, no example database), a bounded number of examples per
family, no deadline. ``-m slow`` runs each family's ``_long`` twin with ten times the examples.
"""
from __future__ import annotations

import errno
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from rosbags.rosbag2 import Reader

from selfpose_core.data import bag_files
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.errors import SelfposeError
from selfpose_core.types import CameraIntrinsics, Frame, PoseEstimate

MAX_MESSAGE_CHARS = 500
MAX_PEAK_BYTES = 256 * 2**20  # how far one hostile input (a few kB) may raise the resident memory
LONG_FACTOR = 10

_BASE = dict(derandomize=True, database=None, deadline=None, print_blob=False,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


def fuzz(examples: int, **strategies: Any) -> Callable[[Callable], tuple[Callable, Callable]]:
    """Decorator: the property as two tests, ``examples`` derandomized cases and a ``slow``-marked twin with
    ``LONG_FACTOR`` times as many. Use as ``test_x, test_x_long = fuzz(50, value=...)(_property)``."""
    def make(prop: Callable) -> tuple[Callable, Callable]:
        fast = settings(max_examples=examples, **_BASE)(given(**strategies)(prop))
        long = pytest.mark.slow(settings(max_examples=examples * LONG_FACTOR, **_BASE)(given(**strategies)(prop)))
        return fast, long
    return make


def digest(*paths: Path) -> str:
    """One hash of the bytes of every file under ``paths`` (to check that reading changed nothing)."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else [Path(root)]
        for p in files:
            h.update(str(p).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def expect_clean(call: Callable[[], Any], *inputs: Path, max_peak_bytes: int = MAX_PEAK_BYTES
                 ) -> SelfposeError | None:
    """Run ``call``: it must succeed or raise a SelfposeError whose message is one line of < 500 characters, leave
    the files ``inputs`` unchanged and raise the process's resident memory by less than ``max_peak_bytes`` at its
    peak (Linux: VmHWM after resetting it; not checked elsewhere). Returns the error (None on success)."""
    before = digest(*inputs)
    error = None
    measured = _reset_peak_rss()
    base = _status_kib("VmRSS") if measured else 0
    try:
        call()
    except SelfposeError as exc:
        error = exc
        text = str(exc)
        assert "\n" not in text and "\r" not in text, f"message is not one line: {text[:300]!r}"
        assert len(text) < MAX_MESSAGE_CHARS, f"message of {len(text)} characters: {text[:300]!r}..."
    finally:
        peak = (_status_kib("VmHWM") - base) * 1024 if measured else 0
    assert peak < max_peak_bytes, f"resident memory rose by {peak / 2**20:.0f} MiB at its peak"
    assert digest(*inputs) == before, "reading changed its input files"
    return error


class FullDisk:
    """A file system with ``free`` bytes left for what selfpose's bag writers write: every MCAP file (recordings,
    `selfpose estimate`'s output, `recover`'s salvage) and metadata.yaml. A write beyond it writes what fits and
    raises OSError(ENOSPC), as a full file system does. `install` it with pytest's monkeypatch."""

    def __init__(self, free: int) -> None:
        self.free = free

    def take(self, n: int) -> int:
        """Reserve up to ``n`` new bytes; returns how many fit."""
        got = min(n, self.free)
        self.free -= got
        return got

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        disk = self
        init = bag_files._ChecksummedMcapWriter.__init__

        def limited_init(writer, *args, **kwargs):
            init(writer, *args, **kwargs)
            writer.bio = _LimitedFile(writer.bio, disk)

        write_text = Path.write_text

        def limited_write_text(path, data, *args, **kwargs):
            if disk.take(len(data.encode())) < len(data.encode()):
                write_text(path, "", *args, **kwargs)  # created, empty: nothing fitted
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return write_text(path, data, *args, **kwargs)

        monkeypatch.setattr(bag_files._ChecksummedMcapWriter, "__init__", limited_init)
        monkeypatch.setattr(bag_files.Path, "write_text", limited_write_text)


class _LimitedFile:
    """A binary file whose new bytes come out of a `FullDisk`."""

    def __init__(self, f: Any, disk: FullDisk) -> None:
        self._f, self._disk = f, disk
        self._size = f.tell()

    def write(self, data: Any) -> int:
        data = bytes(data)
        pos = self._f.tell()
        new = max(0, pos + len(data) - self._size)
        fits = len(data) - new + self._disk.take(new)
        self._f.write(data[:fits])
        self._size = max(self._size, pos + fits)
        if fits < len(data):
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fits

    def __getattr__(self, name: str) -> Any:  # tell, seek, flush, close, ...
        return getattr(self._f, name)


# ---------------------------------------------------------------- a small recording and a stand-in estimator
SMALL_K = CameraIntrinsics(40.0, 40.0, 7.5, 5.5, 16, 12)
T0 = 1_700_000_000_000_000_000


def small_frames(n: int, seed: int, depth: bool) -> list[Frame]:
    """``n`` random 16 x 12 frames 0.1 s apart from ``T0`` (with random depth when ``depth``)."""
    rng = np.random.default_rng(seed)
    return [Frame(rgb=rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), K=SMALL_K, stamp_ns=T0 + i * 10**8,
                  depth=rng.uniform(0.4, 2.0, (12, 16)).astype(np.float32) if depth else None,
                  T_world_cam=np.eye(4)) for i in range(n)]


class BoxEstimator:
    """Stands in for a model bundle: one box at the camera in every frame."""

    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        return [PoseEstimate("box", np.eye(4), 0.9, 1)]


def recorded(root: Path, frames: list[Frame]) -> Path:
    """``root`` holding the recording ``bag`` of ``frames`` and an empty ``model`` directory."""
    with RecordingWriter(root / "bag") as w:
        for f in frames:
            w.write_frame(f)
    (root / "model").mkdir()
    return root


def interrupted_copy(root: Path, frames: list[Frame]) -> Path:
    """``root/bag``, a copy of a recording of ``frames`` (four per segment) taken before its writer closed: as
    kill -9 leaves it, the full segments closed and the rest flushed into a ``.partial`` segment."""
    with RecordingWriter(root / "live", segment_frames=4) as w:
        for f in frames:
            w.write_frame(f)
        shutil.copytree(root / "live", root / "bag")
    return root / "bag"


def pose_stamps(bag: Path) -> list[int]:
    """Sorted stamps of the /object_poses messages in ``bag``."""
    with Reader(bag) as reader:
        return sorted(t for _, t, _ in reader.messages([c for c in reader.connections if c.topic == "/object_poses"]))
