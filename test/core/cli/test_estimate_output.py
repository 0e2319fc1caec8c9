"""`selfpose estimate` keeps what it wrote: SIGTERM closes the bag (the writing happens in a worker thread), after
kill -9 `selfpose recover` salvages every flushed frame; a run that wrote nothing exits 2 with the reason."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from selfpose_core.cli import estimate as estimate_cli
from selfpose_core.cli.main import main
from selfpose_core.data.image_codec import array_to_image_msg, intrinsics_to_camera_info
from selfpose_core.data.recording_writer import BagWriter, RecordingWriter
from selfpose_core.types import CameraIntrinsics, Frame, PoseEstimate

ROOT = Path(__file__).resolve().parents[3]
N_FRAMES = 40
STAMPS = [10**18 + i * 10**8 for i in range(N_FRAMES)]

# `selfpose estimate` with a stand-in model that takes 0.1 s a frame and notes each call in a progress file
HARNESS = textwrap.dedent("""
    import sys, time
    import numpy as np
    import selfpose_core.cli.estimate as est
    from selfpose_core.cli.main import main
    from selfpose_core.types import PoseEstimate
    progress = open(sys.argv[1], "a", buffering=1)
    class Model:
        def estimate(self, frame):
            progress.write(f"{frame.stamp_ns}\\n")
            time.sleep(0.1)
            return [PoseEstimate("box", np.eye(4), 0.9, 1)]
    est.load_estimator = lambda *a, **k: Model()
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 40-frame recording (32x24) and a bundle directory without weights (the harness replaces the model)."""
    root = tmp_path_factory.mktemp("estimate_output")
    K = CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)
    with RecordingWriter(root / "bag") as w:
        for s in STAMPS:
            w.write_frame(Frame(rgb=np.zeros((24, 32, 3), np.uint8), K=K, stamp_ns=s, T_world_cam=np.eye(4)))
    (root / "model").mkdir()
    (root / "model" / "bundle.yaml").write_text("{}\n")
    return root


def _poses(bag: Path) -> list[int]:
    """Log times of the /object_poses messages of ``bag``."""
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/object_poses"]
        return sorted(t for _, t, _ in reader.messages(conns))


def _start_and_signal(scene: Path, tmp_path: Path, sig: int) -> tuple[subprocess.Popen, Path, int]:
    """Start the estimate harness, send ``sig`` once 10 frames are written; returns the process, the output bag and
    the frames certainly written before the signal."""
    out, progress = tmp_path / "poses", tmp_path / "progress.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HARNESS, str(progress), "estimate", "--bag", str(scene / "bag"),
                             "--model", str(scene / "model"), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if progress.exists() and len(progress.read_text().split()) >= 11:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    called = len(progress.read_text().split())
    proc.send_signal(sig)
    # offline, frame k is submitted only after frame k-1 was written and flushed: called - 1 frames are in the bag
    return proc, out, called - 1


def test_sigterm_keeps_every_frame_written(scene, tmp_path):
    proc, out, written = _start_and_signal(scene, tmp_path, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert not list(out.glob("*.partial"))  # closed: no recover needed
    stamps = _poses(out)
    assert written <= len(stamps) < N_FRAMES
    assert stamps == STAMPS[:len(stamps)]  # a prefix: nothing lost, no gap


def test_kill9_then_recover_keeps_every_flushed_frame(scene, tmp_path, capsys):
    proc, out, written = _start_and_signal(scene, tmp_path, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert main(["recover", str(out)]) == 0
    stamps = _poses(out)
    assert written <= len(stamps) < N_FRAMES
    assert stamps == STAMPS[:len(stamps)]


class _Model:
    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        return [PoseEstimate("box", np.eye(4), 0.9, 1)]


def test_output_is_written_in_closed_segments(scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(estimate_cli, "load_estimator", lambda *a, **k: _Model())
    out = tmp_path / "out"
    assert main(["estimate", "--bag", str(scene / "bag"), "--model", str(scene / "model"), "--out", str(out),
                 "--segment-frames", "16"]) == 0
    assert sorted(p.name for p in out.glob("*.mcap")) == ["out_0.mcap", "out_1.mcap", "out_2.mcap"]
    assert _poses(out) == STAMPS


class _Failing:
    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        raise ValueError("crop size 0")


def test_every_frame_failing_exits_2_with_the_reason(scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(estimate_cli, "load_estimator", lambda *a, **k: _Failing())
    rc = main(["estimate", "--bag", str(scene / "bag"), "--model", str(scene / "model"), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("selfpose estimate: error: every frame failed (40 of 40)") and "crop size 0" in err[-1]


def test_negative_stamps_are_refused_per_frame_not_a_crash(tmp_path, monkeypatch, capsys):
    """Images whose header stamps are negative (log times fine): each frame's output is refused with the log time,
    the writer is not left broken (it raised OverflowError inside the MCAP chunk before)."""
    K = CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)
    with BagWriter(tmp_path / "bag", segment_messages=None) as bag:
        for i in range(2):
            log_ns = 10**18 + i * 10**8
            img = array_to_image_msg(np.zeros((24, 32, 3), np.uint8), "rgb8", log_ns, "camera")
            img.header.stamp.sec = -5 + i
            bag.write("/selfpose/color/image_raw", "sensor_msgs/msg/Image", img, log_ns)
            bag.write("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo",
                      intrinsics_to_camera_info(K, log_ns, "camera"), log_ns)
    monkeypatch.setattr(estimate_cli, "load_estimator", lambda *a, **k: _Model())
    (tmp_path / "model").mkdir()
    rc = main(["estimate", "--bag", str(tmp_path / "bag"), "--model", str(tmp_path / "model"), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "every frame failed (2 of 2)" in err and "log time -" in err
