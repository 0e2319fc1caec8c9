from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from selfpose_core.errors import ShapeError
from selfpose_core.mesh.keypoints import farthest_point_keypoints
from selfpose_core.mesh.measures import mesh_diameter


def _sphere_points(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.array([0.05, 0.08, 0.12])


def test_fps_keypoints_are_more_spread_than_random_points(rng):
    pts = _sphere_points(rng, 5000)
    kp = farthest_point_keypoints(pts, 8)
    assert kp.shape == (8, 3)
    # every keypoint is one of the input points
    assert np.all(np.min(np.linalg.norm(pts[None] - kp[:, None], axis=2), axis=1) == 0.0)
    fps_min = pdist(kp).min()
    random_mins = [pdist(pts[rng.choice(len(pts), 8, replace=False)]).min() for _ in range(200)]
    assert fps_min > np.percentile(random_mins, 99)


def test_fps_is_deterministic_and_starts_farthest_from_centroid(rng):
    pts = _sphere_points(rng, 1000)
    a = farthest_point_keypoints(pts, 8)
    b = farthest_point_keypoints(pts.copy(), 8)
    np.testing.assert_array_equal(a, b)
    far = pts[np.argmax(np.linalg.norm(pts - pts.mean(0), axis=1))]
    np.testing.assert_array_equal(a[0], far)
    np.testing.assert_array_equal(farthest_point_keypoints(pts, 3, start=5)[0], pts[5])


def test_fps_on_cube_corners_picks_all_corners():
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    inner = np.random.default_rng(1).uniform(0.2, 0.8, size=(100, 3))
    kp = farthest_point_keypoints(np.concatenate([inner, corners]), 8)
    assert {tuple(p) for p in kp} == {tuple(c) for c in corners}


def test_fps_rejects_bad_input():
    with pytest.raises(ShapeError, match="vertices"):
        farthest_point_keypoints(np.zeros((10, 2)))
    with pytest.raises(ShapeError, match="distinct"):
        farthest_point_keypoints(np.zeros((10, 3)), 3)


@pytest.mark.parametrize("n", [4, 50, 3000])
def test_diameter_equals_brute_force(rng, n):
    pts = rng.normal(size=(n, 3)) * np.array([0.1, 0.03, 0.05])
    assert mesh_diameter(pts) == pytest.approx(pdist(pts).max(), rel=1e-12)


def test_diameter_of_flat_and_collinear_point_sets(rng):
    flat = np.c_[rng.uniform(size=(500, 2)), np.zeros(500)]
    assert mesh_diameter(flat) == pytest.approx(pdist(flat).max(), rel=1e-12)
    line = np.outer(rng.uniform(size=50), [1.0, 2.0, 3.0])
    assert mesh_diameter(line) == pytest.approx(pdist(line).max(), rel=1e-12)
    assert mesh_diameter(np.zeros((1, 3))) == 0.0
