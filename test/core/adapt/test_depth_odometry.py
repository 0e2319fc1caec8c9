"""Depth odometry: the pose graph of pairwise depth registrations undoes simulated wheel-odometry drift."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.adapt.depth_odometry import DepthOdometryConfig, track_depth
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.data.sim.generate import SimConfig, simulate
from selfpose_core.data.sim.odometry import OdometryNoise
from selfpose_core.data.sim.trajectories import TEST_TRAJECTORIES
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import rotation_angle


@pytest.fixture(scope="module")
def drifting_loop(tmp_path_factory):
    """A 48-frame loop (7.5 deg apart) around three objects, 320x240 depth, twice the default drift."""
    root = tmp_path_factory.mktemp("depth_odometry") / "sim"
    cfg = SimConfig(seed=4, objects=["tin_can", "cereal_box", "mug"], width=320, height=240, fx=285.0, fy=285.0,
                    frames=48, test_frames=1, tests=TEST_TRAJECTORIES[:1], n_clutter=1,
                    odometry=OdometryNoise(trans_per_loop_m=0.03, yaw_per_loop_deg=1.6, yaw_bias_per_loop_deg=1.0))
    simulate(root, cfg, progress=False)
    rec = Recording(root / "recording")
    truth = {s.im_id: s.frame.T_world_cam for s in
             BopDataset(root / "bop", "train_loop").samples(1, load_depth=False, load_masks=False)}
    yield rec, np.stack([truth[i] for i in range(len(rec))])
    rec.close()


def _errors(T: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.linalg.norm(T[:, :3, 3] - truth[:, :3, 3], axis=1)
    r = np.degrees([rotation_angle(a[:3, :3], b[:3, :3]) for a, b in zip(T, truth)])
    return t, r


def test_pose_graph_removes_drift(drifting_loop):
    rec, truth = drifting_loop
    depth = {i: rec[i].depth for i in range(len(rec))}
    cfg = DepthOdometryConfig(stride=2, max_angle_deg=25.0)
    calls = []
    odo = track_depth(depth.get, range(len(rec)), rec.poses, rec.intrinsics, cfg,
                      lambda done, total: calls.append((done, total)))
    assert odo.edges >= len(rec) and calls[-1][0] == calls[-1][1]
    np.testing.assert_allclose(odo.corrections[0], np.eye(4), atol=1e-9)  # gauge: the first frame is kept
    t0, r0 = _errors(rec.poses, truth)
    t1, r1 = _errors(odo.corrections @ rec.poses, truth)
    assert t0.max() > 0.04 and r0.max() > 1.0  # the loop really drifts (its closure is centimetres off) ...
    assert t1.max() < 0.15 * t0.max() and np.median(t1) < 0.005  # ... and the pose graph takes most of it out
    assert r1.max() < 0.3 * r0.max()
    assert not odo.failed


def test_frames_without_depth_keep_the_previous_correction(drifting_loop):
    rec, _ = drifting_loop
    depth = {i: rec[i].depth for i in range(len(rec))}
    depth[5] = None
    cfg = DepthOdometryConfig(stride=4, voxel=0.008, max_angle_deg=25.0)
    odo = track_depth(depth.get, range(0, 12), rec.poses, rec.intrinsics, cfg)
    np.testing.assert_allclose(odo.corrections[5], odo.corrections[4])
    np.testing.assert_allclose(odo.corrections[12:], odo.corrections[11:12].repeat(len(rec) - 12, 0))
    single = track_depth(depth.get, [3], rec.poses, rec.intrinsics, cfg)  # nothing to pair: identity
    assert single.edges == 0 and np.allclose(single.corrections, np.eye(4))


def test_an_implausible_graph_falls_back_to_the_odometry(drifting_loop):
    rec, _ = drifting_loop
    cfg = DepthOdometryConfig(stride=4, voxel=0.008, max_angle_deg=25.0, max_correction=1e-4)
    odo = track_depth(lambda i: rec[i].depth, range(0, 8), rec.poses, rec.intrinsics, cfg)
    assert odo.failed and odo.edges > 0 and np.allclose(odo.corrections, np.eye(4))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="depth_odometry.voxel"):
        DepthOdometryConfig(voxel=0).validate()
    with pytest.raises(ConfigError, match="min_fitness"):
        DepthOdometryConfig(min_fitness=2).validate()


def test_consensus_stage_corrects_the_drift_from_depth(drifting_loop, tmp_path):
    """The multiview_consensus stage with ``drift: depth``: cameras corrected first, registered objects held, and
    the per-frame pseudo poses come out far better than through the drifting odometry."""
    from selfpose_core.adapt.consensus import ConsensusConfig, MultiviewConsensus
    from selfpose_core.adapt.context import AdaptContext
    from selfpose_core.eval.adaptation import camera_errors, consensus_errors
    from selfpose_core.mesh.objects_config import load_objects_config
    from selfpose_core.models.bundle import ModelBundle

    from .conftest import fake_estimates, tiny_bundle

    rec, _ = drifting_loop
    root = rec.path.parent
    objects = load_objects_config(root / "objects.yaml")
    bundle = ModelBundle.load(tiny_bundle(root / "objects.yaml", tmp_path / "model"))
    estimates = fake_estimates(root / "bop", 0.004, 2.0, 7, 0)
    errors = {}
    for drift in ("depth", "weight"):
        cfg = ConsensusConfig(drift=drift, refine_iterations=10, refine_batch=8, crop_size=24,
                              depth_odometry=DepthOdometryConfig(stride=2, max_angle_deg=25.0))
        ctx = AdaptContext(objects, rec, bundle, tmp_path / drift, root / "objects.yaml", progress=False)
        res = MultiviewConsensus(estimates).run(ctx, cfg)
        errors[drift] = consensus_errors(ctx.pseudo, objects, BopDataset(root / "bop", "train_loop"))
        if drift == "depth":
            assert res.details["depth_odometry"]["edges"] > len(rec) and not res.details["depth_odometry"]["failed"]
            assert res.details["depth_odometry"]["max_camera_shift_m"] > 0.02
            train = BopDataset(root / "bop", "train_loop")
            before, after = camera_errors(rec.poses, train), camera_errors(ctx.pseudo.T_world_cam, train)
            assert after["t_cm_max"] < 0.15 * before["t_cm_max"] and after["r_deg_max"] < 0.3 * before["r_deg_max"]
    for name in errors["depth"]:
        assert errors["depth"][name]["frame_t_cm_median"] < 0.6, errors
        assert errors["depth"][name]["frame_t_cm_median"] < 0.5 * errors["weight"][name]["frame_t_cm_median"]
