"""A failed `selfpose recover` (here a full disk, injected) leaves the bag exactly as it was: still openable, and
`recover` succeeds once the cause is gone."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

import selfpose_core.data.recovery as recovery
from selfpose_core.cli.main import main
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.errors import RecordingError
from selfpose_core.types import CameraIntrinsics, Frame


class FullDiskWriter(recovery.ChecksummedWriter):
    """rosbags' Writer on a disk that fills up at the first message."""

    def write(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")


def _interrupted_bag(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A bag as a killed recorder leaves it: segment 0 closed (4 frames), frames 4-5 flushed into an unclosed
    partial segment (a copy taken while the writer is open)."""
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(tmp_path / "live", segment_frames=4) as w:
        for i in range(6):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i,
                                T_world_cam=np.eye(4)))
        shutil.copytree(tmp_path / "live", tmp_path / "bag")
    assert list((tmp_path / "bag").glob("*.partial"))
    return tmp_path / "bag"


def _snapshot(bag: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bag)): p.read_bytes() for p in sorted(bag.rglob("*")) if p.is_file()}


def test_failed_recover_of_a_partial_segment_leaves_the_bag_openable(tmp_path, rng, monkeypatch, capsys):
    bag = _interrupted_bag(tmp_path, rng)
    before = _snapshot(bag)
    monkeypatch.setattr(recovery, "ChecksummedWriter", FullDiskWriter)
    assert main(["recover", str(bag)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"selfpose recover: error: cannot recover {bag}: writing "
                                                         "the salvage failed (No space left on device")
    assert "the bag is unchanged" in err
    assert _snapshot(bag) == before  # no file changed, added or removed
    with Recording(bag) as rec:
        assert len(rec) == 4
    monkeypatch.undo()
    assert main(["recover", str(bag)]) == 0
    with Recording(bag) as rec:
        assert len(rec) == 6


def test_failed_recover_of_an_unreadable_file_keeps_it_in_place(tmp_path, rng, monkeypatch):
    bag = _interrupted_bag(tmp_path, rng)
    shutil.rmtree(next(bag.glob("*.partial")))
    f = next(bag.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 3 // 4])  # a truncated closed file: no index
    before = _snapshot(bag)
    monkeypatch.setattr(recovery, "ChecksummedWriter", FullDiskWriter)
    with pytest.raises(RecordingError, match="the bag is unchanged"):
        recovery.recover_bag(bag)
    assert _snapshot(bag) == before  # not renamed to *.unclosed, nothing left behind
    monkeypatch.undo()
    report = recovery.recover_bag(bag)
    assert report.salvaged[f.name] >= 1 and (bag / f"{f.name}.unclosed").read_bytes() == before[f.name]
    with Recording(bag) as rec:
        assert 1 <= len(rec) < 4
