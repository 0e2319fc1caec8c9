"""Pose error metrics: same numbers as bop_toolkit's per-pose loops (re-written below as the brute-force reference)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ShapeError
from selfpose_core.eval import metrics

# ---- brute-force reference: the bop_toolkit formulas, one pose at a time -----------------------------------------


def ref_transform(pts, R, t):
    return (R.dot(pts.T) + t.reshape((3, 1))).T


def ref_project(pts, K, R, t):
    P = K.dot(np.hstack((R, t.reshape(3, 1))))
    x = P.dot(np.hstack((pts, np.ones((len(pts), 1)))).T)
    x /= x[2, :]
    return x[:2, :].T


def ref_add(R_e, t_e, R_g, t_g, pts):
    return np.linalg.norm(ref_transform(pts, R_e, t_e) - ref_transform(pts, R_g, t_g), axis=1).mean()


def ref_adi(R_e, t_e, R_g, t_g, pts):
    d, _ = cKDTree(ref_transform(pts, R_e, t_e)).query(ref_transform(pts, R_g, t_g), k=1)
    return d.mean()


def ref_re(R_e, R_g):
    c = float(0.5 * (np.trace(R_e.dot(np.linalg.inv(R_g))) - 1.0))
    return 180.0 * math.acos(min(1.0, max(-1.0, c))) / np.pi


def ref_te(t_e, t_g):
    return np.linalg.norm(t_g - t_e)


def ref_proj(R_e, t_e, R_g, t_g, K, pts):
    return np.linalg.norm(ref_project(pts, K, R_e, t_e) - ref_project(pts, K, R_g, t_g), axis=1).mean()


def ref_mssd(R_e, t_e, R_g, t_g, pts, syms):
    pts_e = ref_transform(pts, R_e, t_e)
    es = []
    for S in syms:
        es.append(np.linalg.norm(pts_e - ref_transform(pts, R_g.dot(S[:3, :3]), R_g.dot(S[:3, 3]) + t_g),
                                 axis=1).max())
    return min(es)


def ref_mspd(R_e, t_e, R_g, t_g, K, pts, syms):
    p_e = ref_project(pts, K, R_e, t_e)
    es = []
    for S in syms:
        p_g = ref_project(pts, K, R_g.dot(S[:3, :3]), R_g.dot(S[:3, 3]) + t_g)
        es.append(np.linalg.norm(p_e - p_g, axis=1).max())
    return min(es)


# ---- hand-made cases --------------------------------------------------------------------------------------------

K = np.array([[600.0, 0.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def case(rng):
    """A box-like point cloud (metres) and 20 GT poses in front of the camera with perturbed estimates."""
    pts = rng.uniform(-1, 1, (300, 3)) * np.array([0.05, 0.03, 0.02])
    P = 20
    R_g = Rotation.random(P, random_state=1).as_matrix()
    t_g = np.column_stack([rng.uniform(-0.1, 0.1, (P, 2)), rng.uniform(0.4, 0.8, P)])
    dR = Rotation.from_rotvec(rng.normal(0, 0.2, (P, 3))).as_matrix()
    R_e = dR @ R_g
    t_e = t_g + rng.normal(0, 0.02, (P, 3))
    return pts, R_e, t_e, R_g, t_g


def test_add_adi_re_te_proj_equal_bop_toolkit(case):
    pts, R_e, t_e, R_g, t_g = case
    np.testing.assert_allclose(metrics.add(R_e, t_e, R_g, t_g, pts),
                               [ref_add(*p, pts) for p in zip(R_e, t_e, R_g, t_g)], rtol=1e-10)
    np.testing.assert_allclose(metrics.adi(R_e, t_e, R_g, t_g, pts),
                               [ref_adi(*p, pts) for p in zip(R_e, t_e, R_g, t_g)], rtol=1e-10)
    np.testing.assert_allclose(metrics.re(R_e, R_g), [ref_re(a, b) for a, b in zip(R_e, R_g)], atol=1e-9)
    np.testing.assert_allclose(metrics.te(t_e, t_g), [ref_te(a, b) for a, b in zip(t_e, t_g)], rtol=1e-12)
    np.testing.assert_allclose(metrics.proj(R_e, t_e, R_g, t_g, K, pts),
                               [ref_proj(*p, K, pts) for p in zip(R_e, t_e, R_g, t_g)], rtol=1e-10)
    assert metrics.add_s is metrics.adi and metrics.proj2d is metrics.proj


def test_mssd_mspd_equal_bop_toolkit_with_symmetries(case):
    pts, R_e, t_e, R_g, t_g = case
    # Identity, a half turn about z through an offset, and a continuous-like ring of turns about x.
    syms = [np.eye(4)]
    for a in np.linspace(0, 2 * np.pi, 7, endpoint=False)[1:]:
        S = np.eye(4)
        S[:3, :3] = Rotation.from_rotvec([a, 0, 0]).as_matrix()
        syms.append(S)
    S = np.eye(4)
    S[:3, :3] = Rotation.from_rotvec([0, 0, np.pi]).as_matrix()
    S[:3, 3] = -S[:3, :3] @ [0.01, 0, 0] + [0.01, 0, 0]
    syms = np.stack(syms + [S])
    np.testing.assert_allclose(metrics.mssd(R_e, t_e, R_g, t_g, pts, syms),
                               [ref_mssd(*p, pts, syms) for p in zip(R_e, t_e, R_g, t_g)], rtol=1e-10)
    np.testing.assert_allclose(metrics.mspd(R_e, t_e, R_g, t_g, K, pts, syms),
                               [ref_mspd(*p, K, pts, syms) for p in zip(R_e, t_e, R_g, t_g)], rtol=1e-10)
    # Symmetry-aware errors never exceed the plain maximum distance; equal with the identity alone.
    plain = metrics.mssd(R_e, t_e, R_g, t_g, pts, np.eye(4)[None])
    assert np.all(metrics.mssd(R_e, t_e, R_g, t_g, pts, syms) <= plain + 1e-12)


def test_chunked_symmetric_errors_match_unchunked(case, monkeypatch):
    pts, R_e, t_e, R_g, t_g = case
    syms = np.stack([np.eye(4)] * 3)
    full = metrics.mssd(R_e, t_e, R_g, t_g, pts, syms)
    monkeypatch.setattr(metrics, "_CHUNK_POINTS", 1000)  # 1 pose per chunk
    np.testing.assert_array_equal(metrics.mssd(R_e, t_e, R_g, t_g, pts, syms), full)


def test_symmetric_estimate_has_zero_adi_and_mssd_but_not_add():
    # A cylinder-like ring symmetric under a quarter turn about z: the rotated estimate is indistinguishable.
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    pts = np.concatenate([np.column_stack([0.03 * np.cos(ang), 0.03 * np.sin(ang), np.full(40, z)])
                          for z in (-0.05, 0.05)])
    R_g, t_g = np.eye(3), np.array([0.0, 0.0, 0.5])
    R_e = Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix()
    assert metrics.add(R_e, t_g, R_g, t_g, pts) > 0.03
    assert metrics.adi(R_e, t_g, R_g, t_g, pts) == pytest.approx(0.0, abs=1e-12)
    S = np.eye(4)
    S[:3, :3] = R_e
    assert metrics.mssd(R_e, t_g, R_g, t_g, pts, np.stack([np.eye(4), S])) == pytest.approx(0.0, abs=1e-12)
    assert metrics.add_or_adi(R_e, t_g, R_g, t_g, pts, symmetric=True) == pytest.approx(0.0, abs=1e-12)
    assert metrics.add_or_adi(R_e, t_g, R_g, t_g, pts, symmetric=False) > 0.03


def test_hand_computed_values():
    pts = np.array([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]])
    R = np.eye(3)
    # A pure 3 cm shift along y: every point moves 3 cm.
    assert metrics.add(R, [0, 0.03, 1], R, [0, 0, 1], pts) == pytest.approx(0.03)
    assert metrics.te([0, 0.03, 1], [0, 0, 1]) == pytest.approx(0.03)
    # 90 degrees about z.
    Rz = Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix()
    assert metrics.re(Rz, R) == pytest.approx(90.0)
    assert metrics.re(-np.diag([1.0, 1.0, -1.0]), R) == pytest.approx(180.0)
    # t given as (3, 1) columns like bop_toolkit.
    assert metrics.add(R, np.array([[0], [0.03], [1]]), R, np.array([[0], [0], [1]]), pts) == pytest.approx(0.03)
    # 2D: a 1 cm shift along x at 1 m depth moves projections by fx * 0.01 pixels.
    assert metrics.proj(R, [0.01, 0, 1], R, [0, 0, 1], K, pts) == pytest.approx(6.0)


def test_n_deg_m_cm():
    R = np.eye(3)
    R4 = Rotation.from_rotvec([0, np.radians(4.9), 0]).as_matrix()
    R6 = Rotation.from_rotvec([0, np.radians(5.1), 0]).as_matrix()
    t = np.zeros(3)
    ok = metrics.n_deg_m_cm(np.stack([R4, R6, R4]), np.stack([[0.049, 0, 0], [0, 0, 0], [0.051, 0, 0]]),
                            R, t, deg=5, cm=5)
    np.testing.assert_array_equal(ok, [True, False, False])


def test_iou_3d():
    box = np.array([[-0.1, -0.05, -0.02], [0.1, 0.05, 0.02]])
    R, t = np.eye(3), np.array([0.0, 0.0, 1.0])
    assert metrics.iou_3d(R, t, box, R, t, box) == pytest.approx(1.0)
    # Shifted by half the x-size: overlap 0.1 of 0.2 -> IoU = 1/3.
    assert metrics.iou_3d(R, t + [0.1, 0, 0], box, R, t, box) == pytest.approx(1 / 3)
    assert metrics.iou_3d(R, t + [1.0, 0, 0], box, R, t, box) == 0.0
    # A box twice as large in every direction: IoU = 1/8.
    assert metrics.iou_3d(R, t, 2 * box, R, t, box) == pytest.approx(1 / 8)
    # A half turn about z maps the box onto itself.
    Rz = Rotation.from_rotvec([0, 0, np.pi]).as_matrix()
    assert metrics.iou_3d(Rz, t, box, R, t, box) == pytest.approx(1.0)
    # A quarter turn about z does not, unless that turn is a symmetry.
    Rq = Rotation.from_rotvec([0, 0, np.pi / 2]).as_matrix()
    sq = np.array([[-0.1, -0.1, -0.02], [0.1, 0.1, 0.02]])
    # 0.2 x 0.1 turned into 0.1 x 0.2: intersection 0.1 x 0.1, union 2 * 0.02 - 0.01 -> IoU = 1/3.
    assert metrics.iou_3d(Rq, t, box, R, t, box) == pytest.approx(1 / 3)
    assert metrics.iou_3d(Rq, t, sq, R, t, sq) == pytest.approx(1.0)
    S = np.eye(4)
    S[:3, :3] = Rq
    # Batched with symmetries: pose 0 needs the symmetry, pose 1 is exact.
    iou = metrics.iou_3d(np.stack([Rq, R]), np.stack([t, t]), box, R, t, box, syms=np.stack([np.eye(4), S]))
    np.testing.assert_allclose(iou, [1.0, 1.0])


def test_broadcasting_and_shapes(case):
    pts, R_e, t_e, R_g, t_g = case
    # One GT against many estimates broadcasts; (2, 10) batches keep their shape.
    e = metrics.add(R_e, t_e, R_g[0], t_g[0], pts)
    assert e.shape == (20,)
    assert metrics.adi(R_e.reshape(2, 10, 3, 3), t_e.reshape(2, 10, 3), R_g.reshape(2, 10, 3, 3),
                       t_g.reshape(2, 10, 3), pts).shape == (2, 10)
    tree = cKDTree(pts)
    np.testing.assert_allclose(metrics.adi(R_e, t_e, R_g, t_g, pts, tree=tree), metrics.adi(R_e, t_e, R_g, t_g, pts))
    with pytest.raises(ShapeError, match="R_est"):
        metrics.add(R_e[:, :2], t_e, R_g, t_g, pts)
    with pytest.raises(ShapeError, match="pts"):
        metrics.add(R_e, t_e, R_g, t_g, pts[:, :2])
    with pytest.raises(ShapeError, match="broadcast"):
        metrics.add(R_e, t_e[:3], R_g, t_g, pts)
    with pytest.raises(ShapeError, match="syms"):
        metrics.mssd(R_e, t_e, R_g, t_g, pts, np.zeros((0, 4, 4)))

