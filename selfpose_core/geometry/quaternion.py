"""Unit quaternions in ROS order ``(x, y, z, w)`` (geometry_msgs/Quaternion, scipy's scalar-last) <-> rotation matrices.

numpy arrays or torch tensors in, the same type out; batched over leading dimensions.
"""
from __future__ import annotations

import numpy as np
import torch

from selfpose_core.geometry.shapes import Array, check_shape, is_torch, namespace


def quaternion_to_matrix(q: Array) -> Array:
    """Rotation matrices ``(*, 3, 3)`` of quaternions ``(*, 4)`` in ``(x, y, z, w)`` order.

    The quaternion is normalised first (it need not be unit); ``q`` and ``-q`` give the same matrix.
    A zero quaternion gives NaN (it is not a rotation).
    """
    check_shape(q, ("*", 4), "q")
    xp = namespace(q)
    q = q / xp.sqrt(xp.sum(q * q, -1))[..., None]
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]
    return xp.stack(rows, -1).reshape(tuple(q.shape[:-1]) + (3, 3))


def matrix_to_quaternion(R: Array) -> Array:
    """Quaternions ``(*, 4)`` in ``(x, y, z, w)`` order with ``w >= 0`` of rotation matrices ``(*, 3, 3)``.

    Numerically stable for every angle (Shepperd's method: the best-conditioned of four candidate formulas is
    chosen per matrix). The matrix is assumed orthonormal; it is not re-orthonormalised.
    """
    check_shape(R, ("*", 3, 3), "R")
    xp = namespace(R)
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2 (up to rounding); candidate i divides by the i-th (largest is best conditioned)
    four_sq = xp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    two_abs = xp.sqrt(xp.clip(four_sq, 0.0, None))
    # candidates in (w, x, y, z) order, each scaled by 4 * q_i
    cand = xp.stack([
        xp.stack([four_sq[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        xp.stack([m21 - m12, four_sq[..., 1], m10 + m01, m02 + m20], -1),
        xp.stack([m02 - m20, m10 + m01, four_sq[..., 2], m12 + m21], -1),
        xp.stack([m10 - m01, m20 + m02, m21 + m12, four_sq[..., 3]], -1),
    ], -2)
    best = two_abs.argmax(-1)
    if is_torch(R):
        idx = best[..., None, None].expand(*best.shape, 1, 4)
        q = torch.gather(cand, -2, idx)[..., 0, :]
        scale = torch.gather(two_abs, -1, best[..., None])
    else:
        q = np.take_along_axis(cand, best[..., None, None], -2)[..., 0, :]
        scale = np.take_along_axis(two_abs, best[..., None], -1)
    q = q / (2.0 * scale)
    q = q * xp.where(q[..., :1] < 0, -1.0, 1.0)
    return xp.concatenate([q[..., 1:], q[..., :1]], -1)
