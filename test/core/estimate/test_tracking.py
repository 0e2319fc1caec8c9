"""PoseTracker on a rendered table scene seen by a moving camera: the true poses on every frame from one search,
a moved object found again, the plain estimator without a camera pose, the same output for the same sequence."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.errors import ConfigError
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.estimate.tracking import PoseTracker, TrackingConfig
from selfpose_core.geometry.se3 import invert
from selfpose_core.types import Frame


@pytest.fixture(scope="module")
def drive(scene, render_scene, look_at):
    """Six frames of a camera circling the table, and the same drive after the mug was moved at frame 3."""
    models, T_world_obj, _ = scene
    cams = [look_at(np.array([0.9 * np.cos(a), 0.9 * np.sin(a), 0.6]), np.zeros(3))
            for a in np.linspace(-2.2, -1.2, 6)]
    moved = [T.copy() for T in T_world_obj]
    moved[1][:3, 3] += (0.0, -0.1, 0.0)
    still, changed = [], []
    for i, T_wc in enumerate(cams):
        rgb, depth, _ = render_scene(models, T_world_obj, T_wc, clutter=True)
        still.append(Frame(rgb=rgb, K=scene[2][0][0].K, depth=depth, T_world_cam=T_wc, index=i))
        if i >= 3:
            rgb, depth, _ = render_scene(models, moved, T_wc, clutter=True)
            changed.append(Frame(rgb=rgb, K=scene[2][0][0].K, depth=depth, T_world_cam=T_wc, index=i))
        else:
            changed.append(still[-1])
    return still, changed, moved


def _errors(models, out, T_world_obj, T_world_cam, pose_errors):
    by_name = {e.object_name: e for e in out}
    return {m.name: pose_errors(m, by_name[m.name].T_cam_obj, invert(T_world_cam) @ T_world_obj[k])
            for k, m in enumerate(models) if m.name in by_name}


def test_tracker_returns_the_true_poses_on_every_frame_from_one_search(scene, drive, random_bundle, pose_errors):
    models, T_world_obj, _ = scene
    tracker = PoseTracker(PoseEstimator(random_bundle), TrackingConfig(redetect_every=100))
    for frame in drive[0]:
        errs = _errors(models, tracker.estimate(frame), T_world_obj, frame.T_world_cam, pose_errors)
        assert set(errs) == {m.name for m in models}
        for name, (t_err, r_err) in errs.items():
            assert t_err < 0.001 and r_err < 0.1, (frame.index, name, t_err, r_err)
    assert tracker.searches == 1


def test_a_moved_object_fails_verification_and_is_found_again(scene, drive, random_bundle, pose_errors):
    models, T_world_obj, _ = scene
    _, changed, moved = drive
    tracker = PoseTracker(PoseEstimator(random_bundle), TrackingConfig(redetect_every=100))
    outs = [tracker.estimate(frame) for frame in changed]
    assert "mug" not in {e.object_name for e in outs[3]}  # the old pose no longer verifies: not published
    assert tracker.searches == 2  # ... and the next frame searched again
    for out, frame in zip(outs[4:], changed[4:]):
        errs = _errors(models, out, moved, frame.T_world_cam, pose_errors)
        assert set(errs) == {m.name for m in models}
        assert all(t < 0.001 and r < 0.1 for t, r in errs.values()), errs


def test_tracker_is_the_plain_estimator_without_a_camera_pose(scene, drive, random_bundle):
    est = PoseEstimator(random_bundle)
    tracker = PoseTracker(est)
    frame = drive[0][1]
    plain = Frame(rgb=frame.rgb, K=frame.K, depth=frame.depth)
    a, b = tracker.estimate(plain), est.estimate(plain)
    assert [e.object_name for e in a] == [e.object_name for e in b]
    assert all(np.array_equal(x.T_cam_obj, y.T_cam_obj) for x, y in zip(a, b))
    assert tracker.searches == 0


def test_the_same_sequence_gives_the_same_poses_after_reset(drive, random_bundle):
    tracker = PoseTracker(PoseEstimator(random_bundle), TrackingConfig(redetect_every=2))
    runs = []
    for _ in range(2):
        tracker.reset()
        runs.append([tracker.estimate(f) for f in drive[0][:4]])
    for a, b in zip(*runs):
        assert [e.object_name for e in a] == [e.object_name for e in b]
        assert all(np.array_equal(x.T_cam_obj, y.T_cam_obj) and x.score == y.score for x, y in zip(a, b))


def test_tracking_settings_are_checked(random_bundle):
    est = PoseEstimator(random_bundle)
    with pytest.raises(ConfigError, match="smoothing"):
        PoseTracker(est, TrackingConfig(smoothing=0.0))
    with pytest.raises(ConfigError, match="table-top search"):
        PoseTracker(PoseEstimator(random_bundle, config=EstimatorConfig(use_depth=False)))
