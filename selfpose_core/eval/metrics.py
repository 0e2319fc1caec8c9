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

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import check_shape

# Points evaluated at once by the symmetry-aware errors (bounds their memory to about 100 MB).
_CHUNK_POINTS = 1 << 22


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


def _transform(pts: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``R pts + t``: points (N, 3), R (*, 3, 3), t (*, 3) -> (*, N, 3)."""
    return np.einsum("...ij,nj->...ni", R, pts) + t[..., None, :]


def _project(X: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points (*, N, 3) with K (3, 3) or (*, 3, 3) -> (*, N, 2) pixels."""
    x = np.einsum("...ij,...nj->...ni", K, X)
    return x[..., :2] / x[..., 2:3]


def add(R_est: np.ndarray, t_est: np.ndarray, R_gt: np.ndarray, t_gt: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Average Distance of model points (ADD) for objects without indistinguishable views -- Hinterstoisser et al.
    (ACCV'12): ``mean_x ||(R_e x + t_e) - (R_g x + t_g)||``.

    Returns: (*,) errors in the units of ``t`` and ``pts``.
    """
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    diff = _transform(pts, R_est - R_gt, t_est - t_gt)
    return np.linalg.norm(diff, axis=-1).mean(axis=-1)


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
    q = np.einsum("...ji,...nj->...ni", R_est, _transform(pts, R_gt, t_gt - t_est))
    nn_dists, _ = tree.query(q.reshape(-1, 3), k=1, workers=-1)
    return nn_dists.reshape(q.shape[:-1]).mean(axis=-1)


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
    rounding (bop_toolkit ``re``).

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
    K = np.asarray(K, dtype=np.float64)
    check_shape(K, ("*", 3, 3), "K")
    diff = _project(_transform(pts, R_est, t_est), K) - _project(_transform(pts, R_gt, t_gt), K)
    return np.linalg.norm(diff, axis=-1).mean(axis=-1)


proj2d = proj


def _max_sym_distance(R_est, t_est, R_gt, t_gt, pts, syms, K) -> np.ndarray:
    """min over symmetries S of max over points of the 3D (K is None) or 2D distance between est and GT∘S."""
    syms = _syms(syms)
    R_est, t_est, R_gt, t_gt = _poses(R_est, t_est, R_gt, t_gt)
    pts = _points(pts)
    batch = R_est.shape[:-2]
    R_est, t_est = R_est.reshape(-1, 3, 3), t_est.reshape(-1, 3)
    R_gt, t_gt = R_gt.reshape(-1, 3, 3), t_gt.reshape(-1, 3)
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        check_shape(K, ("*", 3, 3), "K")
        K = np.broadcast_to(K, batch + (3, 3)).reshape(-1, 3, 3)
    # Poses of the ground truth composed with each symmetry: R_g S_R and R_g S_t + t_g, (P, S, ...).
    R_gt_sym = np.einsum("pij,sjk->psik", R_gt, syms[:, :3, :3])
    t_gt_sym = np.einsum("pij,sj->psi", R_gt, syms[:, :3, 3]) + t_gt[:, None, :]
    out = np.empty(len(R_est))
    step = max(1, _CHUNK_POINTS // (len(syms) * len(pts)))
    for i in range(0, len(R_est), step):
        sl = slice(i, i + step)
        x_est = _transform(pts, R_est[sl], t_est[sl])[:, None]  # (p, 1, N, 3)
        x_gt = _transform(pts, R_gt_sym[sl], t_gt_sym[sl])  # (p, S, N, 3)
        if K is not None:
            x_est, x_gt = _project(x_est, K[sl, None]), _project(x_gt, K[sl, None])
        out[sl] = np.linalg.norm(x_est - x_gt, axis=-1).max(axis=-1).min(axis=-1)
    return out.reshape(batch)


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
        t_gt = np.einsum("...ij,sj->...si", R_gt, syms[:, :3, 3]) + t_gt[..., None, :]
        R_gt = np.einsum("...ij,sjk->...sik", R_gt, syms[:, :3, :3])
        R_est, t_est = R_est[..., None, :, :], t_est[..., None, :]
        box_est, box_gt = box_est[..., None, :, :], box_gt[..., None, :, :]
    # Corners of the estimated box in the ground-truth object frame: R_g^T (R_e c + t_e - t_g).
    corners = np.einsum("...ij,...nj->...ni", R_est, _box_corners(box_est)) + (t_est - t_gt)[..., None, :]
    corners = np.einsum("...ji,...nj->...ni", R_gt, corners)
    lo, hi = corners.min(axis=-2), corners.max(axis=-2)
    inter = np.prod(np.clip(np.minimum(hi, box_gt[..., 1, :]) - np.maximum(lo, box_gt[..., 0, :]), 0.0, None),
                    axis=-1)
    union = np.prod(hi - lo, axis=-1) + np.prod(box_gt[..., 1, :] - box_gt[..., 0, :], axis=-1) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou.max(axis=-1) if syms is not None else iou
