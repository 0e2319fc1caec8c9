"""Pinhole projection and back-projection in the OpenCV/ROS optical frame (x right, y down, z forward).

numpy arrays or torch tensors in, the same type out; batched over leading dimensions that broadcast between
``K`` and the points. Pixel coordinates follow OpenCV: ``(u, v)`` = (column, row), the centre of the top-left
pixel is ``(0, 0)``. No lens distortion (images are rectified). Reference: Hartley & Zisserman, *Multiple View
Geometry* (2nd ed.), section 6.1.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import Array, check_shape, is_torch, namespace
from selfpose_core.types import CameraIntrinsics

KLike = Union[np.ndarray, torch.Tensor, CameraIntrinsics]

#: points with depth z <= Z_MIN (metres) are "behind the camera" for these functions
Z_MIN = 1e-6


def _camera_matrix(K: KLike, like: Array) -> Array:
    if isinstance(K, CameraIntrinsics):
        K = K.K
    if is_torch(like):
        K = torch.as_tensor(K, dtype=like.dtype, device=like.device)
    else:
        K = np.asarray(K, dtype=np.result_type(like.dtype, np.float32))
    check_shape(K, ("*", 3, 3), "K")
    return K


def project(K: KLike, X_cam: Array, *, z_min: float = Z_MIN) -> Array:
    """Pixels ``(*, N, 2)`` of camera-frame points ``X_cam`` ``(*, N, 3)`` through ``K`` ``(*, 3, 3)``.

    ``u = (K X)_0 / z``, ``v = (K X)_1 / z``. Points behind the camera (``z <= z_min``) do not project: their
    depth is clamped to ``z_min`` so that the result stays finite (and torch gradients stay finite), but their
    pixel is meaningless; mask them with ``X_cam[..., 2] > z_min``. No clipping to the image.
    """
    check_shape(X_cam, ("*", "N", 3), "X_cam")
    xp = namespace(X_cam)
    K = _camera_matrix(K, X_cam)
    q = X_cam @ K.swapaxes(-1, -2)
    z = xp.clip(X_cam[..., 2:3], z_min, None)
    return q[..., :2] / z


def unproject(K: KLike, uv: Array, depth: Array) -> Array:
    """Camera-frame points ``(*, N, 3)`` of pixels ``uv`` ``(*, N, 2)`` at depths ``depth`` ``(*, N)``.

    ``depth`` is the z coordinate (what a depth image holds), not the distance along the ray. Invalid depth
    (0 or NaN) gives a point at the camera centre or NaN; filter it before or after.
    """
    check_shape(uv, ("*", "N", 2), "uv")
    check_shape(depth, ("*", uv.shape[-2]), "depth")
    xp = namespace(uv)
    K = _camera_matrix(K, uv)
    ones = xp.ones_like(uv[..., :1])
    rays = xp.concatenate([uv, ones], -1) @ xp.linalg.inv(K).swapaxes(-1, -2)
    return rays * depth[..., None]


def project_box(K: KLike, X_cam: Array, *, image_size: tuple[int, int] | None = None,
                z_min: float = Z_MIN) -> Array:
    """Bounding box ``(*, 4)`` = ``(x0, y0, x1, y1)`` of the projections of the points ``X_cam`` ``(*, N, 3)``.

    Only points in front of the camera (``z > z_min``) count; a set with none of them gives NaN. With
    ``image_size = (width, height)`` the box is clipped to the image ``[0, width] x [0, height]``. This is the
    box of the given points (e.g. mesh vertices), not of the rendered silhouette: no occlusion, and an object
    that straddles the image plane z = 0 gets the box of its visible-side vertices only.
    """
    check_shape(X_cam, ("*", "N", 3), "X_cam")
    xp = namespace(X_cam)
    uv = project(K, X_cam, z_min=z_min)
    front = (X_cam[..., 2] > z_min)[..., None]
    lo = xp.amin(xp.where(front, uv, xp.full_like(uv, np.inf)), -2)
    hi = xp.amax(xp.where(front, uv, xp.full_like(uv, -np.inf)), -2)
    box = xp.concatenate([lo, hi], -1)
    box = xp.where(front.any(-2), box, xp.full_like(box, np.nan))
    if image_size is not None:
        w, h = image_size
        lim = np.array([w, h, w, h], dtype=np.float64)
        lim = torch.as_tensor(lim, dtype=box.dtype, device=box.device) if is_torch(box) else lim.astype(box.dtype)
        box = xp.minimum(xp.maximum(box, 0.0 * lim), lim)
    return box


def optical_axes_center(T_world_cam: np.ndarray) -> np.ndarray:
    """The point (3,) closest to all optical axes (camera z axes) of ``T_world_cam`` (N, 4, 4), least squares.

    Minimises sum_i ||(I - d_i d_i^T)(p - c_i)||^2 over p (c_i camera centre, d_i viewing direction); for
    (nearly) parallel axes the minimum-norm solution of the normal equations is returned.
    """
    T = np.asarray(T_world_cam, dtype=np.float64)
    check_shape(T, ("N", 4, 4), "T_world_cam")
    if T.shape[0] == 0:
        raise ShapeError("T_world_cam must hold at least one pose")
    c, d = T[:, :3, 3], T[:, :3, 2]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # (N, 3, 3) projectors orthogonal to each axis
    A = P.sum(axis=0)
    b = np.einsum("nij,nj->i", P, c)
    return np.linalg.lstsq(A, b, rcond=1e-9)[0]
