"""Least-squares similarity / rigid alignment of two corresponding point sets (Umeyama 1991).

Reference: S. Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
IEEE TPAMI 13(4), 1991, eqs. (34)-(42). numpy arrays or torch tensors in, the same type out; batched.
"""
from __future__ import annotations

from selfpose_core.geometry.shapes import Array, check_min_points, check_shape, is_torch, namespace


def umeyama(src: Array, dst: Array, with_scale: bool = True,
            weights: Array | None = None) -> tuple[Array, Array, Array]:
    """``(s (*,), R (*, 3, 3), t (*, 3))`` minimising ``sum_i w_i |dst_i - (s R src_i + t)|^2``.

    ``src``, ``dst``: ``(*, N, 3)`` corresponding points, N >= 3; ``weights``: ``(*, N)`` non-negative (default
    equal). ``R`` is always a proper rotation (det +1, Umeyama's reflection correction); with
    ``with_scale=False`` the fit is rigid and ``s`` is 1. No outlier rejection (wrap it in RANSAC for that);
    degenerate (collinear) points give one of the equally good rotations.
    """
    dims: dict[str, int] = {}
    check_shape(src, ("*", "N", 3), "src", dims)
    check_shape(dst, ("*", "N", 3), "dst", dims)
    check_min_points(src.shape[-2], 3, "src")
    xp = namespace(src)
    if weights is None:
        w = xp.ones_like(src[..., 0])
    else:
        check_shape(weights, ("*", "N"), "weights", dims)
        w = weights
    w = w / w.sum(-1)[..., None]
    mu_s = (w[..., None] * src).sum(-2)
    mu_d = (w[..., None] * dst).sum(-2)
    a, b = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    cov = (w[..., None] * b).swapaxes(-1, -2) @ a  # (*, 3, 3) = sum_i w_i b_i a_i^T
    U, D, Vt = xp.linalg.svd(cov)
    d = xp.linalg.det(U) * xp.linalg.det(Vt)
    S = xp.stack([xp.ones_like(d), xp.ones_like(d), xp.where(d < 0, -xp.ones_like(d), xp.ones_like(d))], -1)
    R = (U * S[..., None, :]) @ Vt
    if with_scale:
        var_s = (w * (a * a).sum(-1)).sum(-1)
        s = (D * S).sum(-1) / var_s
    else:
        s = xp.ones_like(d)
    t = mu_d - s[..., None] * (R @ mu_s[..., None])[..., 0]
    if not is_torch(src) and s.ndim == 0:
        s = float(s)
    return s, R, t
