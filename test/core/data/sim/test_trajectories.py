"""Trajectories (elevation bands, look-at frames) and odometry drift."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.data.sim.odometry import OdometryNoise, base_poses, drift_poses
from selfpose_core.data.sim.trajectories import (TEST_TRAJECTORIES, TRAIN_LOOP, TrajectorySpec, elevation_deg,
                                                 look_at, make_trajectory)
from selfpose_core.errors import ConfigError

CENTER = np.array([0.0, 0.0, 0.5])


def test_look_at_is_an_optical_frame():
    T = look_at(np.array([1.0, 0.0, 1.5]), CENTER)
    R = T[:3, :3]
    assert np.allclose(R.T @ R, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    z = (CENTER - T[:3, 3]) / np.linalg.norm(CENTER - T[:3, 3])
    assert np.allclose(R[:, 2], z)
    assert R[2, 0] == pytest.approx(0.0)  # image x axis horizontal
    assert R[2, 1] < 0  # image y axis points down in the world
    X_cam = R.T @ (CENTER - T[:3, 3])
    assert np.allclose(X_cam[:2], 0.0)  # the target is on the optical axis


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_loop_stays_in_the_smot_band(seed):
    T = make_trajectory(TRAIN_LOOP, 120, CENTER, np.random.default_rng(seed))
    el = elevation_deg(T, CENTER)
    assert el.min() >= 38.0 and el.max() <= 41.0
    assert np.ptp(T[:, 2, 3]) < 0.01  # fixed camera height on the robot
    az = np.unwrap(np.arctan2(T[:, 1, 3], T[:, 0, 3]))
    assert abs(az[-1] - az[0]) == pytest.approx(2 * np.pi * 119 / 120, abs=0.1)  # one full loop
    # the camera looks at the table: its centre projects near the image centre
    X = np.einsum("nji,nj->ni", T[:, :3, :3], CENTER - T[:, :3, 3])
    assert (X[:, 2] > 0).all() and (np.hypot(X[:, 0], X[:, 1]) / X[:, 2] < 0.1).all()


@pytest.mark.parametrize("spec", TEST_TRAJECTORIES, ids=lambda s: s.name)
def test_test_trajectories_cover_their_bands(spec):
    T = make_trajectory(spec, 40, CENTER, np.random.default_rng(0))
    el = elevation_deg(T, CENTER)
    lo, hi = spec.elevation_deg
    assert el.min() >= lo - 1e-6 and el.max() <= hi + 1e-6
    assert np.ptp(el) > 0.5 * (hi - lo)
    assert spec.style != TRAIN_LOOP.style


def test_bad_specs_are_refused():
    with pytest.raises(ConfigError, match="elevation_deg"):
        TrajectorySpec("x", (50.0, 40.0), (1.0, 1.0))
    with pytest.raises(ConfigError, match="fixed camera height"):
        make_trajectory(TrajectorySpec("x", (30.0, 31.0), (0.5, 1.5), robot=True), 5, CENTER,
                        np.random.default_rng(0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_odometry_drift_is_bounded_and_nonzero(seed):
    T = make_trajectory(TRAIN_LOOP, 120, CENTER, np.random.default_rng(seed))
    D = drift_poses(T, np.random.default_rng(100 + seed))
    assert np.allclose(D[0], T[0])  # odometry starts at the true pose
    b, o = base_poses(T), base_poses(D)
    pos_err = np.linalg.norm(o[:, :2] - b[:, :2], axis=1)
    yaw_err = np.degrees(np.abs((o[:, 2] - b[:, 2] + np.pi) % (2 * np.pi) - np.pi))
    assert 0.002 < pos_err[-1] < 0.08 and pos_err.max() < 0.1
    assert 0.02 < yaw_err[-1] < 4.0
    assert np.allclose(D[:, 2, 3], T[:, 2, 3])  # planar drift: heights unchanged
    assert np.allclose(D[:, :3, :3] @ np.transpose(D[:, :3, :3], (0, 2, 1)), np.eye(3), atol=1e-9)


def test_no_noise_means_no_drift():
    T = make_trajectory(TRAIN_LOOP, 30, CENTER, np.random.default_rng(0))
    D = drift_poses(T, np.random.default_rng(0), OdometryNoise(0.0, 0.0, 0.0))
    assert np.allclose(D, T, atol=1e-9)
