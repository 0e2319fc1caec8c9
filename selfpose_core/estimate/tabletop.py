"""Table-top geometry from depth: points, the support plane, Euclidean clusters above it, upright ICP.

One implementation serves both users: the per-frame object proposals of the estimator
(:mod:`selfpose_core.estimate.proposals`, camera frame, one depth image) and the scene registration of the
``multiview_consensus`` stage (world frame, the recording's fused depth).
Plane: RANSAC (Fischler & Bolles 1981) with a fixed draw, in numpy (Open3D's multithreaded ``segment_plane`` gave
different planes in different processes despite its seed); clusters: DBSCAN (Open3D ``cluster_dbscan``, Ester et
al. 1996). The same points give the same result whatever ran before.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree


def o3d_module():
    import open3d as o3d

    return o3d


def depth_points(depth: np.ndarray, K: np.ndarray, stride: int, max_depth: float,
                 return_pixels: bool = False, *, sampled: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(N, 3) camera-frame points of every ``stride``-th pixel of ``depth`` (metres) through ``K``; invalid depth
    (0, NaN, beyond ``max_depth``) is skipped. With ``return_pixels`` also their (N, 2) pixels (row, column).
    ``sampled``: ``depth`` already holds only every ``stride``-th pixel (e.g. :func:`without_flying_pixels`)."""
    d = (depth if sampled else depth[::stride, ::stride]).astype(np.float64)
    v, u = np.mgrid[0:d.shape[0] * stride:stride, 0:d.shape[1] * stride:stride]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(d) & (d > 0) & (d < max_depth)
    z = d[ok]
    pts = np.stack([(u[ok] - K[0, 2]) * z / K[0, 0], (v[ok] - K[1, 2]) * z / K[1, 1], z], 1)
    if return_pixels:
        return pts, np.stack([v[ok], u[ok]], 1)
    return pts


def without_flying_pixels(depth: np.ndarray, tolerance: float, support: int, stride: int = 1) -> np.ndarray:
    """Every ``stride``-th pixel of ``depth`` (H, W) metres, shape (ceil(H / stride), ceil(W / stride)), with 0
    (invalid) where fewer than ``support`` of the pixel's 8 neighbours in the full image lie within ``tolerance`` x
    its depth of it: depth cameras measure pixels straddling a depth edge somewhere between the near and the far
    surface ("flying pixels"), points in free space that join an object to what lies behind it. A pixel of a
    surface, also at its silhouette, has several neighbours on the same surface; 0 / NaN count as invalid.
    ``support`` 0 keeps every pixel (NaN as 0)."""
    d = np.nan_to_num(np.asarray(depth, np.float32), nan=0.0)
    centre = d[::stride, ::stride]
    if support <= 0:
        return centre.copy()
    h, w = centre.shape
    padded = np.pad(d, ((1, stride), (1, stride)))
    tol = np.float32(tolerance) * centre
    count = np.zeros((h, w), np.int8)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == dx == 1:
                continue
            n = padded[dy:dy + h * stride:stride, dx:dx + w * stride:stride]
            count += (np.abs(n - centre) <= tol) & (n > 0)
    return np.where(count >= support, centre, np.float32(0.0))


def upright_basis(up: np.ndarray) -> np.ndarray:
    """(3, 3) rotation world <- a frame whose z axis is the unit vector ``up``."""
    x = np.cross(up, [0.0, 1.0, 0.0] if abs(up[1]) < 0.9 else [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(up, x), up], 1)


