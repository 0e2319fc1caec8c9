"""Perspective-n-Point with OpenCV: EPnP (inside RANSAC) followed by Levenberg-Marquardt refinement.

References: Lepetit, Moreno-Noguer, Fua, "EPnP: An Accurate O(n) Solution to the PnP Problem", IJCV 2009;
Fischler & Bolles, "Random Sample Consensus", CACM 1981. This is the inference-time solver (numpy, not
differentiable); :mod:`selfpose_core.geometry.pnp_diff` is the differentiable one used in training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from selfpose_core.geometry.projection import KLike, project
from selfpose_core.geometry.se3 import make_T
from selfpose_core.geometry.shapes import check_min_points, check_shape
from selfpose_core.types import CameraIntrinsics

log = logging.getLogger(__name__)

MIN_POINTS = 4


@dataclass(slots=True)
class PnPResult:
    """A PnP solution.

    ``T_cam_obj``: (4, 4) float64 pose of the object in the camera optical frame (identity when ``success`` is
    False); ``inliers``: (M,) int64 indices of the correspondences it explains; ``reprojection_error``: RMS
    pixel error over the inliers (inf when it failed).
    """

    T_cam_obj: np.ndarray
    inliers: np.ndarray
    success: bool
    reprojection_error: float


def _inputs(pts3d: np.ndarray, pts2d: np.ndarray, K: KLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts3d = np.ascontiguousarray(pts3d, dtype=np.float64)
    pts2d = np.ascontiguousarray(pts2d, dtype=np.float64)
    dims: dict[str, int] = {}
    check_shape(pts3d, ("N", 3), "pts3d", dims)
    check_shape(pts2d, ("N", 2), "pts2d", dims)
    check_min_points(len(pts3d), MIN_POINTS, "pts3d")
    K = np.asarray(K.K if isinstance(K, CameraIntrinsics) else K, dtype=np.float64)
    check_shape(K, (3, 3), "K")
    return pts3d, pts2d, K


def _failure() -> PnPResult:
    return PnPResult(np.eye(4), np.zeros(0, dtype=np.int64), False, float("inf"))


def _finish(pts3d: np.ndarray, pts2d: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray,
            inliers: np.ndarray) -> PnPResult:
    R, _ = cv2.Rodrigues(rvec)
    T = make_T(R, tvec.reshape(3))
    X_cam = pts3d[inliers] @ R.T + T[:3, 3]
    if not np.all(np.isfinite(T)) or np.median(X_cam[:, 2]) <= 0:
        log.debug("PnP solution is not finite or lies behind the camera")
        return _failure()
    err = project(K, X_cam) - pts2d[inliers]
    rms = float(np.sqrt(np.mean(np.sum(err * err, -1))))
    return PnPResult(T, inliers.astype(np.int64), True, rms)


def _refine(pts3d: np.ndarray, pts2d: np.ndarray, K: np.ndarray, rvec: np.ndarray,
            tvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-12)
    return cv2.solvePnPRefineLM(pts3d, pts2d, K, None, rvec.copy(), tvec.copy(), criteria=criteria)


def solve_pnp(pts3d: np.ndarray, pts2d: np.ndarray, K: KLike, *, refine: bool = True) -> PnPResult:
    """Pose from all correspondences ``pts3d`` (N, 3) object frame <-> ``pts2d`` (N, 2) pixels, N >= 4.

    EPnP on all points, then (``refine``) LM on the reprojection error. No outlier rejection: every point is
    an inlier. ``K`` is a (3, 3) matrix or :class:`CameraIntrinsics`; pixels must be undistorted.
    """
    pts3d, pts2d, K = _inputs(pts3d, pts2d, K)
    ok, rvec, tvec = cv2.solvePnP(pts3d, pts2d, K, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return _failure()
    if refine:
        rvec, tvec = _refine(pts3d, pts2d, K, rvec, tvec)
    return _finish(pts3d, pts2d, K, rvec, tvec, np.arange(len(pts3d)))


def solve_pnp_ransac(pts3d: np.ndarray, pts2d: np.ndarray, K: KLike, *, reprojection_threshold: float = 3.0,
                     iterations: int = 200, confidence: float = 0.999, refine: bool = True,
                     min_inliers: int = MIN_POINTS) -> PnPResult:
    """Robust pose from correspondences ``pts3d`` (N, 3) <-> ``pts2d`` (N, 2) that may contain outliers.

    OpenCV ``solvePnPRansac`` with ``SOLVEPNP_EPNP`` (inliers: reprojection error < ``reprojection_threshold``
    pixels), then (``refine``) ``solvePnPRefineLM`` on the inliers and a final inlier set at the refined pose.
    ``success`` is False when RANSAC finds no model, fewer than ``min_inliers`` inliers, or a pose behind the
    camera. OpenCV's RANSAC sampler is seeded with a fixed seed, so results are repeatable.
    """
    pts3d, pts2d, K = _inputs(pts3d, pts2d, K)
    ok, rvec, tvec, inl = cv2.solvePnPRansac(pts3d, pts2d, K, None, iterationsCount=iterations,
                                             reprojectionError=reprojection_threshold, confidence=confidence,
                                             flags=cv2.SOLVEPNP_EPNP)
    if not ok or inl is None or len(inl) < max(min_inliers, MIN_POINTS):
        log.debug("PnP RANSAC found no model with >= %d inliers", min_inliers)
        return _failure()
    inliers = inl.reshape(-1)
    for _ in range(2 if refine else 0):  # refine on the inliers, re-select them, refine again if they changed
        rvec, tvec = _refine(pts3d[inliers], pts2d[inliers], K, rvec, tvec)
        R, _ = cv2.Rodrigues(rvec)
        err = project(K, pts3d @ R.T + tvec.reshape(3)) - pts2d
        refined = np.flatnonzero(np.sum(err * err, -1) < reprojection_threshold ** 2)
        if len(refined) < max(min_inliers, MIN_POINTS) or np.array_equal(refined, inliers):
            break
        inliers = refined
    return _finish(pts3d, pts2d, K, rvec, tvec, inliers)
