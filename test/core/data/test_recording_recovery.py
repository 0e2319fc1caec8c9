"""Interrupted recordings: kill -9, SIGTERM, truncated files, and `selfpose recover`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from selfpose_core.cli.main import main
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.recovery import recover_bag, salvage_mcap
from selfpose_core.types import CameraIntrinsics, Frame
from selfpose_core.errors import RecordingError

ROOT = Path(__file__).resolve().parents[3]

WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from selfpose_core.cli.signals import StopSignals
    from selfpose_core.data.recording_writer import RecordingWriter
    from selfpose_core.types import CameraIntrinsics, Frame
    bag, storage, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    rng = np.random.default_rng(0)
    def frame(i):
        T = np.eye(4); T[:3, 3] = [0.1 * i, 0.0, 1.0]
        return Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i * 10**8,
                     depth=np.full((24, 32), 1.5, np.float32), T_world_cam=T)
    w = RecordingWriter(bag, storage=storage, segment_frames=4)
    with StopSignals():  # what an entry point does; the writer itself installs no handler
        try:
            w.write_static_tf("world", "table", np.eye(4))
            for i in range(n):
                w.write_frame(frame(i))
            if how == "kill":
                os._exit(9)  # like kill -9: no close, no flush of Python buffers
            if how == "sigterm":
                with w.bag.atomic():  # a signal arriving mid-frame is delivered after the frame is complete
                    os.kill(os.getpid(), signal.SIGTERM)
                    w.write_frame(frame(n))
                w.write_frame(frame(n + 1))  # never reached
        finally:
            w.close()
""")


def _run_writer(bag: Path, storage: str, n: int, how: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", WRITER, str(bag), storage, str(n), how], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_killed_writer_then_recover(tmp_path, storage):
    bag = tmp_path / "bag"
    assert _run_writer(bag, storage, 10, "kill") == 9
    assert list(bag.glob("*.partial"))
    with Recording(bag) as rec:  # readable as it is: the two closed segments
        assert len(rec) == 8
    assert main(["recover", str(bag)]) == 0
    assert not list(bag.glob("*.partial"))
    with Recording(bag) as rec:  # every frame written before the kill
        assert len(rec) == 10
        assert rec.stamps_ns.tolist() == [10**18 + i * 10**8 for i in range(10)]
        np.testing.assert_allclose(rec[9].T_world_cam[:3, 3], [0.9, 0.0, 1.0])
    with Reader(bag) as reader:  # and for rosbags / ros2 bag
        assert reader.topics["/selfpose/color/image_raw"].msgcount == 10


def test_sigterm_closes_the_bag_without_loss(tmp_path):
    bag = tmp_path / "bag"
    assert _run_writer(bag, "mcap", 5, "sigterm") == 128 + signal.SIGTERM
    assert not list(bag.glob("*.partial"))
    with Recording(bag) as rec:
        assert len(rec) == 6


def _write(bag: Path, rng: np.random.Generator, n: int) -> Path:
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(bag, segment_frames=100) as w:
        w.write_static_tf("world", "table", np.eye(4))
        for i in range(n):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i,
                                depth=np.ones((24, 32), np.float32), T_world_cam=np.eye(4)))
    return bag


def test_truncated_mcap_salvages_complete_messages(tmp_path, rng):
    bag = _write(tmp_path / "bag", rng, 6)
    f = next(bag.glob("*.mcap"))
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(RecordingError, match="corrupt or truncated"):
        Recording(bag)
    (bag / "metadata.yaml").unlink()  # like a killed `ros2 bag record`
    with pytest.raises(RecordingError, match=r"no metadata.yaml but storage files \['bag_0.mcap'\]: "
                                             r"`selfpose recover .*bag` rebuilds it"):
        Recording(bag)
    report = recover_bag(bag)
    assert report.dropped_bytes > 0 and (bag / f"{f.name}.unclosed").exists()
    with Recording(bag) as rec:
        assert 3 <= len(rec) < 6
        assert rec[0].rgb.shape == (24, 32, 3)


def test_split_bag_without_metadata_points_to_recover_which_repairs_it(tmp_path, rng):
    bag = tmp_path / "bag"
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(bag, segment_frames=2) as w:
        for i in range(5):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i,
                                T_world_cam=np.eye(4)))
    (bag / "metadata.yaml").unlink()
    with pytest.raises(RecordingError, match=r"storage files \['bag_0.mcap', 'bag_1.mcap', 'bag_2.mcap'\]: "
                                             r"`selfpose recover"):
        Recording(bag)
    assert main(["recover", str(bag)]) == 0
    with Recording(bag) as rec:
        assert len(rec) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="not a rosbag2 directory"):
        Recording(tmp_path / "empty")


