"""SE(3)/SO(3) operations against scipy and against each other (numpy == torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.quaternion import matrix_to_quaternion, quaternion_to_matrix
from selfpose_core.geometry.se3 import (average_rotations, average_rotations_robust, compose, interpolate, invert,
                                        make_T, project_to_so3, rotation_angle, se3_exp, se3_log, skew, so3_exp,
                                        so3_log, transform_points)


def random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    R = Rotation.random(n, random_state=rng).as_matrix()
    return make_T(R, rng.normal(size=(n, 3)))


def test_make_compose_invert_transform(rng):
    T_ab, T_bc = random_poses(rng, 5), random_poses(rng, 5)
    X = rng.normal(size=(5, 7, 3))
    T_ac = compose(T_ab, T_bc)
    np.testing.assert_allclose(transform_points(T_ac, X), transform_points(T_ab, transform_points(T_bc, X)), atol=1e-12)
    np.testing.assert_allclose(compose(T_ab, invert(T_ab)), np.broadcast_to(np.eye(4), (5, 4, 4)), atol=1e-12)
    np.testing.assert_allclose(invert(T_ab), np.linalg.inv(T_ab), atol=1e-12)
    # torch twins give the same numbers and keep gradients
    Tt = torch.tensor(T_ab, requires_grad=True)
    out = transform_points(invert(Tt), torch.tensor(X))
    np.testing.assert_allclose(out.detach().numpy(), transform_points(invert(T_ab), X), atol=1e-12)
    out.sum().backward()
    assert Tt.grad is not None and torch.isfinite(Tt.grad).all()
    # broadcasting: one pose for many point sets, and make_T broadcasting a shared rotation
    assert transform_points(T_ab[0], X).shape == (5, 7, 3)
    assert make_T(np.eye(3), np.zeros((4, 3))).shape == (4, 4, 4)


def test_shape_errors_name_the_argument():
    with pytest.raises(ShapeError, match="T_bc"):
        compose(np.eye(4), np.eye(3))
    with pytest.raises(ShapeError, match="X"):
        transform_points(np.eye(4), np.zeros((5, 2)))
    with pytest.raises(ShapeError, match="omega"):
        so3_exp(np.zeros(4))


def test_so3_exp_log_match_scipy_including_small_and_pi(rng):
    rotvec = Rotation.random(500, random_state=rng).as_rotvec()
    axis = rng.normal(size=(6, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    special = np.concatenate([axis * a for a in (0.0, 1e-9, 1e-5, np.pi - 1e-7, np.pi)])
    for w in (rotvec, special):
        R = Rotation.from_rotvec(w).as_matrix()
        np.testing.assert_allclose(so3_exp(w), R, atol=1e-12)
        np.testing.assert_allclose(so3_exp(so3_log(R)), R, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(so3_log(R), axis=-1), np.linalg.norm(w, axis=-1), atol=1e-9)
    np.testing.assert_allclose(so3_log(Rotation.from_rotvec(rotvec).as_matrix()), rotvec, atol=1e-12)
    wt = torch.tensor(rotvec)
    np.testing.assert_allclose(so3_log(so3_exp(wt)).numpy(), rotvec, atol=1e-12)
    # skew is the cross-product matrix
    a, b = rng.normal(size=(2, 10, 3))
    np.testing.assert_allclose((skew(a) @ b[..., None])[..., 0], np.cross(a, b), atol=1e-12)


def test_so3_exp_gradient_at_zero_is_skew():
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    J = torch.autograd.functional.jacobian(so3_exp, w)  # (3, 3, 3)
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = 1
        np.testing.assert_allclose(J[..., i].numpy(), skew(e).numpy(), atol=1e-15)


def test_se3_exp_log_round_trip(rng):
    xi = rng.normal(size=(200, 6))
    xi[:, 3:] *= rng.uniform(0, 3.0, (200, 1)) / np.linalg.norm(xi[:, 3:], axis=1, keepdims=True)
    xi[:5, 3:] *= 1e-7
    T = se3_exp(xi)
    np.testing.assert_allclose(se3_log(T), xi, atol=1e-10)
    np.testing.assert_allclose(se3_exp(torch.tensor(xi)).numpy(), T, atol=1e-12)
    # pure translation twist moves by v; pure rotation twist keeps the origin
    np.testing.assert_allclose(se3_exp(np.array([1.0, 2, 3, 0, 0, 0]))[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(se3_exp(np.array([0.0, 0, 0, 0.3, -0.2, 0.1]))[:3, 3], 0, atol=1e-15)


def test_quaternion_ros_order_matches_scipy(rng):
    rot = Rotation.random(300, random_state=rng)
    R = rot.as_matrix()
    q = matrix_to_quaternion(R)
    q_ref = rot.as_quat()  # scalar-last = ROS order
    q_ref *= np.where(q_ref[:, 3:] < 0, -1, 1)
    np.testing.assert_allclose(q, q_ref, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(q_ref * 3.0), R, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(torch.tensor(R)).numpy(), q, atol=1e-12)
    # rotations of exactly pi about each axis (the hard case for the trace formula)
    for i in range(3):
        e = np.zeros(3)
        e[i] = np.pi
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(so3_exp(e))), so3_exp(e), atol=1e-12)


def test_rotation_angle_matches_scipy_and_is_safe(rng):
    a, b = Rotation.random(100, random_state=rng), Rotation.random(100, random_state=rng)
    ang = rotation_angle(a.as_matrix(), b.as_matrix())
    np.testing.assert_allclose(ang, (a.inv() * b).magnitude(), atol=1e-12)
    np.testing.assert_allclose(rotation_angle(make_T(a.as_matrix(), np.zeros(3))), a.magnitude(), atol=1e-12)
    assert rotation_angle(np.eye(3)) == 0.0
    assert abs(rotation_angle(so3_exp(np.array([np.pi, 0, 0]))) - np.pi) < 1e-15
    assert abs(rotation_angle(np.eye(3), so3_exp(np.array([1e-9, 0, 0]))) - 1e-9) < 1e-20
    R = torch.tensor(a.as_matrix()[:3], requires_grad=True)
    rotation_angle(R, R.detach()).sum().backward()  # zero angle: finite (zero) gradient, no NaN
    assert torch.isfinite(R.grad).all()


def test_interpolate_matches_scipy_slerp(rng):
    r0, r1 = Rotation.random(2, random_state=rng)
    t0, t1 = rng.normal(size=(2, 3))
    T0, T1 = make_T(r0.as_matrix(), t0), make_T(r1.as_matrix(), t1)
    alphas = np.linspace(0, 1, 11)
    ref = Slerp([0, 1], Rotation.concatenate([r0, r1]))(alphas).as_matrix()
    T = interpolate(T0, T1, alphas)
    np.testing.assert_allclose(T[:, :3, :3], ref, atol=1e-12)
    np.testing.assert_allclose(T[:, :3, 3], t0 + alphas[:, None] * (t1 - t0), atol=1e-12)
    np.testing.assert_allclose(interpolate(T0, T1, 0.0), T0, atol=1e-12)
    np.testing.assert_allclose(interpolate(T0, T1, 1.0), T1, atol=1e-12)
    np.testing.assert_allclose(interpolate(torch.tensor(T0), torch.tensor(T1), 0.3).numpy(),
                               interpolate(T0, T1, 0.3), atol=1e-12)


def test_average_rotations_matches_scipy_mean(rng):
    rot = Rotation.random(20, random_state=rng)
    w = rng.uniform(0.1, 2.0, 20)
    np.testing.assert_allclose(average_rotations(rot.as_matrix(), w), rot.mean(w).as_matrix(), atol=1e-10)
    np.testing.assert_allclose(average_rotations(rot.as_matrix()), rot.mean().as_matrix(), atol=1e-10)
    # batched and torch
    R = Rotation.random(3 * 5, random_state=rng).as_matrix().reshape(3, 5, 3, 3)
    out = average_rotations(torch.tensor(R)).numpy()
    for i in range(3):
        np.testing.assert_allclose(out[i], Rotation.from_matrix(R[i]).mean().as_matrix(), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(project_to_so3(rng.normal(size=(10, 3, 3)))), 1.0, atol=1e-12)


def test_robust_average_ignores_outliers(rng):
    center = Rotation.random(random_state=rng)
    noise = Rotation.from_rotvec(rng.normal(scale=0.02, size=(14, 3)))
    inliers = (center * noise).as_matrix()
    outliers = Rotation.random(6, random_state=rng).as_matrix()
    R = np.concatenate([inliers, outliers])
    robust = average_rotations_robust(R)
    chordal = average_rotations(R)
    err_robust = rotation_angle(robust, center.as_matrix())
    assert err_robust < 0.02
    assert err_robust < 0.5 * rotation_angle(chordal, center.as_matrix())
    # it minimises the sum of geodesic distances better than the chordal mean does
    cost = lambda Rm: rotation_angle(Rm[None], R).sum()  # noqa: E731
    assert cost(robust) <= cost(chordal) + 1e-12
    # noiseless identical rotations: exact
    np.testing.assert_allclose(average_rotations_robust(np.repeat(inliers[:1], 4, 0)), inliers[0], atol=1e-12)
