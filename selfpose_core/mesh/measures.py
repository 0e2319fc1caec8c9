"""Size measures of a mesh: the exact diameter (largest vertex-to-vertex distance) and the bounding-box diagonal."""
from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from selfpose_core.errors import ShapeError

_ALL_PAIRS_MAX = 1024  # hull sizes compared all-pairs at once (a 25 MB temporary)
_HULL_MAX_POINTS = 100_000  # above: no convex hull (Qhull on a finely tessellated ball takes minutes and GBs)
_LEAF_SIZE = 8
_PAIR_CHUNK = 1 << 15  # node pairs refined at once (the branch and bound's memory is bounded by this)
_PAIR_BATCH = 8192  # leaf pairs compared per batch
FACE_CHUNK = 1 << 18  # faces whose areas/normals are computed at once (sampling, areas)


def _hull_candidates(v: np.ndarray) -> np.ndarray:
    """Points that can be an end of the farthest pair: the convex hull vertices (all points when the hull is flat).

    Above ``_HULL_MAX_POINTS`` points the hull is taken chunk by chunk (the hull vertices of the whole set are among
    those of the chunks), as long as the chunks' hulls keep few of their points; when they keep most (a finely
    tessellated ball: Qhull would take minutes and GBs for nothing), all points go to the branch and bound, which
    prunes the interior itself."""
    if len(v) > _HULL_MAX_POINTS:
        kept = []
        for s in range(0, len(v), _HULL_MAX_POINTS):
            part = _hull_candidates(v[s:s + _HULL_MAX_POINTS])
            if len(part) > _HULL_MAX_POINTS // 4:
                return v
            kept.append(part)
        merged = np.concatenate(kept)
        return merged if len(merged) > _HULL_MAX_POINTS else _hull_candidates(merged)
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
    coords = np.ascontiguousarray(points.T)  # (3, n): contiguous reductions
    for level in range(depth):
        seg = perm.reshape(2 ** level, -1)
        m = seg.shape[1]
        step = max(1, FACE_CHUNK // m)
        for s in range(0, len(seg), step):  # bounded temporaries
            part = seg[s:s + step]
            p = coords[:, part]  # (3, k, m)
            sample = p[:, :, ::max(1, m // 256)]  # the widest side from a sample: any split keeps the result exact
            axis = np.argmax(sample.max(axis=2) - sample.min(axis=2), axis=0)
            key = p[axis[:, None], np.arange(len(part))[:, None], np.arange(m)[None, :]]
            part[:] = np.take_along_axis(part, np.argpartition(key, m // 2, axis=1), axis=1)
    return perm, depth


def _sq_distances(points: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N,) squared distances of ``points`` (N, 3) to the point ``p`` (3,)."""
    return np.einsum("ij,ij->i", points - p, points - p)


def _max_sq_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest squared distance between the point sets ``a`` (..., P, 3) and ``b`` (..., Q, 3), exact."""
    d = (a[..., :, None, 0] - b[..., None, :, 0]) ** 2  # per coordinate: summing a last axis of 3 is slow
    d += (a[..., :, None, 1] - b[..., None, :, 1]) ** 2
    d += (a[..., :, None, 2] - b[..., None, :, 2]) ** 2
    return d.max(axis=(-2, -1))


class _Bounds:
    """Per tree level: the nodes' boxes (lo, hi), bounding balls (centre, radius) and cones about the point set's
    centre ``c`` (farthest distance ``rho`` from c, unit axis ``axis``, half-angle ``half``)."""

    def __init__(self, leaves: np.ndarray, depth: int, c: np.ndarray) -> None:
        n_leaves = len(leaves)
        lo, hi = np.empty((n_leaves, 3)), np.empty((n_leaves, 3))
        radius, rho, half = np.empty(n_leaves), np.empty(n_leaves), np.empty(n_leaves)
        axis = np.empty((n_leaves, 3))
        step = max(1, FACE_CHUNK // leaves.shape[1])
        for s in range(0, n_leaves, step):  # bounded temporaries
            p = leaves[s:s + step]
            lo[s:s + step], hi[s:s + step] = p.min(axis=1), p.max(axis=1)
            centre = (lo[s:s + step] + hi[s:s + step]) / 2
            radius[s:s + step] = np.sqrt(((p - centre[:, None]) ** 2).sum(axis=-1).max(axis=1))
            q = p - c
            r = np.linalg.norm(q, axis=-1)
            u = q / np.maximum(r, 1e-300)[..., None]
            a = u.sum(axis=1)
            a_norm = np.linalg.norm(a, axis=1)
            a = np.where(a_norm[:, None] > 1e-12, a / np.maximum(a_norm, 1e-300)[:, None], [1.0, 0.0, 0.0])
            cos = np.where(r > 0, (u * a[:, None]).sum(axis=-1), 1.0).min(axis=1)
            rho[s:s + step], axis[s:s + step] = r.max(axis=1), a
            half[s:s + step] = np.where(a_norm > 1e-12, np.arccos(np.clip(cos, -1.0, 1.0)), np.pi)
        half += 1e-9  # arccos rounding
        self.levels = [(lo, hi, (lo + hi) / 2, radius, rho, axis, half)]
        for _ in range(depth):
            lo, hi, centre, radius, rho, axis, half = self.levels[-1]
            plo, phi = np.minimum(lo[0::2], lo[1::2]), np.maximum(hi[0::2], hi[1::2])
            pc = (plo + phi) / 2
            pr = np.maximum(np.linalg.norm(centre[0::2] - pc, axis=1) + radius[0::2],
                            np.linalg.norm(centre[1::2] - pc, axis=1) + radius[1::2])
            a = axis[0::2] + axis[1::2]
            a_norm = np.linalg.norm(a, axis=1)
            a = np.where(a_norm[:, None] > 1e-12, a / np.maximum(a_norm, 1e-300)[:, None], axis[0::2])
            ph = np.maximum(_angle(a, axis[0::2]) + half[0::2], _angle(a, axis[1::2]) + half[1::2]) + 1e-9
            self.levels.append((plo, phi, pc, pr, np.maximum(rho[0::2], rho[1::2]), a, np.minimum(ph, np.pi)))
        self.levels.reverse()

    def upper(self, level: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Upper bounds of the squared distance between a point of node ``i`` and one of node ``j`` (level)."""
        lo, hi, centre, radius, rho, axis, half = self.levels[level]
        box = (np.maximum(np.abs(hi[i] - lo[j]), np.abs(hi[j] - lo[i])) ** 2).sum(axis=1)
        ball = (np.linalg.norm(centre[i] - centre[j], axis=1) + radius[i] + radius[j]) ** 2
        # cones: the angle between p - c and q - c is at most pi - gap, gap = (pi - angle(axes)) - half_i - half_j
        gap = np.maximum(np.pi - _angle(axis[i], axis[j]) - half[i] - half[j], 0.0)
        ri, rj = rho[i], rho[j]
        cone = np.maximum(np.maximum(ri * ri, rj * rj), ri * ri + rj * rj + 2 * ri * rj * np.cos(gap))
        return np.minimum(np.minimum(box, ball), cone)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (radians) between the unit vectors ``a`` and ``b`` (..., 3), accurate also near 0 and pi."""
    return 2.0 * np.arctan2(np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1))


def mesh_diameter(vertices: np.ndarray) -> float:
    """Largest distance between two of ``vertices`` (N, 3), exact (BOP's model diameter).

    The farthest pair of a point set lies on its convex hull, so only hull vertices are compared (above
    ``_HULL_MAX_POINTS`` points the hulls of chunks; all points when those keep most of theirs, see
    :func:`_hull_candidates`; the search then prunes the interior itself). Small sets are
    compared all-pairs; large ones (scanned meshes, balls) by a dual-tree branch and bound: node pairs of a
    median-split tree are refined depth first, in chunks of ``_PAIR_CHUNK`` pairs, and dropped when their bounding
    boxes, balls or cones about the centre (the bound that stays tight on round objects) cannot be farther apart
    than the best pair found so far; surviving leaf pairs are compared point
    by point. Memory stays a small multiple of the input (a 2.6-million-vertex ball: under 1 GB).
    Returns 0.0 for a single point.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ShapeError(f"vertices must have shape (N, 3) with N >= 1, got {v.shape}")
    h = _hull_candidates(v)
    if len(h) <= _ALL_PAIRS_MAX:
        return float(np.sqrt(_max_sq_distance(h, h)))
    perm, depth = _tree_levels(h, _LEAF_SIZE)
    b = h[np.argmax(_sq_distances(h, h[0]))]
    best = float(_sq_distances(h, b).max())  # double sweep: a lower bound, usually the answer
    leaves = h[perm.reshape(2 ** depth, -1)]
    del perm
    bounds = _Bounds(leaves, depth, (h.min(axis=0) + h.max(axis=0)) / 2)
    stack = [(0, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))]
    while stack:
        level, I, J = stack.pop()
        if len(I) > _PAIR_CHUNK:
            half = len(I) // 2
            stack += [(level, I[half:], J[half:]), (level, I[:half], J[:half])]
            continue
        if level == depth:
            for k in range(0, len(I), _PAIR_BATCH):
                best = max(best, float(_max_sq_distance(leaves[I[k:k + _PAIR_BATCH]],
                                                        leaves[J[k:k + _PAIR_BATCH]]).max()))
            continue
        ci = np.stack([2 * I, 2 * I, 2 * I + 1, 2 * I + 1], axis=1).reshape(-1)
        cj = np.stack([2 * J, 2 * J + 1, 2 * J, 2 * J + 1], axis=1).reshape(-1)
        keep = ci <= cj
        ci, cj = ci[keep], cj[keep]
        alive = bounds.upper(level + 1, ci, cj) * (1.0 + 1e-12) >= best
        if alive.any():
            stack.append((level + 1, ci[alive], cj[alive]))
    return float(np.sqrt(best))


def bbox_diagonal(vertices: np.ndarray) -> float:
    """Length of the diagonal of the axis-aligned bounding box of ``vertices`` (N, 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) areas of the triangles ``faces`` (F, 3) of ``vertices`` (V, 3), computed ``FACE_CHUNK`` faces at a time."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    out = np.empty(len(f), dtype=np.float64)
    for s in range(0, len(f), FACE_CHUNK):
        out[s:s + FACE_CHUNK] = 0.5 * np.linalg.norm(_face_cross(v, f[s:s + FACE_CHUNK]), axis=1)
    return out


def _face_cross(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(F, 3) cross products (b - a) x (c - a) of the triangles ``f``: twice the area times the unit normal."""
    a = v[f[:, 0]]
    return np.cross(v[f[:, 1]] - a, v[f[:, 2]] - a)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniformly distributed over a triangle mesh (area-weighted) and the unit normals of their faces.

    Args:
        vertices: (V, 3); faces: (F, 3) int; rng: the generator (its draws: faces, then two uniforms per point).

    Returns:
        points (n, 3) and face normals (n, 3), float64.

    Areas are computed in chunks of ``FACE_CHUNK`` faces and only the drawn faces' corners are gathered, so the
    memory is O(F) scalars plus O(n) points whatever the mesh size.
    """
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    area = 2.0 * face_areas(v, f)  # |cross|, as the weights were always computed
    total = area.sum()
    if not total > 0:
        raise ShapeError(f"cannot sample the surface of a mesh whose {len(f)} faces all have zero area")
    face = rng.choice(len(f), n, p=area / total)
    s, r2 = np.sqrt(rng.random(n)), rng.random(n)
    a, b, c = v[f[face, 0]], v[f[face, 1]], v[f[face, 2]]
    points = (1 - s)[:, None] * a + (s * (1 - r2))[:, None] * b + (s * r2)[:, None] * c
    return points, _face_cross(v, f[face]) / np.maximum(area[face], 1e-12)[:, None]
