"""OpenCV PnP wrappers: exact recovery on noiseless data, robustness to 30% outliers, clear input errors."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.pnp import PnPResult, solve_pnp, solve_pnp_ransac
from selfpose_core.geometry.projection import project
from selfpose_core.geometry.se3 import make_T, rotation_angle, transform_points
from selfpose_core.types import CameraIntrinsics

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])


def scene(rng: np.random.Generator, n: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T = make_T(Rotation.random(random_state=rng).as_matrix(),
               np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1), rng.uniform(0.5, 2.0)]))
    X = rng.uniform(-0.1, 0.1, (n, 3))
    return T, X, project(K, transform_points(T, X))


def assert_pose_close(T_est: np.ndarray, T: np.ndarray, tol: float) -> None:
    assert rotation_angle(T_est, T) < tol
    assert np.abs(T_est[:3, 3] - T[:3, 3]).max() < tol


def test_noiseless_recovery(rng):
    for _ in range(10):
        T, X, uv = scene(rng)
        res = solve_pnp(X, uv, K)
        assert isinstance(res, PnPResult) and res.success
        assert_pose_close(res.T_cam_obj, T, 1e-6)
        assert res.reprojection_error < 1e-6 and len(res.inliers) == len(X)
        res = solve_pnp_ransac(X, uv, CameraIntrinsics.from_K(K, 640, 480))
        assert res.success
        assert_pose_close(res.T_cam_obj, T, 1e-6)
        assert res.inliers.dtype == np.int64 and len(res.inliers) == len(X)


def test_ransac_with_30_percent_outliers(rng):
    for _ in range(10):
        T, X, uv = scene(rng, 100)
        outlier = rng.permutation(100) < 30
        uv = uv.copy()
        uv[outlier] = rng.uniform([0, 0], [640, 480], (30, 2))
        far = np.linalg.norm(uv[outlier] - project(K, transform_points(T, X[outlier])), axis=1) > 3.0
        res = solve_pnp_ransac(X, uv, K)
        assert res.success
        assert_pose_close(res.T_cam_obj, T, 1e-6)  # inliers are noiseless, LM refinement makes it exact
        assert set(np.flatnonzero(~outlier)) <= set(res.inliers.tolist())
        assert not set(np.flatnonzero(outlier)[far]) & set(res.inliers.tolist())
        again = solve_pnp_ransac(X, uv, K)
        np.testing.assert_array_equal(again.T_cam_obj, res.T_cam_obj)  # repeatable


def test_ransac_with_pixel_noise_and_outliers(rng):
    T, X, uv = scene(rng, 200)
    uv = uv + rng.normal(scale=0.5, size=uv.shape)
    uv[:60] = rng.uniform([0, 0], [640, 480], (60, 2))
    res = solve_pnp_ransac(X, uv, K, reprojection_threshold=2.0)
    assert res.success and res.reprojection_error < 1.0
    assert rotation_angle(res.T_cam_obj, T) < np.deg2rad(2.0)
    assert np.linalg.norm(res.T_cam_obj[:3, 3] - T[:3, 3]) < 0.02


def test_failure_on_pure_noise(rng):
    X = rng.uniform(-0.1, 0.1, (30, 3))
    uv = rng.uniform([0, 0], [640, 480], (30, 2))
    res = solve_pnp_ransac(X, uv, K, reprojection_threshold=0.5, min_inliers=15)
    assert not res.success
    np.testing.assert_array_equal(res.T_cam_obj, np.eye(4))
    assert len(res.inliers) == 0 and res.reprojection_error == np.inf


def test_input_errors_name_the_argument():
    with pytest.raises(ShapeError, match="at least 4"):
        solve_pnp_ransac(np.zeros((3, 3)), np.zeros((3, 2)), K)
    with pytest.raises(ShapeError, match="pts2d"):
        solve_pnp(np.zeros((6, 3)), np.zeros((5, 2)), K)
    with pytest.raises(ShapeError, match="pts3d"):
        solve_pnp(np.zeros((6, 2)), np.zeros((6, 2)), K)
    with pytest.raises(ShapeError, match="K"):
        solve_pnp(np.zeros((6, 3)), np.zeros((6, 2)), np.eye(4))
