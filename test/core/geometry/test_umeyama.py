"""Umeyama similarity/rigid alignment against known transforms and scipy's Kabsch solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.umeyama import umeyama


def test_recovers_similarity_transform(rng):
    src = rng.normal(size=(60, 3))
    R = Rotation.random(random_state=rng).as_matrix()
    s, t = 2.5, np.array([0.3, -1.0, 4.0])
    dst = s * src @ R.T + t
    s_est, R_est, t_est = umeyama(src, dst)
    assert abs(s_est - s) < 1e-10
    np.testing.assert_allclose(R_est, R, atol=1e-10)
    np.testing.assert_allclose(t_est, t, atol=1e-10)


def test_rigid_fit_matches_scipy_align_vectors(rng):
    src = rng.normal(size=(30, 3))
    dst = src @ Rotation.random(random_state=rng).as_matrix().T + rng.normal(scale=0.05, size=(30, 3))
    w = rng.uniform(0.2, 1.0, 30)
    s, R, t = umeyama(src, dst, with_scale=False, weights=w)
    assert s == 1.0
    a = src - np.average(src, axis=0, weights=w)
    b = dst - np.average(dst, axis=0, weights=w)
    ref, _ = Rotation.align_vectors(b, a, weights=w)
    np.testing.assert_allclose(R, ref.as_matrix(), atol=1e-9)
    np.testing.assert_allclose(t, np.average(dst, axis=0, weights=w) - R @ np.average(src, axis=0, weights=w),
                               atol=1e-12)


def test_reflection_is_never_returned(rng):
    src = rng.normal(size=(20, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image: the best proper rotation, not the reflection
    _, R, _ = umeyama(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_batched_torch_equals_numpy(rng):
    src = rng.normal(size=(4, 10, 3))
    dst = 0.5 * src @ Rotation.random(random_state=rng).as_matrix().T + 1.0 + rng.normal(scale=0.01, size=(4, 10, 3))
    s, R, t = umeyama(src, dst)
    st, Rt, tt = umeyama(torch.tensor(src), torch.tensor(dst))
    np.testing.assert_allclose(st.numpy(), s, atol=1e-12)
    np.testing.assert_allclose(Rt.numpy(), R, atol=1e-12)
    np.testing.assert_allclose(tt.numpy(), t, atol=1e-12)
    for i in range(4):
        si, Ri, ti = umeyama(src[i], dst[i])
        np.testing.assert_allclose(R[i], Ri, atol=1e-12)


def test_bad_shapes():
    with pytest.raises(ShapeError, match="dst"):
        umeyama(np.zeros((5, 3)), np.zeros((6, 3)))
    with pytest.raises(ShapeError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