def ransac_plane(points: np.ndarray, distance: float, iterations: int = 500, seed: int = 0
                 ) -> tuple[np.ndarray, float, np.ndarray]:
    """The plane ``n . x + d = 0`` (unit ``n``, ``d``) through three of ``points`` (N, 3) with the most points
    within ``distance``, refitted to those by least squares, and the indices of its inliers. Deterministic (a fixed draw of ``iterations`` triples,
    scored in chunks; ties go to the first): the same points give the same plane whatever the thread count."""
    rng = np.random.default_rng(seed)
    tri = points[rng.integers(0, len(points), (iterations, 3))]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-12
    n, tri = n[ok] / norm[ok, None], tri[ok]
    d = -np.einsum("ij,ij->i", n, tri[:, 0])
    counts = np.zeros(len(n), np.int64)
    chunk = max(1, (1 << 22) // max(len(points), 1))
    for i in range(0, len(n), chunk):
        counts[i:i + chunk] = (np.abs(points @ n[i:i + chunk].T + d[i:i + chunk]) <= distance).sum(0)
    if not len(counts):
        return np.array([0.0, 0.0, 1.0]), 0.0, np.zeros(0, np.int64)
    best = int(np.argmax(counts))
    n, d = n[best], float(d[best])
    inliers = np.nonzero(np.abs(points @ n + d) <= distance)[0]
    if len(inliers) >= 3:  # least-squares refit on the inliers (the triple's noise tilts the plane)
        centre = points[inliers].mean(0)
        normal = np.linalg.svd(points[inliers] - centre, full_matrices=False)[2][2]
        n, d = (normal, float(-normal @ centre)) if normal @ n >= 0 else (-normal, float(normal @ centre))
        inliers = np.nonzero(np.abs(points @ n + d) <= distance)[0]
    return n, d, inliers


def support_plane(points: np.ndarray, up: np.ndarray, distance: float, min_points: int, *, min_cos: float = 0.95,
                  tries: int = 3, pick: str = "first", max_points: int | None = None,
                  min_extent: float = 0.0) -> np.ndarray:
    """The support plane (4,) = (n, d), ``n . x + d = 0``, ``n`` pointing along ``up``; NaN when none is found.

    RANSAC planes (:func:`ransac_plane`) are peeled off ``points`` (N, 3) up to ``tries`` times; those whose normal is within
    ``arccos(min_cos)`` of ``up`` and that hold at least ``min_points`` inliers are candidates. ``pick="first"``
    takes the dominant candidate; ``"highest"`` the one farthest along ``up`` (a table top above the floor).
    ``max_points``: RANSAC runs on that many of the points (evenly spread), ``min_points`` is scaled alike.
    ``min_extent``: a candidate's inliers must span at least this many metres (a table, not an object's face).
    """
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    rest = points
    if max_points is not None and len(points) > max_points:
        step = int(np.ceil(len(points) / max_points))
        rest = points[::step]
        min_points = max(3, min_points // step)
    found = []
    for _ in range(tries):
        if len(rest) < max(3, min_points):
            break
        n, d, inl = ransac_plane(rest, distance)
        if len(inl) < min_points:
            break
        if abs(n @ up) >= min_cos and np.ptp(rest[inl], axis=0).max() >= min_extent:
            found.append(np.append(n, d) * (1.0 if n @ up > 0 else -1.0))
            if pick == "first":
                break
        rest = np.delete(rest, inl, axis=0)
    if not found:
        return np.full(4, np.nan)
    if pick == "highest":  # height of the plane along up: -d for a unit normal close to up
        return max(found, key=lambda p: -p[3])
    return found[0]


def euclidean_clusters(points: np.ndarray, eps: float, min_points: int, max_points: int | None = None
                       ) -> list[np.ndarray]:
    """Indices into ``points`` (N, 3) of each DBSCAN cluster (neighbourhood ``eps`` metres) with at least
    ``min_points`` points, largest first. ``max_points``: DBSCAN runs on that many points (evenly spread; ``eps``
    grows with the spacing), the others join the cluster of their nearest clustered point within ``eps``."""
    if len(points) < min_points:
        return []
    o3d = o3d_module()
    sub = np.arange(len(points))
    if max_points is not None and len(points) > max_points:
        step = int(np.ceil(len(points) / max_points))
        sub = sub[::step]
        eps *= np.sqrt(step)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[sub]))
    labels = np.asarray(pcd.cluster_dbscan(eps, 10 if len(sub) == len(points) else 5, print_progress=False))
    if len(sub) < len(points):
        clustered = labels >= 0
        full = np.full(len(points), -1)
        if clustered.any():
            d, j = cKDTree(points[sub][clustered]).query(points, distance_upper_bound=eps)
            ok = np.isfinite(d)
            full[ok] = labels[clustered][j[ok]]
        labels = full
    idx = [np.nonzero(labels == k)[0] for k in range(labels.max() + 1)]
    return sorted((i for i in idx if len(i) >= min_points), key=len, reverse=True)


