"""Size measures of a mesh: the exact diameter (largest vertex-to-vertex distance) and the bounding-box diagonal."""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from selfpose_core.errors import ShapeError

_ALL_PAIRS_MAX = 1024  # hull sizes compared all-pairs at once (a 25 MB temporary)
_LEAF_SIZE = 8
_PAIR_BATCH = 8192  # leaf pairs compared per batch


def _hull_candidates(v: np.ndarray) -> np.ndarray:
    """Points that can be an end of the farthest pair: the convex hull vertices (all points when the hull is flat)."""
    if len(v) < 5:
        return v
    try:
        return v[ConvexHull(v).vertices]
    except QhullError:  # flat or collinear point set: joggled hull keeps a superset of the extreme points
        try:
            return v[ConvexHull(v, qhull_options="QJ").vertices]
        except QhullError:
            return np.unique(v, axis=0)


def _tree_levels(points: np.ndarray, leaf_size: int) -> tuple[np.ndarray, int]:
    """Order ``points`` indices as a balanced median-split tree (widest box side first).

    Returns ``(perm, depth)``: at level ``l`` (0..depth) node ``k`` holds ``perm.reshape(2**l, -1)[k]``. The point
    count is padded to ``2**depth * leaf_size`` by repeating points (repeats do not change a maximum).
    """
    n = len(points)
    depth = max(0, int(np.ceil(np.log2(n / leaf_size))))
    total = (2 ** depth) * leaf_size
    perm = np.concatenate([np.arange(n), np.arange(total - n) % n])
    for level in range(depth):
        seg = perm.reshape(2 ** level, -1)
        p = points[seg]
        axis = np.argmax(p.max(axis=1) - p.min(axis=1), axis=1)
        key = np.take_along_axis(p, axis[:, None, None], axis=2)[..., 0]
        perm = np.take_along_axis(seg, np.argsort(key, axis=1, kind="stable"), axis=1).reshape(-1)
    return perm, depth


def _max_sq_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest squared distance between the point sets ``a`` (..., P, 3) and ``b`` (..., Q, 3), exact."""
    return ((a[..., :, None, :] - b[..., None, :, :]) ** 2).sum(axis=-1).max(axis=(-2, -1))


def mesh_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two of ``vertices`` (N, 3), exact (BOP's model diameter).

    The farthest pair of a point set lies on its convex hull, so only hull vertices are compared. Small hulls are
    compared all-pairs; large ones (scanned meshes, balls) by a vectorised dual-tree branch and bound: node pairs of
    a median-split tree are refined level by level and dropped when their bounding boxes/spheres cannot be farther
    apart than the best pair found so far; surviving leaf pairs are compared point by point.
    Returns 0.0 for a single point.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ShapeError(f"vertices must have shape (N, 3) with N >= 1, got {v.shape}")
    h = _hull_candidates(v)
    if len(h) <= _ALL_PAIRS_MAX:
        return float(np.sqrt(_max_sq_distance(h, h)))
    perm, depth = _tree_levels(h, _LEAF_SIZE)
    b = h[np.argmax(((h - h[0]) ** 2).sum(axis=1))]
    best = float(((h - b) ** 2).sum(axis=1).max())  # double sweep: a lower bound, usually the answer
    I = J = np.zeros(1, dtype=np.int64)
    for level in range(1, depth + 1):
        nodes = h[perm.reshape(2 ** level, -1)]  # (2**level, size, 3)
        lo, hi = nodes.min(axis=1), nodes.max(axis=1)
        centre = (lo + hi) / 2
        radius = np.sqrt(((nodes - centre[:, None]) ** 2).sum(axis=-1).max(axis=1))
        ci = np.stack([2 * I, 2 * I, 2 * I + 1, 2 * I + 1], axis=1).reshape(-1)
        cj = np.stack([2 * J, 2 * J + 1, 2 * J, 2 * J + 1], axis=1).reshape(-1)
        keep = ci <= cj
        ci, cj = ci[keep], cj[keep]
        box = (np.maximum(np.abs(hi[ci] - lo[cj]), np.abs(hi[cj] - lo[ci])) ** 2).sum(axis=1)
        ball = (np.linalg.norm(centre[ci] - centre[cj], axis=1) + radius[ci] + radius[cj]) ** 2
        best = max(best, float(((nodes[ci, 0] - nodes[cj, 0]) ** 2).sum(axis=1).max()))
        alive = np.minimum(box, ball) * (1.0 + 1e-12) >= best
        I, J = ci[alive], cj[alive]
    leaves = h[perm.reshape(2 ** depth, -1)]
    for k in range(0, len(I), _PAIR_BATCH):
        best = max(best, float(_max_sq_distance(leaves[I[k:k + _PAIR_BATCH]], leaves[J[k:k + _PAIR_BATCH]]).max()))
    return float(np.sqrt(best))


def bbox_diagonal(vertices: np.ndarray) -> float:
    """Length of the diagonal of the axis-aligned bounding box of ``vertices`` (N, 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed over a triangle mesh (area-weighted) and the unit normals of their faces.

    Args:
        vertices: (V, 3); faces: (F, 3) int; rng: the generator (its draws: faces, then two uniforms per point).

    Returns:
        points (n, 3) and face normals (n, 3), float64.
    """
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    face = rng.choice(len(f), n, p=area / area.sum())
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    points = (1 - s)[:, None] * a[face] + (s * (1 - r2))[:, None] * b[face] + (s * r2)[:, None] * c[face]
    return points, cross[face] / np.maximum(area[face], 1e-12)[:, None]
