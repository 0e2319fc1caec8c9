"""Pose error functions of the 6D pose literature, vectorised over poses and model points (numpy).

The definitions are those of bop_toolkit's ``pose_error.py`` (Hodan, Michel et al., "BOP: Benchmark for 6D Object
Pose Estimation", ECCV'18; Hodan et al., "On Evaluation of 6D Object Pose Estimation", ECCVW'16) and give the same
numbers, but every function takes a batch of poses instead of looping over them in Python.

Conventions of every function here:
    rotations ``R_*`` are ``(*, 3, 3)``, translations ``t_*`` are ``(*, 3)`` (a trailing ``(3, 1)`` is accepted),
    model points ``pts`` are ``(N, 3)`` in the object frame, ``K`` is ``(3, 3)`` or ``(*, 3, 3)``, symmetries
    ``syms`` are ``(S, 4, 4)`` transforms in the object frame that INCLUDE the identity (as
    ``selfpose_core.geometry.symmetry.symmetry_transforms`` returns them). Leading dimensions ``*`` of estimate and
    ground truth broadcast. Errors come out as ``(*,)`` float64 arrays in the units of the inputs (metres for
    distances, pixels for projections, degrees for rotations).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import check_shape

# Transformed points held at once (about 400 kB of float64 xyz): poses are processed in chunks that stay in the
# CPU cache, which is faster than one huge array and bounds memory whatever the number of poses and symmetries.
_CHUNK_POINTS = 1 << 14


def _rotation(R: np.ndarray, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    check_shape(R, ("*", 3, 3), name)
    return R


def _translation(t: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.ndim >= 2 and t.shape[-2:] == (3, 1):
        t = t[..., 0]
    check_shape(t, ("*", 3), name)
    return t


def _points(pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    check_shape(pts, ("N", 3), "pts")
    if len(pts) == 0:
        raise ShapeError("pts needs at least 1 point, got 0")
    return pts


def _poses(R_est, t_est, R_gt, t_gt) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate an estimate/GT pair and broadcast all four to one batch shape ``B``."""
    R_est, R_gt = _rotation(R_est, "R_est"), _rotation(R_gt, "R_gt")
    t_est, t_gt = _translation(t_est, "t_est"), _translation(t_gt, "t_gt")
    try:
        batch = np.broadcast_shapes(R_est.shape[:-2], t_est.shape[:-1], R_gt.shape[:-2], t_gt.shape[:-1])
    except ValueError as exc:
        raise ShapeError(f"pose batch shapes do not broadcast: R_est {R_est.shape}, t_est {t_est.shape}, "
                         f"R_gt {R_gt.shape}, t_gt {t_gt.shape}") from exc
    return (np.broadcast_to(R_est, batch + (3, 3)), np.broadcast_to(t_est, batch + (3,)),
            np.broadcast_to(R_gt, batch + (3, 3)), np.broadcast_to(t_gt, batch + (3,)))


def _syms(syms: np.ndarray) -> np.ndarray:
    syms = np.asarray(syms, dtype=np.float64)
    check_shape(syms, ("S", 4, 4), "syms")
    if len(syms) == 0:
        raise ShapeError("syms must hold at least the identity, got 0 transforms")
    return syms


