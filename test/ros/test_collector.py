"""collect_sequence's logic: keyframe choice on a simulated drive (jitter, late and missing TF, out-of-order
images), the bag it writes, view coverage, disk and overwrite checks, and Ctrl-C / SIGTERM mid-run."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from selfpose_core.data.keyframes import KeyframeConfig, SequenceCollector, ViewCoverage, relative_motion
from selfpose_core.data.recording import Recording
from selfpose_core.data.tf_buffer import TfBuffer
from selfpose_core.errors import ConfigError, RecordingError
from selfpose_core.types import Frame

REPO = Path(__file__).resolve().parents[2]


def run_drive(drive, out: Path, config: KeyframeConfig, out_of_order: tuple[int, ...] = ()):
    """Feed images and TF in arrival order; TF lookups see only what has arrived (no extrapolation)."""
    tf = TfBuffer(max_extrapolation_ns=0)
    tf.add_transform("base_link", "camera_optical", 0, drive.T_base_cam, static=True)

    def lookup(stamp: int):  # like the node's tf2 lookup: None while the transform is not available
        try:
            T, ok = tf.lookup_valid("odom", "camera_optical", np.array([stamp]))
        except RecordingError:  # odom not connected yet
            return None
        return T[0] if ok[0] else None

    events = [(int(a), 0, i) for i, a in enumerate(drive.tf_arrival)]
    events += [(int(a), 1, i) for i, a in enumerate(drive.image_arrival)]
    for k in out_of_order:  # a re-sent old image arrives late
        events.append((int(drive.image_arrival[k]) + 400_000_000, 1, k))
    events.sort()
    written = []
    collector = SequenceCollector(out, lookup, config, free_bytes_fn=lambda p: 10**12)
    with collector:
        for _, kind, i in events:
            if kind == 0:
                tf.add_transform("odom", "base_link", int(drive.tf_stamps[i]), drive.T_odom_base[i])
            else:
                rgb, depth = drive.image(i)
                written += collector.add_frame(Frame(rgb=rgb, K=drive.K, stamp_ns=int(drive.image_stamps[i]),
                                                     depth=depth, frame_id="camera_optical", index=i))
    return collector, written


def expected_keyframes(drive, config: KeyframeConfig) -> list[int]:
    """The keyframes worked out here from the drive alone: the odometry samples interpolated at each image stamp
    (scipy's slerp, linear translation), then a greedy pass keeping a frame that moved or turned enough since the
    last kept one. Only images inside the odometry's time range count (the collector never extrapolates)."""
    from scipy.spatial.transform import Rotation, Slerp

    t = drive.tf_stamps.astype(np.float64)
    stamps = np.sort(drive.image_stamps[(drive.image_stamps >= t[0]) & (drive.image_stamps <= t[-1])])
    rot = Slerp(t, Rotation.from_matrix(drive.T_odom_base[:, :3, :3]))(stamps.astype(np.float64)).as_matrix()
    pos = np.stack([np.interp(stamps, t, drive.T_odom_base[:, i, 3]) for i in range(3)], 1)
    cam_R = rot @ drive.T_base_cam[:3, :3]
    cam_t = np.einsum("nij,j->ni", rot, drive.T_base_cam[:3, 3]) + pos
    kept = [0]
    for i in range(1, len(stamps)):
        j = kept[-1]
        moved = np.linalg.norm(cam_t[i] - cam_t[j])
        turned = np.degrees(np.arccos(np.clip((np.trace(cam_R[j].T @ cam_R[i]) - 1) / 2, -1, 1)))
        if moved >= config.min_translation_m or turned >= config.min_rotation_deg:
            kept.append(i)
    return [int(stamps[i]) for i in kept]


def test_keyframes_follow_motion_thresholds_on_a_jittery_drive(drive, tmp_path):
    cfg = KeyframeConfig(min_translation_m=0.10, min_rotation_deg=8.0, tf_wait_s=0.3)
    collector, written = run_drive(drive, tmp_path / "bag", cfg, out_of_order=(30, 60))
    want = expected_keyframes(drive, cfg)
    assert collector.stats.keyframe_stamps == want == sorted(written)
    # 0.3 s of images before TF starts, 0.25 s after it ends: given up as "no TF", never guessed
    lo, hi = drive.tf_stamps[0], drive.tf_stamps[-1]
    outside = int(np.sum((drive.image_stamps < lo) | (drive.image_stamps > hi)))
    assert collector.stats.no_tf == outside > 0
    assert collector.stats.out_of_order == 2
    assert collector.stats.received == len(drive.image_stamps) + 2
    # the camera moves 2*pi*1 m per 20 s; keyframes every >= 10 cm (8 deg is ~14 cm of arc here)
    moved = [relative_motion(a, b) for a, b in zip(drive.camera_pose(np.array(want[:-1])),
                                                     drive.camera_pose(np.array(want[1:])))]
    assert all(t >= 0.1 or r >= 8.0 for t, r in moved)
    assert 10 < len(want) < 40


def test_bag_holds_exactly_the_keyframes_with_their_poses_and_images(drive, tmp_path):
    cfg = KeyframeConfig(min_translation_m=0.15, min_rotation_deg=30.0, tf_wait_s=0.3)
    collector, _ = run_drive(drive, tmp_path / "bag", cfg)
    stamps = collector.stats.keyframe_stamps
    with Recording(tmp_path / "bag") as rec:
        assert len(rec) == len(stamps) and rec.skipped == []
        assert rec.stamps_ns.tolist() == stamps
        np.testing.assert_allclose(rec.poses, drive.camera_pose(np.array(stamps)), atol=2e-4)
        index = {int(s): i for i, s in enumerate(drive.image_stamps)}
        for frame in rec:
            rgb, depth = drive.image(index[frame.stamp_ns])
            np.testing.assert_array_equal(frame.rgb, rgb)
            np.testing.assert_allclose(frame.depth, depth, atol=5.1e-4)  # 16UC1 millimetres
            assert frame.depth[0, 0] == 0.0  # invalid stays invalid
            assert frame.K == drive.K


def test_view_coverage_of_a_circle(drive):
    full, half = ViewCoverage(bins=36), ViewCoverage(bins=36)
    stamps = drive.image_stamps[0] + np.arange(72) * 20 * 10**9 // 72  # one turn (20 s), 5 deg apart
    for k, T in enumerate(drive.camera_pose(stamps)):
        full.add(T)
        if k < 36:
            half.add(T)
    s = full.summary()
    np.testing.assert_allclose(s.centre, drive.centre, atol=1e-6)  # where all optical axes meet
    assert s.sectors_seen == 36 and s.azimuth_fraction == 1.0
    want_elev = math.degrees(math.atan2(0.4, 1.0))
    assert s.elevation_deg == pytest.approx((want_elev, want_elev), abs=1e-6)
    assert s.distance_m == pytest.approx((math.hypot(1.0, 0.4),) * 2)
    assert half.summary().sectors_seen == 18
    assert "azimuth 50% (18/36 sectors)" in str(half.summary())
    one = ViewCoverage()
    one.add(drive.camera_pose(stamps[0]))
    assert one.summary().sectors_seen == 1  # a single view: centre assumed 1 m ahead


def test_refuses_existing_output_and_low_disk(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(RecordingError, match="exists already"):
        SequenceCollector(tmp_path / "taken", lambda s: None, free_bytes_fn=lambda p: 10**12)
    with pytest.raises(RecordingError, match="GB free"):
        SequenceCollector(tmp_path / "new", lambda s: None, KeyframeConfig(min_free_gb=2.0),
                          free_bytes_fn=lambda p: 10**9)
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="min_translation_m"):
        KeyframeConfig(min_translation_m=-1.0)


def test_disk_filling_up_stops_and_closes_a_readable_bag(drive, tmp_path):
    free = iter([10**12] + [10**12] * 2 + [10**6] * 100)
    cfg = KeyframeConfig(min_translation_m=0.0, min_rotation_deg=0.0, disk_check_every=3)
    tf = TfBuffer()
    for s in drive.tf_stamps:
        tf.add_transform("odom", "camera", int(s), drive.camera_pose(int(s)))
    collector = SequenceCollector(tmp_path / "bag", lambda s: tf.lookup("odom", "camera", s),
                                  cfg, free_bytes_fn=lambda p: next(free))
    with pytest.raises(RecordingError, match="stopped after 9 keyframes"):
        for i in range(10, 40):
            rgb, depth = drive.image(i)
            collector.add_frame(Frame(rgb=rgb, K=drive.K, stamp_ns=int(drive.image_stamps[i]), index=i))
    assert collector.closed
    with Recording(tmp_path / "bag") as rec:
        assert len(rec) == 9  # checks at start and after keyframes 3 and 6 passed, after 9 failed


SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from selfpose_core.cli.signals import StopSignals
    from selfpose_core.data.keyframes import KeyframeConfig, SequenceCollector
    from selfpose_core.types import CameraIntrinsics, Frame
    K = CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)
    def pose(i):
        T = np.eye(4); T[0, 3] = 0.1 * i; return T
    collector = SequenceCollector(sys.argv[1], pose_lookup=lambda s: pose(s // 10**8),
                                  config=KeyframeConfig(min_translation_m=0.05, min_free_gb=0.0),
                                  segment_frames=4)
    try:
        with StopSignals(), collector:  # the entry point's handlers, as in collect_node.main
            for i in range(100000):
                rgb = np.full((24, 32, 3), i % 256, np.uint8)
                n = len(collector.add_frame(Frame(rgb=rgb, K=K, stamp_ns=i * 10**8, index=i)))
                if n:
                    print("KEYFRAME", collector.stats.keyframes, flush=True)
                time.sleep(0.01)
    finally:
        print("CLOSED", collector.stats.keyframes, flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_leaves_a_complete_readable_bag(tmp_path, sig):
    bag = tmp_path / "bag"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(bag)], stdout=subprocess.PIPE, text=True, env=env,
                            stderr=subprocess.PIPE)
    reported = 0
    for line in proc.stdout:
        if line.startswith("KEYFRAME"):
            reported = int(line.split()[1])
            if reported >= 10:  # several closed segments and an open one
                proc.send_signal(sig)
                break
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    closed = int(rest.split("CLOSED")[1].split()[0])
    assert proc.returncode in (-sig, 128 + sig), proc.stderr.read()
    assert closed >= reported
    assert not list(bag.glob("*.partial"))
    with Recording(bag) as rec:
        assert len(rec) == closed
        assert [int(f.rgb[0, 0, 0]) for f in rec] == [i % 256 for i in range(closed)]
