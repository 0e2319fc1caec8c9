"""Symmetry transforms leave symmetric procedural meshes unchanged; closest symmetric pose; min-over-symmetries loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import make_T, rotation_angle, so3_exp, transform_points
from selfpose_core.geometry.symmetry import closest_symmetric_pose, min_over_symmetries, symmetry_transforms
from selfpose_core.types import Symmetry

FLIP_X = make_T(so3_exp(np.array([np.pi, 0.0, 0.0])), np.zeros(3))


def cylinder(segments: int = 36, centre: np.ndarray = np.zeros(3)) -> np.ndarray:
    """Vertices of a closed cylinder (radius 0.04, height 0.12) about the z axis through ``centre``."""
    a = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([0.04 * np.cos(a), 0.04 * np.sin(a)], 1)
    rings = [np.column_stack([ring, np.full(segments, z)]) for z in (-0.06, -0.02, 0.02, 0.06)]
    return np.concatenate(rings + [np.array([[0, 0, -0.06], [0, 0, 0.06]])]) + centre


def box(size=(0.10, 0.06, 0.04)) -> np.ndarray:
    g = np.stack(np.meshgrid(*[np.linspace(-s / 2, s / 2, 3) for s in size], indexing="ij"), -1).reshape(-1, 3)
    return g


def vertex_set_distance(A: np.ndarray, B: np.ndarray) -> float:
    return max(cKDTree(B).query(A)[0].max(), cKDTree(A).query(B)[0].max())


def test_cylinder_is_invariant_under_its_symmetries():
    centre = np.array([0.01, -0.02, 0.03])
    V = cylinder(centre=centre)
    # flip about an x-parallel axis through the centre, T(c) R_x(pi) T(-c); spin about z through the centre
    flip = make_T(np.eye(3), centre) @ FLIP_X @ make_T(np.eye(3), -centre)
    sym = Symmetry(discrete=flip[None], continuous=[(np.array([0.0, 0.0, 2.0]), centre)])
    S = symmetry_transforms(sym, n_continuous=36)
    assert S.shape == (72, 4, 4)
    np.testing.assert_allclose(S[0], np.eye(4))
    worst = max(vertex_set_distance(transform_points(s, V), V) for s in S)
    assert worst < 1e-12
    # a non-symmetry does move the mesh (the test can fail)
    assert vertex_set_distance(transform_points(make_T(so3_exp(np.array([0.0, 0.3, 0.0])), np.zeros(3)), V), V) > 1e-3


def test_box_discrete_symmetries():
    V = box()
    flips = np.stack([make_T(so3_exp(np.pi * e), np.zeros(3)) for e in np.eye(3)])
    S = symmetry_transforms(Symmetry(discrete=flips))
    assert S.shape == (4, 4, 4)
    assert max(vertex_set_distance(transform_points(s, V), V) for s in S) < 1e-12
    assert len(symmetry_transforms(Symmetry())) == 1


def test_same_set_and_order_as_bop_toolkit_loop():
    """Reference: bop_toolkit misc.get_symmetry_transformations written as its plain loops."""
    disc = [make_T(so3_exp(np.array([np.pi, 0.0, 0.0])), np.array([0.0, 0.0, 0.01]))]
    conts = [(np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 0.02])), (np.array([0.0, 1.0, 0.0]), np.zeros(3))]
    n = 12
    for cont in ([], conts[:1], conts):
        trans_cont = []
        for axis, offset in cont:
            for i in range(n):
                R = Rotation.from_rotvec(axis / np.linalg.norm(axis) * i * 2 * np.pi / n).as_matrix()
                trans_cont.append(make_T(R, offset - R @ offset))
        trans_disc = [np.eye(4)] + disc
        ref = [C @ D for D in trans_disc for C in trans_cont] if trans_cont else trans_disc
        np.testing.assert_allclose(symmetry_transforms(Symmetry(discrete=np.array(disc), continuous=cont), n),
                                   np.array(ref), atol=1e-12)


def test_bad_axis_is_reported():
    with pytest.raises(ConfigError, match=r"continuous\[0\]"):
        symmetry_transforms(Symmetry(continuous=[(np.zeros(3), np.zeros(3))]))


def test_closest_symmetric_pose_discrete(rng):
    flips = np.stack([make_T(so3_exp(np.pi * e), np.zeros(3)) for e in np.eye(3)])
    sym = Symmetry(discrete=flips)
    T_gt = make_T(Rotation.random(random_state=rng).as_matrix(), np.array([0.1, 0.0, 0.8]))
    T_est = T_gt @ flips[1] @ make_T(so3_exp(np.array([0.05, -0.02, 0.01])), np.zeros(3))
    best = closest_symmetric_pose(T_est, T_gt, sym)
    np.testing.assert_allclose(best, T_gt @ flips[1], atol=1e-12)
    batch = closest_symmetric_pose(np.stack([T_est, T_gt]), np.stack([T_gt, T_gt]), symmetry_transforms(sym))
    np.testing.assert_allclose(batch[1], T_gt, atol=1e-12)


def test_closest_symmetric_pose_continuous_is_exact(rng):
    centre = np.array([0.0, 0.0, 0.02])
    flip = make_T(np.eye(3), centre) @ FLIP_X @ make_T(np.eye(3), -centre)  # about an x-parallel axis via centre
    sym = Symmetry(discrete=flip[None], continuous=[(np.array([0.0, 0.0, 1.0]), centre)])
    T_gt = make_T(Rotation.random(random_state=rng).as_matrix(), np.array([0.0, 0.1, 0.9]))
    for k in range(5):
        theta = rng.uniform(-np.pi, np.pi)
        C = make_T(so3_exp(np.array([0.0, 0.0, theta])), np.zeros(3))
        C[:3, 3] = centre - C[:3, :3] @ centre
        S = C @ (flip if k % 2 else np.eye(4))
        T_est = T_gt @ S
        best = closest_symmetric_pose(T_est, T_gt, sym)
        np.testing.assert_allclose(best, T_est, atol=1e-10)  # an exact symmetric copy is found exactly
        # and it is at least as close as every sampled symmetry
        noisy = T_est @ make_T(so3_exp(rng.normal(scale=0.1, size=3)), np.zeros(3))
        best = closest_symmetric_pose(noisy, T_gt, sym)
        sampled = T_gt @ symmetry_transforms(sym, 360)
        assert rotation_angle(noisy, best) <= rotation_angle(noisy[None], sampled).min() + 1e-12
        # the closest pose keeps the symmetry axis' centre where the ground truth has it
        np.testing.assert_allclose(transform_points(best, centre[None]), transform_points(T_gt, centre[None]),
                                   atol=1e-12)
        # batched: the same answers
        batch = closest_symmetric_pose(np.stack([noisy, T_est]), np.stack([T_gt, T_gt]), sym)
        np.testing.assert_allclose(batch, np.stack([best, T_est]), atol=1e-10)


def test_min_over_symmetries_torch(rng):
    flips = np.stack([make_T(so3_exp(np.pi * e), np.zeros(3)) for e in np.eye(3)])
    S = symmetry_transforms(Symmetry(discrete=flips))
    X = torch.tensor(box())
    T_gt = torch.tensor(np.stack([make_T(Rotation.random(random_state=rng).as_matrix(), np.array([0, 0, 1.0]))
                                  for _ in range(3)]))
    T_pred = T_gt @ torch.tensor(S[[2, 0, 3]])  # each prediction is a symmetric copy of its ground truth
    pred = (X @ T_pred[:, :3, :3].transpose(-1, -2) + T_pred[:, None, :3, 3]).requires_grad_(True)
    loss, index = min_over_symmetries(pred, T_gt[:, :3, :3], T_gt[:, :3, 3], X, S)
    np.testing.assert_allclose(loss.detach().numpy(), 0.0, atol=1e-12)
    assert index.tolist() == [2, 0, 3]
    # a perturbed prediction: positive loss, gradient flows, custom point loss is used
    loss, _ = min_over_symmetries(pred + 0.01, T_gt[:, :3, :3], T_gt[:, :3, 3], X, S,
                                  point_loss=lambda p, t: ((p - t) ** 2).sum(-1).mean(-1))
    np.testing.assert_allclose(loss.detach().numpy(), 3e-4, rtol=1e-9)
    loss.sum().backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0