def test_unsupported_serialization_format_is_named_as_such(tmp_path, rng):
    bag = _write(tmp_path / "bag", rng, 2)
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("serialization_format: cdr", "serialization_format: ros1"))
    with pytest.raises(RecordingError, match=r"unsupported by selfpose's reader .*ros1.*CDR messages") as info:
        Recording(bag)
    assert "corrupt" not in str(info.value)


def test_salvage_of_a_complete_file_finds_everything(tmp_path, rng):
    bag = _write(tmp_path / "bag", rng, 3)
    s = salvage_mcap(next(bag.glob("*.mcap")))
    assert s.complete and len(s.messages) == 3 * 4 + 1
    assert {c[1] for c in s.channels.values()} >= {"/tf", "/tf_static", "/selfpose/color/image_raw"}


def test_recover_refuses_non_bags(tmp_path):
    with pytest.raises(RecordingError, match="does not exist"):
        recover_bag(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(RecordingError, match="no .mcap or .db3"):
        recover_bag(tmp_path / "d")


def test_recover_regenerates_metadata_of_a_sqlite3_bag(tmp_path, rng):
    bag = tmp_path / "bag"
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(bag, storage="sqlite3", segment_frames=2) as w:
        for i in range(5):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i,
                                T_world_cam=np.eye(4)))
    (bag / "metadata.yaml").unlink()
    report = recover_bag(bag)
    assert report.files == ["bag_0.db3", "bag_1.db3", "bag_2.db3"] and report.topics["/tf"] == 5
    with Recording(bag) as rec:
        assert len(rec) == 5


def _open_copy(tmp_path: Path, rng: np.random.Generator, n: int, segment_frames: int) -> Path:
    """A bag as a killed recorder leaves it: a copy taken while the writer is open after ``n`` frames."""
    K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(tmp_path / "live", segment_frames=segment_frames) as w:
        for i in range(n):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=10**18 + i,
                                T_world_cam=np.eye(4)))
        shutil.copytree(tmp_path / "live", tmp_path / "bag")
    return tmp_path / "bag"


def _snapshot(bag: Path) -> dict[str, bytes]:
    return {str(p.relative_to(bag)): p.read_bytes() for p in sorted(bag.rglob("*")) if p.is_file()}


def test_recover_with_no_complete_message_exits_2_and_changes_nothing(tmp_path, rng, capsys):
    """A run killed before its first frame reached the disk: only the start of the MCAP header exists."""
    bag = _open_copy(tmp_path, rng, 1, segment_frames=10)
    partial = next(bag.glob("*.partial/*.mcap"))
    partial.write_bytes(partial.read_bytes()[:30])
    before = _snapshot(bag)
    assert main(["recover", str(bag)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"selfpose recover: error: cannot recover {bag}: its storage files "
                          "['segment_0.partial/segment_0.partial.mcap'] hold no complete message (")
    assert "nothing to recover; the bag is unchanged" in err
    assert _snapshot(bag) == before


def test_recover_stopped_after_moving_a_salvage_in_does_not_duplicate_it(tmp_path, rng):
    """`recover` killed between moving the salvaged segment in and removing its partial: run again, every frame
    comes once."""
    bag = _open_copy(tmp_path, rng, 6, segment_frames=4)
    partial = next(bag.glob("*.partial"))
    saved = tmp_path / "saved"
    shutil.copytree(bag, saved)
    assert main(["recover", str(bag)]) == 0
    assert (bag / "bag_1.mcap").exists()
    shutil.copytree(saved / partial.name, partial)  # the state of the interrupted recover
    shutil.copy2(saved / "metadata.yaml", bag / "metadata.yaml")
    assert main(["recover", str(bag)]) == 0
    assert not list(bag.glob("*.partial"))
    assert sorted(p.name for p in bag.glob("*.mcap")) == ["bag_1.mcap", "live_0.mcap"]  # the copy kept its names
    with Recording(bag) as rec:
        assert rec.stamps_ns.tolist() == [10**18 + i for i in range(6)]


def test_recover_removes_temporary_files_of_killed_runs_only(tmp_path, rng):
    bag = _open_copy(tmp_path, rng, 6, segment_frames=4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = [f".live_1.recover{dead}.mcap", f".metadata.recover{dead}.yaml", f"metadata.yaml.tmp{dead}"]
    for name in stale:
        (bag / name).write_bytes(b"left by a killed run")
    (bag / f"..live_1.recover{dead}.salvage{dead}").mkdir()
    live = bag / f".live_1.recover{os.getppid()}.mcap"  # a run still going: not touched
    live.write_bytes(b"in use")
    report = recover_bag(bag)
    assert sorted(p.name for p in bag.iterdir() if p.name.startswith(".") or ".tmp" in p.name) == [live.name]
    assert report.topics["/selfpose/color/image_raw"] == 6