class VoxelNearest:
    """Nearest-neighbour lookup in a fixed point set by a precomputed voxel grid (the exact Euclidean distance
    transform's nearest sample of every voxel, scipy ``distance_transform_edt``): one array read per query instead
    of a tree search. The answer is the sample nearest to the query's voxel centre, so its distance may exceed the
    true nearest distance by up to ``voxel * sqrt(3) / 2``; queries farther than ``pad`` outside the points' box
    find nothing."""

    def __init__(self, points: np.ndarray, voxel: float, pad: float) -> None:
        from scipy.ndimage import distance_transform_edt

        self.points = np.asarray(points, np.float64)
        self.voxel = float(voxel)
        self.origin = self.points.min(0) - pad
        shape = np.ceil((self.points.max(0) + pad - self.origin) / voxel).astype(int) + 1
        occupied = np.ones(shape, bool)
        cells = np.floor((self.points - self.origin) / voxel).astype(int)
        occupied[tuple(cells.T)] = False
        owner = np.full(shape, -1, np.int64)
        owner[tuple(cells.T)] = np.arange(len(self.points))
        nearest_cell = distance_transform_edt(occupied, return_distances=False, return_indices=True)
        self.index = owner[tuple(nearest_cell)]  # (X, Y, Z) index of a sample in the nearest occupied voxel
        self.shape = np.array(shape)

    def query(self, X: np.ndarray, distance_upper_bound: float) -> tuple[np.ndarray, np.ndarray]:
        """(distances (N,), indices (N,)) of ``X`` (N, 3) like ``cKDTree.query``: inf and len(points) beyond the
        bound or the grid."""
        cell = np.floor((X - self.origin) / self.voxel).astype(int)
        inside = np.all((cell >= 0) & (cell < self.shape), axis=1)
        j = np.full(len(X), len(self.points))
        j[inside] = self.index[tuple(cell[inside].T)]
        d = np.full(len(X), np.inf)
        d[inside] = np.linalg.norm(X[inside] - self.points[j[inside]], axis=1)
        far = d > distance_upper_bound
        d[far], j[far] = np.inf, len(self.points)
        return d, j


def upright_icp(model_pts: np.ndarray, cluster: np.ndarray, T0: np.ndarray, up: np.ndarray,
                gates: Sequence[float], iterations: int, lookup: VoxelNearest | None = None) -> np.ndarray:
    """ICP over translation and rotation about ``up`` only (4 DOF): an object resting on a plane stays resting.

    Batched over hypotheses: ``T0`` (4, 4) or (H, 4, 4). Each cluster point (N, 3) is matched to its nearest
    model point (M, 3) at the current pose (the model has sides the cameras never saw, the cluster does not);
    pairs farther than the gate are dropped; the yaw and translation minimising the squared distances are
    closed-form (2-D Procrustes in the plane orthogonal to ``up``). ``lookup``: a :class:`VoxelNearest` of
    ``model_pts`` to match with (fast, approximate) instead of a k-d tree. Returns the refined poses, shaped like
    ``T0``.
    """
    B = upright_basis(np.asarray(up, np.float64) / np.linalg.norm(up))
    tree = lookup if lookup is not None else cKDTree(model_pts)  # queried in the model frame: built once
    T = np.array(T0, np.float64, copy=True).reshape(-1, 4, 4)
    H, N = len(T), len(cluster)
    b_all = cluster @ B  # (N, 3) cluster in the upright frame
    active = np.ones(H, bool)
    for gate in gates:
        active[:] = True
        for _ in range(iterations):
            h = np.nonzero(active)[0]
            if not len(h):
                break
            local = (cluster[None] - T[h, None, :3, 3]) @ T[h, :3, :3]  # cluster in the model frame
            d, j = tree.query(local.reshape(-1, 3), distance_upper_bound=gate)
            ok = np.isfinite(d).reshape(len(h), N)
            j = np.where(ok.reshape(-1), j, 0).reshape(len(h), N)
            a = (model_pts[j] @ T[h, :3, :3].transpose(0, 2, 1) + T[h, None, :3, 3]) @ B  # in the upright frame
            w = ok.astype(np.float64)
            cnt = w.sum(1)
            enough = cnt >= 10
            cnt = np.maximum(cnt, 1.0)
            ca = (a * w[..., None]).sum(1) / cnt[:, None]
            cb = (w @ b_all) / cnt[:, None]
            a0 = a[..., :2] - ca[:, None, :2]
            b0 = b_all[None, :, :2] - cb[:, None, :2]
            cross = (w * (a0[..., 0] * b0[..., 1] - a0[..., 1] * b0[..., 0])).sum(1)
            dot = (w * (a0 * b0).sum(-1)).sum(1)
            yaw = np.where(enough, np.arctan2(cross, dot), 0.0)
            c, s = np.cos(yaw), np.sin(yaw)
            Rz = np.zeros((len(h), 3, 3))
            Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1.0
            shift = cb - np.einsum("hij,hj->hi", Rz, ca)
            shift[~enough] = 0.0
            step = np.tile(np.eye(4), (len(h), 1, 1))
            step[:, :3, :3] = B @ Rz @ B.T
            step[:, :3, 3] = shift @ B.T
            T[h] = step @ T[h]
            active[h] = enough & ((np.abs(yaw) > 1e-4) | (np.linalg.norm(shift, axis=1) > 1e-4))
    return T.reshape(np.shape(T0))
