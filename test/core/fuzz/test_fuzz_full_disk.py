"""A full disk (`FullDisk`: the bytes selfpose's bag writers may still write) while recording, while `selfpose
estimate` writes its bag and while `selfpose recover` writes its salvage.

Properties: the writer stops with one `BagWriteError` line saying how many complete frames it kept and how many of
them are readable as they are; those read back bit for bit, and `selfpose recover` (disk freed) gives back at least
every frame it said it kept, never a frame that was not written, never one twice. `recover` on a full disk fails
with one line and leaves the bag exactly as it was.
"""
from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event
from hypothesis import strategies as st

from selfpose_core.cli import estimate as estimate_cli
from selfpose_core.cli.main import main
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.recovery import recover_bag
from selfpose_core.errors import BagWriteError, RecordingError
from selfpose_core.types import Frame

from .conftest import (BoxEstimator, FullDisk, digest, expect_clean, fuzz, interrupted_copy, pose_stamps, recorded,
                       small_frames)

N_FRAMES = 9
KEPT = re.compile(r"^writing bag (\S+) failed \(No space left on device\); kept (\d+) complete frames: (\d+) in closed "
                  r"segments, readable as they are(?:, (\d+) more flushed to a segment not yet closed "
                  r"\(`selfpose recover \1` salvages them\))?$")
_counter = itertools.count()


FRAMES = small_frames(N_FRAMES, 0, depth=True)


def _record(bag: Path, segment_frames: int, done: list[Frame] | None = None) -> None:
    """Write FRAMES; ``done`` receives each frame whose `write_frame` returned."""
    with RecordingWriter(bag, segment_frames=segment_frames) as w:
        w.write_static_tf("world", "table", np.eye(4))
        for f in FRAMES:
            w.write_frame(f)
            if done is not None:
                done.append(f)


_NEEDED: dict[int, int] = {}


