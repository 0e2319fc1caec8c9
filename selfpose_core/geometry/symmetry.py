"""Object symmetries: the set of symmetry transforms, the symmetry-equivalent pose closest to an estimate,
and a torch min-over-symmetries loss.

A symmetry transform ``S`` (4x4, object frame) leaves the object's appearance unchanged, so the poses
``T_cam_obj`` and ``T_cam_obj @ S`` look the same in every image. Conventions follow BOP's models_info
(``symmetries_discrete``, ``symmetries_continuous`` with axis and offset) and bop_toolkit's
``get_symmetry_transformations`` (continuous axes sampled, combined with the discrete transforms), but here in
metres and with ``Symmetry`` records (selfpose_core.types).
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np
import torch

from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import make_T, rotation_angle, skew, so3_exp
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.types import Symmetry

SymLike = Union[Symmetry, np.ndarray]


def _axes(sym: Symmetry) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i, (axis, offset) in enumerate(sym.continuous):
        axis = np.asarray(axis, dtype=np.float64).reshape(-1)
        offset = np.asarray(offset, dtype=np.float64).reshape(-1)
        norm = np.linalg.norm(axis) if axis.shape == (3,) else 0.0
        if norm < 1e-12 or offset.shape != (3,):
            raise ConfigError(f"symmetry continuous[{i}]: axis must be a non-zero 3-vector and offset a 3-vector, "
                              f"got axis {axis.tolist()} offset {offset.tolist()}")
        out.append((axis / norm, offset))
    return out


def _rotations_about(axis: np.ndarray, offset: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Transforms (A, 4, 4) rotating by ``angles`` (A,) about ``axis`` through the point ``offset``."""
    R = so3_exp(angles[:, None] * axis)
    return make_T(R, offset - R @ offset)


def _discrete(sym: Symmetry) -> np.ndarray:
    D = np.asarray(sym.discrete, dtype=np.float64).reshape(-1, 4, 4) if np.size(sym.discrete) else np.zeros((0, 4, 4))
    return np.concatenate([np.eye(4)[None], D], 0)


def symmetry_transforms(sym: Symmetry, n_continuous: int = 36) -> np.ndarray:
    """All symmetry transforms ``(S, 4, 4)`` of ``sym``, identity first, in bop_toolkit's order.

    As bop_toolkit's ``misc.get_symmetry_transformations`` (with ``n_continuous = ceil(pi / max_sym_disc_step)``):
    the continuous samples are the rotations by ``2 pi k / n_continuous`` (k = 0 .. n_continuous - 1) about each
    continuous axis through its offset (the samples of several axes are pooled, not multiplied), and the result
    is ``C @ D`` for every discrete transform ``D`` (identity first) and every continuous sample ``C``; without
    continuous axes it is the identity followed by the discrete transforms. Duplicates are not removed.
    """
    transforms = _discrete(sym)
    axes = _axes(sym)
    if not axes:
        return transforms
    angles = 2.0 * np.pi * np.arange(n_continuous) / n_continuous
    C = np.concatenate([_rotations_about(axis, offset, angles) for axis, offset in axes])
    return (C[None] @ transforms[:, None]).reshape(-1, 4, 4)


def closest_symmetric_pose(T_est: np.ndarray, T_gt: np.ndarray, sym: SymLike, *,
                           n_continuous: int = 36) -> np.ndarray:
    """The pose ``(*, 4, 4)`` among ``T_gt @ S`` (S a symmetry of ``sym``) closest in rotation to ``T_est``.

    ``T_est``, ``T_gt``: ``(*, 4, 4)``; ``sym``: a :class:`Symmetry` or explicit transforms ``(S, 4, 4)``.
    Closeness is the geodesic rotation angle; the translation follows from the chosen ``S`` (it moves when the
    symmetry axis does not pass through the object origin). With discrete symmetries and at most one continuous
    axis the result is exact (the best angle about the axis is solved in closed form,
    ``theta = atan2(tr(M [a]x), tr(M) - a^T M a)`` with ``M = D_R R_est^T R_gt``); with two or more continuous
    axes it is the best of ``symmetry_transforms(sym, n_continuous)``. Use it to align estimates of a symmetric
    object before averaging them, or to pick the ground-truth pose a symmetric loss should compare against.
    """
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    check_shape(T_est, ("*", 4, 4), "T_est")
    check_shape(T_gt, ("*", 4, 4), "T_gt")
    if isinstance(sym, Symmetry) and len(sym.continuous) == 1:
        D = _discrete(sym)
        (axis, offset), = _axes(sym)
        M = D[..., :3, :3] @ (np.swapaxes(T_est[..., None, :3, :3], -1, -2) @ T_gt[..., None, :3, :3])
        aMa = np.einsum("i,...ij,j->...", axis, M, axis)
        tr = np.trace(M, axis1=-2, axis2=-1)
        tr_skew = np.einsum("...ij,ji->...", M, skew(axis))
        theta = np.arctan2(tr_skew, tr - aMa)  # (*, D)
        C = _rotations_about(axis, offset, theta.reshape(-1)).reshape(theta.shape + (4, 4))
        S = C @ D
    else:
        S = symmetry_transforms(sym, n_continuous) if isinstance(sym, Symmetry) else np.asarray(sym, np.float64)
        check_shape(S, ("S", 4, 4), "sym")
    candidates = T_gt[..., None, :, :] @ S
    best = rotation_angle(T_est[..., None, :, :], candidates).argmin(-1)
    return np.take_along_axis(candidates, best[..., None, None, None], -3)[..., 0, :, :]


def _mean_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(pred - target, dim=-1).mean(-1)


def min_over_symmetries(pred_points: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor,
                        model_points: torch.Tensor, transforms: torch.Tensor | np.ndarray,
                        point_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetry-aware point loss: ``min_S loss(pred, R_gt (S X) + t_gt)`` per sample, and the minimising index.

    Args:
        pred_points: predicted camera-frame points ``(B, N, 3)`` (e.g. the model points moved by the predicted pose).
        R_gt, t_gt: target poses ``(B, 3, 3)``, ``(B, 3)``.
        model_points: the object points ``(N, 3)`` or ``(B, N, 3)`` in the object frame.
        transforms: symmetry transforms ``(S, 4, 4)`` (from :func:`symmetry_transforms`; identity included).
        point_loss: maps ``pred (B, 1, N, 3)``, ``target (B, S, N, 3)`` to ``(B, S)``; default the mean Euclidean
            distance (ADD). Pass e.g. a Huber loss for Sock et al.'s supervised term.

    Returns ``(loss (B,), index (B,) int64)``; the gradient flows through the minimising symmetry only.
    """
    check_shape(pred_points, ("B", "N", 3), "pred_points")
    S = torch.as_tensor(transforms, dtype=pred_points.dtype, device=pred_points.device)
    check_shape(S, ("S", 4, 4), "transforms")
    X = model_points if model_points.ndim == 3 else model_points[None]
    Xs = X[:, None] @ S[:, :3, :3].transpose(-1, -2) + S[:, None, :3, 3]  # (B|1, S, N, 3)
    targets = Xs @ R_gt[:, None].transpose(-1, -2) + t_gt[:, None, None, :]
    losses = (point_loss or _mean_distance)(pred_points[:, None], targets)
    best, index = losses.min(-1)
    return best, index
