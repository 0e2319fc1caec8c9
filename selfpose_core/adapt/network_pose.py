"""Differentiable poses from either pose network, and the pose-space losses the self-supervised stages share.

Both networks end in 2D-3D correspondences solved by the differentiable PnP
(:func:`selfpose_core.geometry.pnp_diff.solve_pnp_differentiable`, BPnP): the keypoint network's attention-averaged
keypoints (DSC-PoseNet Eq. 3) against the object's 9 keypoints, or the correspondence network's foreground pixels
against their predicted object coordinates (weights: mask probability x confidence). Gradients reach the network
outputs through the implicit-function backward of the PnP.
"""
from __future__ import annotations

from collections.abc import Sequence
import torch

from selfpose_core.geometry.pnp_diff import solve_pnp_differentiable
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.geometry.symmetry import min_over_symmetries
from selfpose_core.models.bundle import BundleObject
from selfpose_core.models.correspondences import network_correspondences


def network_pose(net: torch.nn.Module, out: dict[str, torch.Tensor], obj_index: torch.Tensor, K: torch.Tensor,
                 objects: Sequence[BundleObject], *, min_depth: float = 0.02
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(R (B, 3, 3), t (B, 3), valid (B,) bool)``: T_cam_obj from the network output on B crops with crop cameras
    ``K`` (B, 3, 3), differentiable. ``valid``: finite and in front of the camera (t_z > ``min_depth``)."""
    check_shape(K, (obj_index.shape[0], 3, 3), "K")
    c = network_correspondences(net, out, obj_index, objects)
    R, t = solve_pnp_differentiable(c.pts3d, c.pts2d, K.to(c.pts2d.dtype), c.weights)
    valid = torch.isfinite(R).flatten(1).all(-1) & torch.isfinite(t).all(-1) & (t[:, 2] > min_depth)
    R = torch.where(valid[:, None, None], R, torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R))
    t = torch.where(valid[:, None], t, torch.tensor([0.0, 0.0, 1.0], dtype=t.dtype, device=t.device).expand_as(t))
    return R, t, valid


def plausible(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, size: int, diameters: torch.Tensor, *,
              max_offset: float = 0.5, size_range: tuple[float, float] = (0.15, 3.0)) -> torch.Tensor:
    """(B,) bool: the poses (B, 3, 3), (B, 3) put the object where a crop of ``size`` pixels with camera ``K``
    (B, 3, 3) could show it -- centre projected at most ``max_offset`` x size outside the crop, projected diameter
    within ``size_range`` x size. The self-supervised losses skip implausible poses (an untrained network's PnP
    can land anywhere, and losses at such poses are meaningless and huge)."""
    z = t[:, 2].clamp_min(1e-6)
    uv = (t[:, None] @ K.to(t.dtype).transpose(-1, -2))[:, 0]
    u, v = uv[:, 0] / z, uv[:, 1] / z
    lo, hi = -max_offset * size, (1 + max_offset) * size
    apparent = K[:, 0, 0].to(t.dtype) * diameters.to(t.dtype) / z
    ok = (u > lo) & (u < hi) & (v > lo) & (v < hi) & (t[:, 2] > 0)
    ok &= (apparent > size_range[0] * size) & (apparent < size_range[1] * size)
    return ok.detach()


def vertex_consistency(R_a: torch.Tensor, t_a: torch.Tensor, R_b: torch.Tensor, t_b: torch.Tensor,
                       points: torch.Tensor, symmetries: Sequence[torch.Tensor],
                       diameters: torch.Tensor) -> torch.Tensor:
    """Sock et al. Eq. 1: mean distance of the model points moved by pose a and by pose b, over the diameter.

    Args:
        R_a, t_a, R_b, t_b: poses (B, 3, 3), (B, 3).
        points: (B, P, 3) model vertices (object frame).
        symmetries: B tensors (S_i, 4, 4) of the objects' symmetry transforms (identity first); the loss is the
            minimum over them (a symmetric object's equivalent poses agree).
        diameters: (B,) object diameters.

    Returns: (B,) losses (0 when the poses agree up to a symmetry).
    """
    check_shape(points, (R_a.shape[0], "P", 3), "points")
    pa = points @ R_a.transpose(-1, -2) + t_a[:, None]
    out = []
    for i in range(len(points)):
        d, _ = min_over_symmetries(pa[i:i + 1], R_b[i:i + 1], t_b[i:i + 1], points[i], symmetries[i])
        out.append(d[0])
    return torch.stack(out) / diameters.to(pa.dtype)
