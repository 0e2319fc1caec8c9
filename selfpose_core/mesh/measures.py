"""Size measures of a mesh: the exact diameter (largest vertex-to-vertex distance) and the bounding-box diagonal."""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from selfpose_core.errors import ShapeError

_CHUNK_ENTRIES = 1 << 20  # pairs compared per block (keeps the temporary under ~25 MB)


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


def mesh_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two of ``vertices`` (N, 3), exact to float64 rounding (BOP's model diameter).

    The farthest pair of a point set lies on its convex hull, so only hull vertices are compared, all pairs, in
    blocks of about a million (squared distances by a matrix product on centred points, then the best pair's
    distance recomputed directly). Returns 0.0 for a single point.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ShapeError(f"vertices must have shape (N, 3) with N >= 1, got {v.shape}")
    h = _hull_candidates(v)
    h = h - h.mean(axis=0)
    sq = (h ** 2).sum(axis=1)
    rows = max(1, _CHUNK_ENTRIES // len(h))
    best, pair = -1.0, (0, 0)
    for i in range(0, len(h), rows):
        d2 = sq[i:i + rows, None] + sq[None, :] - 2.0 * (h[i:i + rows] @ h.T)
        k = int(np.argmax(d2))
        if d2.flat[k] > best:
            best, pair = float(d2.flat[k]), (i + k // len(h), k % len(h))
    return float(np.linalg.norm(h[pair[0]] - h[pair[1]]))


def bbox_diagonal(vertices: np.ndarray) -> float:
    """Length of the diagonal of the axis-aligned bounding box of ``vertices`` (N, 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
