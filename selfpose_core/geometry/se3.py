"""Rigid transforms: composition, inversion, point transforms, SO(3)/SE(3) exp/log, interpolation and rotation averaging.

Every function takes numpy arrays or torch tensors and returns the same type, batched over leading ``*``
dimensions (which broadcast). A pose ``T_a_b`` is a ``(*, 4, 4)`` matrix mapping points in frame b to frame a,
so ``compose(T_a_b, T_b_c) == T_a_c``. Twists are ordered ``(v, omega)`` = (translation part, rotation part),
like the ROS covariance order (x, y, z, rot_x, rot_y, rot_z).
Reference for the exp/log formulas: Barfoot, *State Estimation for Robotics* (2017), sections 7.1.3 and 7.1.9.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from selfpose_core.geometry.quaternion import matrix_to_quaternion
from selfpose_core.geometry.shapes import Array, check_shape, eye_like, is_torch, namespace

# below this squared angle (theta < 1e-4 rad) the series expansions are exact to double precision
_SMALL_ANGLE_SQ = 1e-8


def _transpose(x: Array) -> Array:
    return x.swapaxes(-1, -2)


def make_T(R: Array, t: Array) -> Array:
    """Homogeneous transforms ``(*, 4, 4)`` from rotations ``(*, 3, 3)`` and translations ``(*, 3)`` (broadcast)."""
    check_shape(R, ("*", 3, 3), "R")
    check_shape(t, ("*", 3), "t")
    if is_torch(R):
        lead = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
        top = torch.cat([R.expand(*lead, 3, 3), t.expand(*lead, 3)[..., None]], -1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=top.dtype, device=top.device).expand(*lead, 1, 4)
        return torch.cat([top, bottom], -2)
    lead = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = np.zeros(lead + (4, 4), dtype=np.result_type(R.dtype, t.dtype, np.float32))
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def compose(T_ab: Array, T_bc: Array) -> Array:
    """``T_a_c = T_a_b @ T_b_c`` for ``(*, 4, 4)`` transforms (leading dimensions broadcast)."""
    check_shape(T_ab, ("*", 4, 4), "T_ab")
    check_shape(T_bc, ("*", 4, 4), "T_bc")
    return T_ab @ T_bc


def invert(T: Array) -> Array:
    """Inverse of rigid transforms ``(*, 4, 4)``: ``[R^T, -R^T t]`` (assumes ``R`` orthonormal; no general inverse)."""
    check_shape(T, ("*", 4, 4), "T")
    Rt = _transpose(T[..., :3, :3])
    return make_T(Rt, -(Rt @ T[..., :3, 3:4])[..., 0])


def transform_points(T: Array, X: Array) -> Array:
    """Points ``(*, N, 3)`` in frame b mapped by ``T_a_b`` ``(*, 4, 4)`` into frame a: ``R X + t``."""
    check_shape(T, ("*", 4, 4), "T")
    check_shape(X, ("*", "N", 3), "X")
    return X @ _transpose(T[..., :3, :3]) + T[..., None, :3, 3]


def skew(v: Array) -> Array:
    """Skew-symmetric matrices ``(*, 3, 3)`` with ``skew(v) @ x == cross(v, x)`` for vectors ``(*, 3)``."""
    check_shape(v, ("*", 3), "v")
    xp = namespace(v)
    z = xp.zeros_like(v[..., 0])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return xp.stack([z, -w, y, w, z, -x, -y, x, z], -1).reshape(tuple(v.shape[:-1]) + (3, 3))


def _vee(S: Array) -> Array:
    """The axial vector of the antisymmetric part times two: ``(S21 - S12, S02 - S20, S10 - S01)``."""
    xp = namespace(S)
    return xp.stack([S[..., 2, 1] - S[..., 1, 2], S[..., 0, 2] - S[..., 2, 0], S[..., 1, 0] - S[..., 0, 1]], -1)


def _exp_coefficients(theta_sq: Array) -> tuple[Array, Array, Array]:
    """``A = sin(th)/th``, ``B = (1 - cos(th))/th^2``, ``C = (th - sin(th))/th^3`` with safe small-angle series."""
    xp = namespace(theta_sq)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = xp.where(small, xp.ones_like(theta_sq), theta_sq)
    th = xp.sqrt(safe_sq)
    s, c = xp.sin(th), xp.cos(th)
    A = xp.where(small, 1.0 - theta_sq / 6.0, s / th)
    B = xp.where(small, 0.5 - theta_sq / 24.0, (1.0 - c) / safe_sq)
    C = xp.where(small, 1.0 / 6.0 - theta_sq / 120.0, (th - s) / (safe_sq * th))
    return A, B, C


def so3_exp(omega: Array) -> Array:
    """Rotation matrices ``(*, 3, 3)`` of rotation vectors ``(*, 3)`` (axis times angle, radians); Rodrigues.

    Differentiable everywhere in torch, including ``omega = 0``.
    """
    check_shape(omega, ("*", 3), "omega")
    xp = namespace(omega)
    A, B, _ = _exp_coefficients(xp.sum(omega * omega, -1)[..., None, None])
    K = skew(omega)
    return eye_like(omega, 3) + A * K + B * (K @ K)


def so3_log(R: Array) -> Array:
    """Rotation vectors ``(*, 3)`` with angle in ``[0, pi]`` of rotation matrices ``(*, 3, 3)``.

    Goes through the quaternion (stable near 0 and near pi). At exactly pi the sign of the axis is arbitrary.
    The input is assumed orthonormal.
    """
    check_shape(R, ("*", 3, 3), "R")
    xp = namespace(R)
    q = matrix_to_quaternion(R)  # w >= 0
    v, w = q[..., :3], q[..., 3:]
    n_sq = xp.sum(v * v, -1)[..., None]
    small = n_sq < 1e-12
    n = xp.sqrt(xp.where(small, xp.ones_like(n_sq), n_sq))
    safe_w = xp.where(small, xp.ones_like(w), w)  # w is ~1 wherever small is true
    scale = xp.where(small, 2.0 / safe_w * (1.0 - n_sq / (3.0 * safe_w * safe_w)), 2.0 * xp.arctan2(n, w) / n)
    return scale * v


def se3_exp(xi: Array) -> Array:
    """Transforms ``(*, 4, 4)`` of twists ``(*, 6)`` ordered ``(v, omega)``: ``R = exp(omega)``, ``t = V(omega) v``."""
    check_shape(xi, ("*", 6), "xi")
    xp = namespace(xi)
    v, omega = xi[..., :3], xi[..., 3:]
    A, B, C = _exp_coefficients(xp.sum(omega * omega, -1)[..., None, None])
    K = skew(omega)
    K2 = K @ K
    I = eye_like(xi, 3)
    R = I + A * K + B * K2
    V = I + B * K + C * K2
    return make_T(R, (V @ v[..., None])[..., 0])


def se3_log(T: Array) -> Array:
    """Twists ``(*, 6)`` ordered ``(v, omega)`` of transforms ``(*, 4, 4)``; inverse of :func:`se3_exp`."""
    check_shape(T, ("*", 4, 4), "T")
    xp = namespace(T)
    omega = so3_log(T[..., :3, :3])
    theta_sq = xp.sum(omega * omega, -1)[..., None, None]
    A, B, _ = _exp_coefficients(theta_sq)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = xp.where(small, xp.ones_like(theta_sq), theta_sq)
    D = xp.where(small, 1.0 / 12.0 + theta_sq / 720.0, (1.0 - A / (2.0 * B)) / safe_sq)
    K = skew(omega)
    V_inv = eye_like(T, 3) - 0.5 * K + D * (K @ K)
    v = (V_inv @ T[..., :3, 3:4])[..., 0]
    return xp.concatenate([v, omega], -1)


def rotation_angle(R_a: Array, R_b: Array | None = None) -> Array:
    """Geodesic angle ``(*,)`` in ``[0, pi]`` radians between rotations ``(*, 3, 3)`` (of ``R_a`` alone if no ``R_b``).

    Uses ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)`` of ``R = R_a^T R_b``: accurate at 0 and at pi (unlike
    ``arccos``), never NaN for slightly non-orthonormal input, and with finite torch gradients everywhere.
    Accepts ``(*, 4, 4)`` poses too (their rotation blocks are used).
    """
    if R_a.shape[-2:] == (4, 4):
        R_a = R_a[..., :3, :3]
    check_shape(R_a, ("*", 3, 3), "R_a")
    R = R_a
    if R_b is not None:
        if R_b.shape[-2:] == (4, 4):
            R_b = R_b[..., :3, :3]
        check_shape(R_b, ("*", 3, 3), "R_b")
        R = _transpose(R_a) @ R_b
    xp = namespace(R)
    v = _vee(R)
    s_sq = xp.sum(v * v, -1)
    pos = s_sq > 0
    s = xp.sqrt(xp.where(pos, s_sq, xp.ones_like(s_sq))) * pos
    c = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0
    return xp.arctan2(s, c)


def interpolate(T0: Array, T1: Array, alpha: Union[float, Array]) -> Array:
    """Pose ``(*, 4, 4)`` a fraction ``alpha`` (scalar or ``(*,)``) of the way from ``T0`` to ``T1`` ``(*, 4, 4)``.

    Rotation by SLERP along the shortest arc (``R0 exp(alpha log(R0^T R1))``, equal to scipy's ``Slerp``),
    translation linearly. ``alpha`` outside ``[0, 1]`` extrapolates. This is the interpolation a TF buffer
    applies between two stamped transforms (it is not a screw-motion/SE(3) geodesic interpolation).
    """
    check_shape(T0, ("*", 4, 4), "T0")
    check_shape(T1, ("*", 4, 4), "T1")
    if is_torch(T0):
        a = torch.as_tensor(alpha, dtype=T0.dtype, device=T0.device)
    else:
        a = np.asarray(alpha, dtype=np.result_type(T0.dtype, np.float32))
    R0, R1 = T0[..., :3, :3], T1[..., :3, :3]
    R = R0 @ so3_exp(so3_log(_transpose(R0) @ R1) * a[..., None])
    t = T0[..., :3, 3] * (1.0 - a[..., None]) + T1[..., :3, 3] * a[..., None]
    return make_T(R, t)


def _weights_like(R: Array, weights: Array | None) -> Array:
    xp = namespace(R)
    if weights is None:
        return xp.ones_like(R[..., 0, 0])
    check_shape(weights, ("*", R.shape[-3]), "weights")
    if is_torch(R):
        return torch.as_tensor(weights, dtype=R.dtype, device=R.device)
    return np.asarray(weights, dtype=R.dtype)


def project_to_so3(M: Array) -> Array:
    """The rotation ``(*, 3, 3)`` nearest (Frobenius) to each matrix ``M`` ``(*, 3, 3)``: ``U diag(1, 1, det) V^T``."""
    check_shape(M, ("*", 3, 3), "M")
    xp = namespace(M)
    U, _, Vt = xp.linalg.svd(M)
    d = xp.linalg.det(U @ Vt)
    flip = xp.stack([xp.ones_like(d), xp.ones_like(d), d], -1)
    return (U * flip[..., None, :]) @ Vt


def average_rotations(R: Array, weights: Array | None = None) -> Array:
    """Weighted chordal L2 mean ``(*, 3, 3)`` of rotations ``(*, N, 3, 3)`` with weights ``(*, N)`` (default equal).

    The rotation minimising ``sum_i w_i |R - R_i|_F^2``: the SVD projection of ``sum_i w_i R_i`` onto SO(3)
    (Hartley et al., "Rotation Averaging", IJCV 2013, section 5.3). Equals scipy's ``Rotation.mean`` (Markley's
    quaternion eigenvector method minimises the same cost). Not robust to outliers: see
    :func:`average_rotations_robust`. Weights must be non-negative and not all zero.
    """
    check_shape(R, ("*", "N", 3, 3), "R")
    w = _weights_like(R, weights)
    return project_to_so3((w[..., None, None] * R).sum(-3))


def average_rotations_robust(R: Array, weights: Array | None = None, *, max_iterations: int = 100,
                             tol: float = 1e-10) -> Array:
    """Weighted geodesic L1 median ``(*, 3, 3)`` of rotations ``(*, N, 3, 3)``: Weiszfeld iterations on SO(3).

    Minimises ``sum_i w_i angle(R, R_i)`` (Hartley, Aftab, Trumpf, "L1 rotation averaging using the Weiszfeld
    algorithm", CVPR 2011), starting from the chordal mean. Tolerates a minority of arbitrary outliers, unlike
    the chordal mean. Rotations closer than 1e-12 rad to the current estimate get a capped weight.
    """
    check_shape(R, ("*", "N", 3, 3), "R")
    xp = namespace(R)
    w = _weights_like(R, weights)
    est = average_rotations(R, w)
    for _ in range(max_iterations):
        v = so3_log(_transpose(est)[..., None, :, :] @ R)  # (*, N, 3) residual rotation vectors
        dist = xp.sqrt(xp.sum(v * v, -1))
        inv = w / xp.clip(dist, 1e-12, None)
        step = (inv[..., None] * v).sum(-2) / inv.sum(-1)[..., None]
        est = est @ so3_exp(step)
        if float(xp.abs(step).max()) < tol:
            break
    return est

