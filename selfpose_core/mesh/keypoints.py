"""Object keypoints by farthest-point sampling (the 8 surface keypoints of PVNet/DSC-PoseNet-style estimators)."""
from __future__ import annotations

import numpy as np

from selfpose_core.errors import ShapeError

START_RULES = ("centroid-farthest", "first")


def farthest_point_keypoints(vertices: np.ndarray, n: int = 8, start: str | int = "centroid-farthest") -> np.ndarray:
    """Pick ``n`` points of ``vertices`` that are spread over the object by greedy farthest-point sampling.

    Args:
        vertices: (N, 3) points on the object surface (mesh vertices), any float dtype.
        n: number of keypoints; at most the number of distinct points.
        start: the first keypoint: ``"centroid-farthest"`` (the point farthest from the centroid, the PVNet rule),
            ``"first"`` (vertex 0) or an int vertex index.

    Returns:
        (n, 3) float64 keypoints, a subset of ``vertices``. Deterministic: ties go to the lowest vertex index.

    Each next point maximises its distance to the points already picked, O(n N) time and O(N) memory.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ShapeError(f"vertices must have shape (N, 3), got {v.shape}")
    if n < 1:
        raise ShapeError(f"n must be at least 1, got {n}")
    if len(v) < n:
        raise ShapeError(f"vertices needs at least n={n} points, got {len(v)}")
    if isinstance(start, str):
        if start == "centroid-farthest":
            first = int(np.argmax(((v - v.mean(axis=0)) ** 2).sum(axis=1)))
        elif start == "first":
            first = 0
        else:
            raise ValueError(f"start must be one of {START_RULES} or a vertex index, got {start!r}")
    else:
        first = int(start)
        if not 0 <= first < len(v):
            raise ShapeError(f"start index {first} is outside the {len(v)} vertices")
    picked = np.empty(n, dtype=np.int64)
    picked[0] = first
    min_d2 = ((v - v[first]) ** 2).sum(axis=1)
    for i in range(1, n):
        nxt = int(np.argmax(min_d2))
        if min_d2[nxt] == 0.0:
            raise ShapeError(f"vertices hold fewer than n={n} distinct points")
        picked[i] = nxt
        np.minimum(min_d2, ((v - v[nxt]) ** 2).sum(axis=1), out=min_d2)
    return v[picked].copy()
