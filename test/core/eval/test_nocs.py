"""NOCS metrics against hand-computed cases: 3D IoU of camera-frame hulls, symmetric rotation errors, AP."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.eval.nocs import (CategoryPose, average_precision, iou_3d_nocs, is_symmetric_target,
                                     nocs_average_precision, rotation_error_nocs, translation_error_cm)


def _rot(axis: str, deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _T(R=np.eye(3), t=(0.0, 0.0, 0.6)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


SIZE = np.array([0.08, 0.12, 0.06])


def test_iou_hand_computed_cases():
    base = _T(_rot("x", 0))
    shifted = _T(t=(0.04, 0.0, 0.6))  # by half the width (x extent 0.08)
    assert iou_3d_nocs(base, SIZE, base, SIZE) == pytest.approx(1.0)
    assert iou_3d_nocs(shifted, SIZE, base, SIZE) == pytest.approx(1 / 3)  # 0.5 V / 1.5 V
    assert iou_3d_nocs(_T(t=(0.08, 0.0, 0.6)), SIZE, base, SIZE) == pytest.approx(0.0)
    assert iou_3d_nocs(base, 2 * SIZE, base, SIZE) == pytest.approx(1 / 8)  # nested, twice as large
    # A quarter turn about the optical axis swaps the x and y extents: overlap 0.08 x 0.08 x 0.06.
    inter = 0.08 * 0.08 * 0.06
    vol = SIZE.prod()
    assert iou_3d_nocs(_T(_rot("z", 90)), SIZE, base, SIZE) == pytest.approx(inter / (2 * vol - inter))
    # The hull is axis-aligned in the camera frame: a cube turned 45 deg about z has a hull twice its volume.
    cube = np.full(3, 0.1)
    assert iou_3d_nocs(_T(_rot("z", 45)), cube, base, cube) == pytest.approx(0.5)


def test_symmetric_targets_take_the_best_turn_about_y():
    est, gt = np.array([0.2, 0.1, 0.1]), np.array([0.1, 0.1, 0.2])  # the same box turned by 90 deg about y
    assert iou_3d_nocs(_T(), est, _T(), gt) == pytest.approx(1 / 3)
    assert iou_3d_nocs(_T(), est, _T(), gt, symmetric=True) == pytest.approx(1.0)
    batch = iou_3d_nocs(np.stack([_T(), _T()]), est, _T(), gt, symmetric=np.array([False, True]))
    assert batch == pytest.approx([1 / 3, 1.0])


def test_rotation_error_ignores_the_up_axis_only_for_symmetric_targets():
    R_gt = _rot("x", 20)
    about_up = R_gt @ _rot("y", 30)
    assert rotation_error_nocs(about_up, R_gt) == pytest.approx(30.0)
    assert rotation_error_nocs(about_up, R_gt, symmetric=True) == pytest.approx(0.0, abs=1e-6)
    tilt = _rot("x", 10) @ R_gt  # turns the up axis by 10 deg (it is perpendicular to x)
    assert rotation_error_nocs(tilt, R_gt, symmetric=True) == pytest.approx(10.0)
    assert rotation_error_nocs(tilt, R_gt) == pytest.approx(10.0)
    assert translation_error_cm([0.03, 0.0, 0.64], [0.0, 0.0, 0.6]) == pytest.approx(5.0)


def test_which_targets_are_symmetric():
    assert all(is_symmetric_target(c) for c in ("bottle", "bowl", "can"))
    assert not any(is_symmetric_target(c) for c in ("camera", "laptop", "mug"))
    assert is_symmetric_target("mug", handle_visible=False)
    with pytest.raises(ConfigError, match="unknown category 'cup'"):
        is_symmetric_target("cup")


def test_average_precision_hand_computed():
    assert average_precision(np.array([True, True]), np.array([0.9, 0.8]), 2) == pytest.approx(1.0)
    # A false positive ranked first, one of two targets found: envelope 0.5 up to recall 0.5.
    assert average_precision(np.array([False, True]), np.array([0.9, 0.8]), 2) == pytest.approx(0.25)
    # A true positive ranked first, then a false positive: precision 1 up to recall 0.5.
    assert average_precision(np.array([True, False]), np.array([0.9, 0.8]), 2) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.zeros(0, dtype=bool), np.zeros(0), 0))


def test_nocs_ap_matching_rules():
    mug_gt = CategoryPose(0, "mug", _T(), SIZE)
    bowl_gt = CategoryPose(0, "bowl", _T(t=(0.3, 0.0, 0.6)), np.array([0.15, 0.06, 0.15]))
    # The mug estimate is turned by 30 deg about y: fine under 3D IoU, wrong under n deg m cm; as the handle is
    # hidden in image 1, the same error is ignored there.
    turned = _T(_rot("y", 30))
    mug_hidden = CategoryPose(1, "mug", _T(), SIZE, handle_visible=False)
    estimates = [CategoryPose(0, "mug", turned, SIZE, 0.9), CategoryPose(0, "mug", turned, SIZE, 0.8),  # duplicate
                 CategoryPose(1, "mug", turned, SIZE, 0.7),
                 CategoryPose(0, "bowl", _T(t=(0.31, 0.0, 0.6)), np.array([0.15, 0.06, 0.15]), 0.6)]
    ap = nocs_average_precision(estimates, [mug_gt, bowl_gt, mug_hidden])
    assert set(ap) == {"mug", "bowl", "mean"}
    # mug, iou25: hits at scores 0.9 and 0.7, the duplicate at 0.8 is a false positive: 1 * 0.5 + 2/3 * 0.5.
    assert ap["mug"]["iou25"] == pytest.approx(0.5 + 1 / 3)
    # mug, 10deg5cm: only image 1 (handle hidden) counts: ranks 3rd -> precision 1/3 over recall 0.5.
    assert ap["mug"]["10deg5cm"] == pytest.approx(1 / 6)
    assert ap["bowl"]["5deg2cm"] == pytest.approx(1.0) and ap["bowl"]["iou75"] == pytest.approx(1.0)
    assert ap["mean"]["iou25"] == pytest.approx((0.5 + 1 / 3 + 1.0) / 2)
    # An estimate of another category never matches.
    wrong = nocs_average_precision([CategoryPose(0, "can", _T(), SIZE, 0.9)], [mug_gt])
    assert wrong["mug"]["iou25"] == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(ShapeError, match="T_est"):
        iou_3d_nocs(np.eye(3), SIZE, _T(), SIZE)
    with pytest.raises(ShapeError, match="size_gt"):
        iou_3d_nocs(_T(), SIZE, _T(), np.array([0.1, np.nan, 0.1]))
    with pytest.raises(ConfigError, match="estimate in image 3: unknown category 'cup'"):
        nocs_average_precision([CategoryPose(3, "cup", _T(), SIZE)], [])


def _iou_by_corners(T1, s1, T2, s2, symmetric):
    """The revised NOCS code, written out: 8 corners per box, hull over the corners, 20 turns of the estimate."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])

    def hull(T, s):
        p = (corners * s) @ T[:3, :3].T + T[:3, 3]
        return p.min(0), p.max(0)

    best = 0.0
    for k in range(20 if symmetric else 1):
        Ty = np.eye(4)
        Ty[:3, :3] = _rot("y", 360.0 * k / 20)
        (lo1, hi1), (lo2, hi2) = hull(T1 @ Ty, s1), hull(T2, s2)
        inter = np.prod(np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0, None))
        best = max(best, inter / (np.prod(hi1 - lo1) + np.prod(hi2 - lo2) - inter))
    return best


def test_iou_matches_the_corner_loop_of_the_nocs_code():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    n = 40
    T1, T2 = np.tile(np.eye(4), (n, 1, 1)), np.tile(np.eye(4), (n, 1, 1))
    T1[:, :3, :3] = Rotation.random(n, random_state=1).as_matrix()
    T2[:, :3, :3] = Rotation.random(n, random_state=2).as_matrix()
    T1[:, :3, 3], T2[:, :3, 3] = rng.normal(0, 0.03, (n, 3)) + [0, 0, 0.7], rng.normal(0, 0.03, (n, 3)) + [0, 0, 0.7]
    s1, s2 = rng.uniform(0.05, 0.2, (n, 3)), rng.uniform(0.05, 0.2, (n, 3))
    sym = rng.random(n) < 0.5
    expected = [_iou_by_corners(T1[i], s1[i], T2[i], s2[i], sym[i]) for i in range(n)]
    assert iou_3d_nocs(T1, s1, T2, s2, sym) == pytest.approx(expected, abs=1e-12)
    assert 0.05 < np.mean(expected) < 0.9  # the random cases overlap partly, not trivially
