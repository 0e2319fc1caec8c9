"""Shape reconstruction metrics."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.errors import ShapeError


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chamfer distance of point sets ``a`` (N, 3) and ``b`` (M, 3) in their units, as SSC-6D's Eq. 2: the mean
    distance from each point of ``a`` to its nearest point of ``b`` plus the same from ``b`` to ``a`` (not squared)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0 or not np.isfinite(x).all():
            raise ShapeError(f"{name} must be a finite (N, 3) point set with N >= 1, got shape {x.shape}")
    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
