"""The continuous 6D rotation representation of Zhou et al., "On the Continuity of Rotation Representations in
Neural Networks" (CVPR 2019), section 4.2: the first two COLUMNS of the rotation matrix.

numpy arrays or torch tensors in, the same type out; batched over leading dimensions. Note: PyTorch3D's
``matrix_to_rotation_6d`` uses the first two ROWS instead; the two are not interchangeable.
"""
from __future__ import annotations

from selfpose_core.geometry.shapes import Array, check_shape, cross, namespace

_EPS = 1e-8


def _normalize(v: Array) -> Array:
    xp = namespace(v)
    return v / xp.clip(xp.sqrt(xp.sum(v * v, -1)), _EPS, None)[..., None]


def rotation_6d_to_matrix(d6: Array) -> Array:
    """Rotation matrices ``(*, 3, 3)`` from 6D vectors ``(*, 6)`` = (column a1, column a2), by Gram-Schmidt.

    ``b1 = a1 / |a1|``, ``b2 = normalise(a2 - (b1 . a2) b1)``, ``b3 = b1 x b2``: always a proper rotation
    (det +1). Differentiable; degenerate input (``a1 = 0`` or ``a2`` parallel to ``a1``) gives a singular matrix
    rather than NaN.
    """
    check_shape(d6, ("*", 6), "d6")
    xp = namespace(d6)
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - xp.sum(b1 * a2, -1)[..., None] * b1)
    b3 = cross(b1, b2)
    return xp.stack([b1, b2, b3], -1)


def matrix_to_rotation_6d(R: Array) -> Array:
    """6D vectors ``(*, 6)`` = (first column, second column) of rotation matrices ``(*, 3, 3)``."""
    check_shape(R, ("*", 3, 3), "R")
    xp = namespace(R)
    return xp.concatenate([R[..., :, 0], R[..., :, 1]], -1)
