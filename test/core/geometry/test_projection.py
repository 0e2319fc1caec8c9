"""Pinhole projection: numpy == torch == cv2.projectPoints, unproject inverts project, boxes, behind-camera points."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.projection import project, project_box, unproject
from selfpose_core.types import CameraIntrinsics

K = np.array([[520.0, 0.0, 319.5], [0.0, 515.0, 241.0], [0.0, 0.0, 1.0]])


def test_project_matches_opencv_and_torch(rng):
    X = rng.uniform(-1, 1, (3, 40, 3)) + np.array([0, 0, 3.0])
    uv = project(K, X)
    for i in range(3):
        ref = cv2.projectPoints(X[i], np.zeros(3), np.zeros(3), K, None)[0][:, 0]
        np.testing.assert_allclose(uv[i], ref, atol=1e-9)
    np.testing.assert_allclose(project(torch.tensor(K), torch.tensor(X)).numpy(), uv, atol=1e-12)
    intr = CameraIntrinsics.from_K(K, 640, 480)
    np.testing.assert_allclose(project(intr, X), uv)
    # points in an object frame through a pose, against cv2 with rvec/tvec
    rvec, tvec = Rotation.random(random_state=rng).as_rotvec(), np.array([0.1, -0.2, 4.0])
    Xo = rng.uniform(-0.3, 0.3, (30, 3))
    Xc = Xo @ Rotation.from_rotvec(rvec).as_matrix().T + tvec
    np.testing.assert_allclose(project(K, Xc), cv2.projectPoints(Xo, rvec, tvec, K, None)[0][:, 0], atol=1e-9)


def test_batched_intrinsics_broadcast(rng):
    Ks = np.stack([K, K * np.array([[2.0], [2.0], [1.0]])])
    X = rng.uniform(-1, 1, (2, 10, 3)) + np.array([0, 0, 3.0])
    uv = project(Ks, X)
    np.testing.assert_allclose(uv[1], project(Ks[1], X[1]))


def test_unproject_inverts_project(rng):
    X = rng.uniform(-1, 1, (50, 3)) + np.array([0, 0, 2.0])
    np.testing.assert_allclose(unproject(K, project(K, X), X[:, 2]), X, atol=1e-12)
    Xt = torch.tensor(X)
    np.testing.assert_allclose(unproject(torch.tensor(K), project(torch.tensor(K), Xt), Xt[:, 2]).numpy(), X, atol=1e-12)
    with pytest.raises(ShapeError, match="depth"):
        unproject(K, np.zeros((5, 2)), np.zeros(4))


def test_points_behind_camera_stay_finite_and_are_excluded_from_boxes():
    X = np.array([[0.1, 0.1, 1.0], [-0.1, 0.2, 2.0], [0.5, 0.5, -1.0], [0.0, 0.0, 0.0]])
    uv = project(K, X)
    assert np.all(np.isfinite(uv))
    box = project_box(K, X)
    front = project(K, X[:2])
    np.testing.assert_allclose(box, [*front.min(0), *front.max(0)])
    assert np.all(np.isnan(project_box(K, X[2:])))
    Xt = torch.tensor(X, requires_grad=True)
    project(torch.tensor(K), Xt).sum().backward()
    assert torch.isfinite(Xt.grad).all()


def test_project_box_clips_to_image(rng):
    X = np.array([[-5.0, -5.0, 1.0], [0.0, 0.0, 1.0], [0.01, 0.02, 1.0]])
    np.testing.assert_allclose(project_box(K, X, image_size=(640, 480)), [0, 0, K[0, 2] + 5.2, K[1, 2] + 10.3])
    boxes = project_box(torch.tensor(K), torch.tensor(rng.uniform(-1, 1, (4, 9, 3)) + [0, 0, 3]))
    assert boxes.shape == (4, 4) and bool((boxes[:, 2:] >= boxes[:, :2]).all())