def _affine(pts: np.ndarray, A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``A x + b`` for points (N, 3) and P maps A (P, 3, 3), b (P, 3) -> (N, P, 3), points-major.

    All maps go through one (N, 3) x (3, 3P) matrix product: numpy's stacked matmul of 3x3 matrices and the
    (P, N, 3) layout are several times slower.
    """
    A = np.ascontiguousarray(A).reshape(-1, 3, 3)
    X = pts @ A.transpose(2, 0, 1).reshape(3, -1)
    X += np.reshape(b, -1)  # in place: fresh large arrays are what costs here
    return X.reshape(len(pts), len(A), 3)


def _chunked(n_poses: int, points_per_pose: int, fn: Callable[[slice], np.ndarray]) -> np.ndarray:
    """``fn(slice)`` -> (p,) errors over the flattened poses in chunks of about ``_CHUNK_POINTS`` points; (n_poses,)."""
    out = np.empty(n_poses)
    step = max(1, _CHUNK_POINTS // max(1, points_per_pose))
    for i in range(0, n_poses, step):
        out[i:i + step] = fn(slice(i, i + step))
    return out


def _sq(x: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm over the last axis."""
    return np.einsum("...i,...i->...", x, x)


def _pixels(h: np.ndarray) -> np.ndarray:
    """Pixels (..., 2) of homogeneous image points (..., 3)."""
    return h[..., :2] / h[..., 2:3]


def _camera(K: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    check_shape(K, ("*", 3, 3), "K")
    try:
        return np.broadcast_to(K, batch + (3, 3)).reshape(-1, 3, 3)
    except ValueError as exc:
        raise ShapeError(f"K {K.shape} does not broadcast to the pose batch {batch}") from exc


def add(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Average Distance of model points (ADD) for objects without indistinguishable views -- Hinterstoisser et al.
    (ACCV'12): ``mean_x ||(R_e x + t_e) - (R_g x + t_g)||``.

    Returns: (*,) errors in the units of ``t`` and ``pts``.
    """
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    batch = R_est.shape[:-2]
    A, b = (R_est - R_gt).reshape(-1, 3, 3), (t_est - t_gt).reshape(-1, 3)
    return _chunked(len(A), len(pts), lambda sl: np.sqrt(_sq(_affine(pts, A[sl], b[sl]))).mean(axis=0)).reshape(batch)


def adi(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, pts: np.ndarray,
        tree: cKDTree | None = None) -> np.ndarray:
    """Average Distance of model points for objects with Indistinguishable views (ADI, also called ADD-S) --
    Hinterstoisser et al. (ACCV'12): ``mean_x min_y ||(R_g x + t_g) - (R_e y + t_e)||``.

    As in bop_toolkit, each point in the ground-truth pose is matched to its nearest neighbour among the points in
    the estimated pose. Vectorised by mapping the ground-truth points into the estimated object frame,
    ``R_e^T (R_g x + t_g - t_e)``, and querying one k-d tree of ``pts`` for all poses at once (exact: the
    distance is invariant to the rigid motion). ``tree``: an optional prebuilt ``cKDTree(pts)``.

    Returns: (*,) errors in the units of ``t`` and ``pts``.
    """
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    if tree is None:
        tree = cKDTree(pts)
    elif tree.n != len(pts) or tree.m != 3:
        raise ShapeError(f"tree holds {tree.n} points of dimension {tree.m}, pts has shape {pts.shape}")
    batch = R_est.shape[:-2]
    R_et = np.swapaxes(R_est, -1, -2).reshape(-1, 3, 3)
    A, b = R_et @ R_gt.reshape(-1, 3, 3), (R_et @ (t_gt - t_est).reshape(-1, 3, 1))[..., 0]

    def chunk(sl: slice) -> np.ndarray:
        q = _affine(pts, A[sl], b[sl])
        return tree.query(q.reshape(-1, 3), k=1)[0].reshape(q.shape[:-1]).mean(axis=0)

    return _chunked(len(A), len(pts), chunk).reshape(batch)


add_s = adi


def add_or_adi(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, pts: np.ndarray,
               symmetric: bool, tree: cKDTree | None = None) -> np.ndarray:
    """AD{D|I}: :func:`adi` for an object with symmetries (indistinguishable views), :func:`add` otherwise
    (the LINEMOD/BOP convention usually reported as "ADD(-S)").

    Returns: (*,) errors in the units of ``t`` and ``pts``.
    """
    if symmetric:
        return adi(R_est, t_est, R_gt, t_gt, pts, tree=tree)
    return add(R_est, t_est, R_gt, t_gt, pts)


def re(R_est: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Rotational error in degrees: ``arccos((tr(R_e R_g^T) - 1) / 2)``, the cosine clipped to [-1, 1] against
    rounding (bop_toolkit ``re``, which writes ``R_g^-1``: the same for a rotation).

    Returns: (*,) degrees in [0, 180].
    """
    R_est, R_gt = _rotation(R_est, "R_est"), _rotation(R_gt, "R_gt")
    error_cos = 0.5 * (np.einsum("...ij,...ij->...", R_est, R_gt) - 1.0)
    return np.degrees(np.arccos(np.clip(error_cos, -1.0, 1.0)))


def te(t_est: np.ndarray, t_gt: np.ndarray) -> np.ndarray:
    """Translational error ``||t_g - t_e||`` (bop_toolkit ``te``).

    Returns: (*,) errors in the units of ``t``.
    """
    t_est, t_gt = _translation(t_est, "t_est"), _translation(t_gt, "t_gt")
    return np.linalg.norm(t_gt - t_est, axis=-1)


def proj(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, K: np.ndarray,
         pts: np.ndarray) -> np.ndarray:
    """Average 2D distance of the projected model points ("2D projection" metric, Brachmann et al., CVPR'16):
    ``mean_x ||pi(K, R_e x + t_e) - pi(K, R_g x + t_g)||``. Points must lie in front of the camera.

    Returns: (*,) errors in pixels.
    """
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    batch = R_est.shape[:-2]
    K = _camera(K, batch)
    R_est, t_est = R_est.reshape(-1, 3, 3), t_est.reshape(-1, 3, 1)
    R_gt, t_gt = R_gt.reshape(-1, 3, 3), t_gt.reshape(-1, 3, 1)
    A_e, b_e, A_g, b_g = K @ R_est, (K @ t_est)[..., 0], K @ R_gt, (K @ t_gt)[..., 0]

    def chunk(sl: slice) -> np.ndarray:
        diff = _pixels(_affine(pts, A_e[sl], b_e[sl])) - _pixels(_affine(pts, A_g[sl], b_g[sl]))
        return np.sqrt(_sq(diff)).mean(axis=0)

    return _chunked(len(A_e), len(pts), chunk).reshape(batch)


proj2d = proj


def _max_sym_distance(R_est, t_est, R_gt, t_gt, pts, syms, K) -> np.ndarray:
    """min over symmetries S of max over points of the 3D (K is None) or 2D distance between est and GT∘S."""
    syms = _syms(syms)
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    batch = R_est.shape[:-2]
    R_est, t_est = R_est.reshape(-1, 3, 3), t_est.reshape(-1, 3)
    R_gt, t_gt = R_gt.reshape(-1, 3, 3), t_gt.reshape(-1, 3)
    # Poses of the ground truth composed with each symmetry: R_g S_R and R_g S_t + t_g, (P, S, ...).
    R_gt_sym = R_gt[:, None] @ syms[:, :3, :3]
    t_gt_sym = syms[:, :3, 3] @ np.swapaxes(R_gt, -1, -2) + t_gt[:, None, :]
    if K is not None:
        K = _camera(K, batch)
        # Homogeneous projections: K R and K t.
        R_est, t_est = K @ R_est, (K @ t_est[..., None])[..., 0]
        R_gt_sym, t_gt_sym = K[:, None] @ R_gt_sym, (K[:, None] @ t_gt_sym[..., None])[..., 0]
    n_pose, n_sym = len(R_est), len(syms)
    if K is None:  # ||(R_e - R_g S_R) x + (t_e - R_g S_t - t_g)|| for every (pose, symmetry) pair
        A = (R_est[:, None] - R_gt_sym).reshape(-1, 3, 3)
        b = (t_est[:, None] - t_gt_sym).reshape(-1, 3)

        def pair_max(sl: slice) -> np.ndarray:
            return _sq(_affine(pts, A[sl], b[sl])).max(axis=0)
    else:
        pose = np.repeat(np.arange(n_pose), n_sym)
        A_g, b_g = R_gt_sym.reshape(-1, 3, 3), t_gt_sym.reshape(-1, 3)

        def pair_max(sl: slice) -> np.ndarray:
            uv_est = _pixels(_affine(pts, R_est[pose[sl]], t_est[pose[sl]]))
            return _sq(uv_est - _pixels(_affine(pts, A_g[sl], b_g[sl]))).max(axis=0)

    max_sq = _chunked(n_pose * n_sym, len(pts), pair_max).reshape(n_pose, n_sym)
    return np.sqrt(max_sq.min(axis=1)).reshape(batch)


def mssd(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, pts: np.ndarray,
         syms: np.ndarray) -> np.ndarray:
    """Maximum Symmetry-aware Surface Distance (BOP Challenge 2019):
    ``min_S max_x ||(R_e x + t_e) - (R_g (S_R x + S_t) + t_g)||`` over the symmetries ``syms`` (S, 4, 4).

    Returns: (*,) errors in the units of ``t`` and ``pts``.
    """
    return _max_sym_distance(R_est, t_est, R_gt, t_gt, pts, syms, None)


def mspd(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, K: np.ndarray, pts: np.ndarray,
         syms: np.ndarray) -> np.ndarray:
    """Maximum Symmetry-aware Projection Distance (BOP Challenge 2019): :func:`mssd` measured between the
    projections ``pi(K, .)`` of the points, in pixels.

    Returns: (*,) errors in pixels.
    """
    return _max_sym_distance(R_est, t_est, R_gt, t_gt, pts, syms, K)


def n_deg_m_cm(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, deg: float = 5.0,
               cm: float = 5.0) -> np.ndarray:
    """The "n deg, m cm" criterion (Shotton et al., CVPR'13): rotation error below ``deg`` degrees AND translation
    error below ``cm`` centimetres (translations in metres). For symmetric objects pass the GT pose closest to the
    estimate among its symmetric equivalents.

    Returns: (*,) bool.
    """
    return (re(R_est, R_gt) < deg) & (te(t_est, t_gt) < cm * 0.01)


def _box_corners(box: np.ndarray) -> np.ndarray:
    """The 8 corners (*, 8, 3) of axis-aligned boxes (*, 2, 3) given as [min, max]."""
    sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=bool)
    return np.where(sel, box[..., None, 1, :], box[..., None, 0, :])


def iou_3d(R_est: np.ndarray, t_est: np.ndarray, box_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray,
           box_gt: np.ndarray, syms: np.ndarray | None = None) -> np.ndarray:
    """3D intersection over union of the objects' bounding boxes (category-level evaluation, NOCS-style).

    ``box_est`` / ``box_gt`` are (*, 2, 3) axis-aligned boxes ``[min, max]`` in their own object frames (the
    estimated box may have another size than the true one). The estimated box's 8 corners are mapped into the
    ground-truth object frame by ``T_gt^-1 T_est`` and replaced by their axis-aligned hull there; the IoU of that
    hull with ``box_gt`` is returned. So a rotation error inflates the estimated box and lowers the IoU (an
    approximation of the exact oriented-box IoU, equal to it when the rotations agree up to axis permutations).
    With ``syms`` (S, 4, 4) the best IoU over the symmetric ground-truth poses ``T_gt S`` is returned.

    Returns: (*,) IoU in [0, 1].
    """
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    box_est, box_gt = np.asarray(box_est, dtype=np.float64), np.asarray(box_gt, dtype=np.float64)
    check_shape(box_est, ("*", 2, 3), "box_est")
    check_shape(box_gt, ("*", 2, 3), "box_gt")
    if syms is not None:
        syms = _syms(syms)
        t_gt = syms[:, :3, 3] @ np.swapaxes(R_gt, -1, -2) + t_gt[..., None, :]
        R_gt = R_gt[..., None, :, :] @ syms[:, :3, :3]
        R_est, t_est = R_est[..., None, :, :], t_est[..., None, :]
        box_est, box_gt = box_est[..., None, :, :], box_gt[..., None, :, :]
    # Corners of the estimated box in the ground-truth object frame: R_g^T (R_e c + t_e - t_g).
    corners = (_box_corners(box_est) @ np.swapaxes(R_est, -1, -2) + (t_est - t_gt)[..., None, :]) @ R_gt
    lo, hi = corners.min(axis=-2), corners.max(axis=-2)
    inter = np.prod(np.clip(np.minimum(hi, box_gt[..., 1, :]) - np.maximum(lo, box_gt[..., 0, :]), 0.0, None),
                    axis=-1)
    union = np.prod(hi - lo, axis=-1) + np.prod(box_gt[..., 1, :] - box_gt[..., 0, :], axis=-1) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou.max(axis=-1) if syms is not None else iou
