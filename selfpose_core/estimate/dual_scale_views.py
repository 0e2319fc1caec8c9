"""DSC-PoseNet's two views of an object (Yang et al., CVPR 2021, Sec. 4.3): the un-normalised window of a fixed
share of the image around the object and the normalised crop fitted to its predicted mask, and the inference
ensemble of the two. The ``dual_scale`` adaptation stage trains the pose network for these views.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from selfpose_core.data.crops import crop_affine, crop_to_image, cut_crop, square_box
from selfpose_core.errors import ModelError
from selfpose_core.geometry.pnp import solve_pnp_ransac
from selfpose_core.models.bundle import BundleObject
from selfpose_core.models.correspondences import network_correspondences
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.types import CameraIntrinsics


@dataclass(frozen=True, slots=True)
class DualScaleViews:
    """The two views of the inference ensemble: the un-normalised window's side as a ``context_fraction`` of the
    image height and the normalised crop's ``padding`` around the box (DSC's values by default, which are also the
    ``dual_scale`` stage's defaults ``context_fraction`` and ``normalized_padding``)."""

    context_fraction: float = 0.5
    padding: float = 1.3

    @classmethod
    def of_stage(cls, record: Mapping[str, Any], where: str) -> DualScaleViews:
        """The views the ``dual_scale`` stage trained for, from its provenance ``record`` (ModelError naming
        ``where`` and the missing setting when the record lacks one)."""
        config = record.get("config")
        values = []
        for key in ("context_fraction", "normalized_padding"):
            value = config.get(key) if isinstance(config, Mapping) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ModelError(f"{where}: the dual_scale stage's record has no number config.{key} (got "
                                 f"{value!r}); the views it trained for are unknown")
            values.append(float(value))
        return cls(*values)


def view_boxes(box: np.ndarray, image_height: int, context_fraction: float, padding: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """(un-normalised, normalised) square crop boxes (4,) for the object box ``box`` (4,): a window of side
    ``context_fraction * image_height`` (at least 1.1 x the box) centred on the object, and the box x ``padding``."""
    longest = max(box[2] - box[0], box[3] - box[1], 1.0)
    side = max(context_fraction * image_height, 1.1 * longest)
    return square_box(box, side / longest), square_box(box, padding)


@torch.no_grad()
def dual_scale_estimate(net: torch.nn.Module, objects: Sequence[BundleObject], image: np.ndarray,
                        K: CameraIntrinsics, box: np.ndarray, obj_index: int, *, context_fraction: float = 0.5,
                        padding: float = 1.3, mask_threshold: float = 0.5, pnp_threshold: float = 0.06
                        ) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The ensemble of the two scales at inference (DSC Sec. 4.3) for one object in a uint8 (H, W, 3) ``image``.

    The un-normalised window around ``box`` (4,) (e.g. the detector's box); the normalised crop bounds the mask
    predicted there (``box`` when it is empty); keypoints of both scales are averaged in the image (correspondence
    net: the correspondences of both are pooled) and PnP-RANSAC (inlier threshold ``pnp_threshold`` x the object
    box side) gives T_cam_obj (4, 4). Returns (T, info) or None when PnP fails; info holds ``normalized_box`` and
    per-scale keypoints (``keypoints_u``, ``keypoints_n``, keypoint net only).
    """
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    try:
        size = int(net.config.crop_size)
        u_box, _ = view_boxes(np.asarray(box, np.float64), K.height, context_fraction, padding)
        idx = torch.tensor([obj_index], device=dev)
        img_u, K_u = cut_crop(image, K, u_box, size)
        out_u = net(torch.from_numpy(img_u.transpose(2, 0, 1))[None].to(dev), idx)
        m = (torch.sigmoid(out_u["mask_logits"][0]) > mask_threshold).cpu().numpy().astype(np.uint8)
        full = cv2.warpAffine(m, crop_affine(u_box, m.shape[0]), (K.width, K.height),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        ys, xs = np.nonzero(full)
        mbox = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64) if len(xs) else np.asarray(box)
        n_box = square_box(mbox, padding)
        img_n, K_n = cut_crop(image, K, n_box, size)
        out_n = net(torch.from_numpy(img_n.transpose(2, 0, 1))[None].to(dev), idx)
        out_u, out_n = ({k: v.cpu() for k, v in out.items()} for out in (out_u, out_n))
        o = objects[obj_index]
        side = float(max(mbox[2] - mbox[0], mbox[3] - mbox[1], 1.0))
        info: dict[str, Any] = {"normalized_box": n_box}
        views = [(out_u, u_box), (out_n, n_box)]
        if isinstance(net, KeypointNet):
            kps = []
            for out, cb in views:
                kp = KeypointNet.keypoints(out, (torch.sigmoid(out["mask_logits"]) > mask_threshold).float())
                kps.append(crop_to_image(kp.double(), torch.as_tensor(cb)[None], size)[0].numpy())
            info["keypoints_u"], info["keypoints_n"] = kps
            pts3d, pts2d = o.keypoints, (kps[0] + kps[1]) / 2
            min_inliers = 5
        else:
            p3, p2 = [], []
            for out, cb in views:
                c = network_correspondences(net, out, idx, objects)
                keep = (c.weights[0] > 0).numpy()
                p3.append(c.pts3d[0].double().numpy()[keep])
                p2.append(crop_to_image(c.pts2d.double(), torch.as_tensor(cb)[None], size)[0].numpy()[keep])
            pts3d, pts2d = np.concatenate(p3), np.concatenate(p2)
            min_inliers = 6
        if len(pts3d) < min_inliers or not np.isfinite(pts2d).all():
            return None
        res = solve_pnp_ransac(pts3d, pts2d, K.K, reprojection_threshold=pnp_threshold * side, min_inliers=min_inliers)
        if not res.success:
            return None
        info["inliers"] = int(len(res.inliers))
        return res.T_cam_obj, info
    finally:
        net.train(was)