def _bytes_needed(tmp: Path, segment_frames: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Bytes the recording of FRAMES writes (measured once per segment length)."""
    if segment_frames not in _NEEDED:
        disk = FullDisk(10**9)
        with monkeypatch.context() as m:
            disk.install(m)
            _record(tmp / f"size_{next(_counter)}", segment_frames)
        _NEEDED[segment_frames] = 10**9 - disk.free
    return _NEEDED[segment_frames]


def _check_frames(bag: Path, lo: int, hi: int, frames: list[Frame] = FRAMES) -> int:
    """``bag`` holds ``frames[:n]``, lo <= n <= hi, bit for bit; returns n."""
    with Recording(bag) as rec:
        got = list(rec)
    assert lo <= len(got) <= hi, (lo, len(got), hi)
    for g, want in zip(got, frames):
        assert g.stamp_ns == want.stamp_ns
        np.testing.assert_array_equal(g.rgb, want.rgb)
        np.testing.assert_allclose(g.depth, want.depth, atol=5e-4)  # 16UC1: millimetres
    return len(got)


def _recording_on_a_full_disk(tmp_path_factory, monkeypatch, segment_frames, fraction):
    tmp = tmp_path_factory.getbasetemp()
    need = _bytes_needed(tmp, segment_frames, monkeypatch)
    bag = tmp / f"full_{next(_counter)}"
    written: list[Frame] = []
    with monkeypatch.context() as m:
        FullDisk(int(need * fraction)).install(m)
        try:
            _record(bag, segment_frames, written)
        except BagWriteError as exc:
            error = str(exc)
        else:
            error = None
    done = len(written)
    event("recording: " + ("complete" if error is None else "stopped"))
    if error is None:
        assert done == N_FRAMES
        _check_frames(bag, N_FRAMES, N_FRAMES)
        return
    assert "\n" not in error and len(error) < 500
    if error.startswith("cannot create bag"):
        return
    match = KEPT.match(error)
    assert match, error
    kept, closed = int(match.group(2)), int(match.group(3))
    assert done <= kept <= done + 1 and closed <= kept  # the frame being written may be complete already
    assert kept - closed == int(match.group(4) or 0)
    if closed:
        _check_frames(bag, closed, closed)  # readable as it is
    if kept:
        recover_bag(bag)
        _check_frames(bag, kept, done + 1)
    else:
        with pytest.raises(RecordingError):
            recover_bag(bag)


test_recording_on_a_full_disk, test_recording_on_a_full_disk_long = fuzz(
    20, segment_frames=st.sampled_from([1, 2, 4, 100]), fraction=st.floats(0.0, 1.1))(_recording_on_a_full_disk)


@pytest.mark.parametrize("fraction", [0.45, 0.8])
def test_full_disk_message_counts_frames_kept(tmp_path, monkeypatch, fraction):
    """Targeted: segments of 4 frames, the disk full inside the third segment."""
    need = _bytes_needed(tmp_path, 4, monkeypatch)
    with monkeypatch.context() as m:
        FullDisk(int(need * fraction)).install(m)
        with pytest.raises(BagWriteError) as info:
            _record(tmp_path / "bag", 4)
    match = KEPT.match(str(info.value))
    assert match, str(info.value)
    kept, closed = int(match.group(2)), int(match.group(3))
    assert closed == 4 * (kept // 4) and kept >= 3
    assert _check_frames(tmp_path / "bag", closed, closed) == closed
    recover_bag(tmp_path / "bag")
    assert _check_frames(tmp_path / "bag", kept, kept + 1) >= kept


# ------------------------------------------------------------------------------------------ selfpose estimate
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return recorded(tmp_path_factory.mktemp("full_disk_estimate"), FRAMES)


def _estimate_on_a_full_disk(scene, tmp_path_factory, monkeypatch, capsys, free, segment_frames):
    out = tmp_path_factory.getbasetemp() / f"poses_{next(_counter)}"
    before = digest(scene)
    with monkeypatch.context() as m:
        m.setattr(estimate_cli, "load_estimator", lambda *a, **k: BoxEstimator())
        FullDisk(free).install(m)
        rc = main(["estimate", "--bag", str(scene / "bag"), "--model", str(scene / "model"), "--out", str(out),
                   "--segment-frames", str(segment_frames)])
    err = capsys.readouterr().err
    assert digest(scene) == before and "Traceback" not in err
    stamps = [f.stamp_ns for f in FRAMES]
    event(f"estimate: exit {rc}")
    if rc == 0:
        assert pose_stamps(out) == stamps
        return
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("selfpose estimate: error: ") and len(line) < 500
    match = KEPT.match(line[len("selfpose estimate: error: "):])
    if match is None:  # the disk was full before the bag existed
        assert "cannot create bag" in line
        return
    kept, closed = int(match.group(2)), int(match.group(3))
    if closed:
        assert pose_stamps(out) == stamps[:closed]
    if kept:
        assert main(["recover", str(out)]) == 0
        got = pose_stamps(out)
        assert kept <= len(got) <= kept + 1 and got == stamps[:len(got)]


test_estimate_on_a_full_disk, test_estimate_on_a_full_disk_long = fuzz(
    10, free=st.integers(0, 60_000), segment_frames=st.sampled_from([1, 3, 100]))(_estimate_on_a_full_disk)


# ------------------------------------------------------------------------------------------ selfpose recover
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A bag as kill -9 leaves it: segments 0-1 closed (4 frames each), frame 8 flushed into segment_2.partial."""
    return interrupted_copy(tmp_path_factory.mktemp("full_disk_recover"), FRAMES)


def _recover_on_a_full_disk(interrupted, tmp_path_factory, monkeypatch, free, damage):
    bag = tmp_path_factory.getbasetemp() / f"recover_{next(_counter)}"
    shutil.copytree(interrupted, bag)
    if damage:  # a flipped byte in a closed segment's first frame: recover rewrites that file too
        f = bag / "live_1.mcap"
        data = bytearray(f.read_bytes())
        data[data.find(FRAMES[4].rgb.tobytes()) + 7] ^= 0x10
        f.write_bytes(bytes(data))
    before = digest(bag)
    with monkeypatch.context() as m:
        FullDisk(free).install(m)
        error = expect_clean(lambda: recover_bag(bag))
    event("recover: " + ("refused, bag unchanged" if error is not None else "done"))
    if error is not None:
        assert "the bag is unchanged" in str(error) and digest(bag) == before
    recover_bag(bag)
    want = FRAMES[:4] + FRAMES[5:] if damage else FRAMES
    _check_frames(bag, len(want), len(want), want)


test_recover_on_a_full_disk, test_recover_on_a_full_disk_long = fuzz(
    20, free=st.integers(0, 60_000), damage=st.sampled_from([0, 1]))(_recover_on_a_full_disk)


@pytest.mark.parametrize("full_segment", [0, 1])
def test_sqlite3_database_full_is_the_same_line(tmp_path, monkeypatch, full_segment):
    """sqlite3 storage: SQLite's own "database or disk is full", in segment ``full_segment`` (its file limited to
    6 pages, room for 2 of its 4 frames)."""
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer
    init, opened = Sqlite3Writer.__init__, itertools.count()

    def limited(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if next(opened) == full_segment:
            self.conn.execute("PRAGMA max_page_count = 6")

    monkeypatch.setattr(Sqlite3Writer, "__init__", limited)
    written: list[Frame] = []
    with pytest.raises(BagWriteError) as info:
        with RecordingWriter(tmp_path / "bag", storage="sqlite3", segment_frames=4) as w:
            for f in FRAMES:
                w.write_frame(f)
                written.append(f)
    assert re.match(rf"^writing bag \S+ failed \(database or disk is full\); kept {4 * full_segment + 2} complete "
                    rf"frames: {4 * full_segment} in closed segments, readable as they are, 2 more flushed to a "
                    r"segment not yet closed", str(info.value)), str(info.value)
    assert len(written) == 4 * full_segment + 2
    monkeypatch.undo()
    if full_segment:
        _check_frames(tmp_path / "bag", 4 * full_segment, 4 * full_segment)
    recover_bag(tmp_path / "bag")
    _check_frames(tmp_path / "bag", len(written), len(written))
