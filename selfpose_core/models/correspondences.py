"""The 2D-3D correspondences either pose network's output encodes (for PnP at inference and in training)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from selfpose_core.models.backbones import pixel_centres
from selfpose_core.models.bundle import BundleObject
from selfpose_core.models.keypoint_net import KeypointNet


@dataclass(slots=True)
class Correspondences:
    """2D-3D pairs of B crops: ``pts3d`` (B, N, 3) object frame, ``pts2d`` (B, N, 2) crop pixels, ``weights``
    (B, N) >= 0."""

    pts3d: torch.Tensor
    pts2d: torch.Tensor
    weights: torch.Tensor


def network_correspondences(net: torch.nn.Module, out: dict[str, torch.Tensor], obj_index: torch.Tensor,
                            objects: Sequence[BundleObject], *, mask_threshold: float = 0.5,
                            error_scale: float = 0.1) -> Correspondences:
    """The 2D-3D correspondences a pose network's ``out`` (its forward output on B crops) encodes.

    Keypoint net: keypoints by Eq. 3 over the soft foreground (mask probabilities), unit weights. Correspondence
    net: every output cell; weight = mask probability x exp(-predicted error / ``error_scale``), 0 below
    ``mask_threshold`` (all cells keep their soft weight when fewer than 6 pass).
    """
    if isinstance(net, torch.nn.parallel.DistributedDataParallel):
        net = net.module
    b = obj_index.shape[0]
    prob = torch.sigmoid(out["mask_logits"])
    if isinstance(net, KeypointNet):
        kp = KeypointNet.keypoints(out, prob)
        X = torch.as_tensor(np.stack([objects[int(k)].keypoints for k in obj_index]), dtype=kp.dtype,
                            device=kp.device)
        return Correspondences(X, kp, torch.ones(kp.shape[:2], dtype=kp.dtype, device=kp.device))
    coords = out["coords"]
    _, _, h, w = coords.shape
    stride = net.config.backbone.out_stride
    centre = torch.as_tensor(np.stack([objects[int(k)].coord_centre for k in obj_index]), dtype=coords.dtype,
                             device=coords.device)
    half = torch.as_tensor(np.stack([objects[int(k)].coord_half_extent for k in obj_index]), dtype=coords.dtype,
                           device=coords.device)
    X = coords.reshape(b, 3, h * w).transpose(1, 2) * half[:, None] + centre[:, None]
    uv = pixel_centres(h, w, stride, coords.device, coords.dtype).reshape(1, h * w, 2).expand(b, -1, -1)
    p = prob.reshape(b, h * w)
    wgt = p * torch.exp(-out["error"].reshape(b, h * w) / error_scale)
    hard = p > mask_threshold
    enough = hard.sum(-1, keepdim=True) >= 6
    wgt = torch.where(enough & ~hard, torch.zeros_like(wgt), wgt)
    return Correspondences(X, uv, wgt)
