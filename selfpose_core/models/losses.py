"""Training losses of the detector and the two pose networks.

Symmetric objects: targets may carry a leading symmetry dimension S (one target per symmetry transform of the
object, identity first); the loss takes, per sample, the minimum over S (Pix2Pose's transformer loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from selfpose_core.errors import ShapeError
from selfpose_core.models.detector import SIZE_UNIT


def _with_sym(gt: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    """Add a symmetry dimension (B, S, ...) when ``gt`` has the plain shape with ``ndim`` dimensions."""
    if gt.ndim == ndim:
        return gt.unsqueeze(1)
    if gt.ndim != ndim + 1:
        raise ShapeError(f"{name} must have {ndim} or {ndim + 1} dimensions (with a symmetry axis), got {tuple(gt.shape)}")
    return gt


def keypoint_losses(keypoints: torch.Tensor, votes: torch.Tensor, gt: torch.Tensor, scale: torch.Tensor,
                    foreground: torch.Tensor, sigma: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DSC-PoseNet Eq. 4 (keypoint loss) and Eq. 5 (offset loss), smooth-l1 of errors normalised by sigma * S.

    Args:
        keypoints: (B, N, 2) attention-averaged keypoints (Eq. 3).
        votes: (B, N, 2, h, w) per-pixel keypoint votes.
        gt: (B, N, 2) or (B, S, N, 2) ground-truth keypoints (per symmetry transform).
        scale: (B,) object scale S, the longest side of the object's box in the same pixels.
        foreground: (B, h, w) the foreground O over which Eq. 5 sums (averaged here per sample).
        sigma: the scale factor sigma.

    Returns:
        (L_key, L_off), each summed over keypoints and averaged over the batch; the symmetry variant with the
        smallest L_key is used for both.
    """
    gt = _with_sym(gt, 3, "gt keypoints")
    b, s, n, _ = gt.shape
    if keypoints.shape != (b, n, 2) or votes.shape[:3] != (b, n, 2) or scale.shape != (b,):
        raise ShapeError(f"keypoint_losses: keypoints {tuple(keypoints.shape)}, votes {tuple(votes.shape)}, "
                         f"scale {tuple(scale.shape)} do not match gt {tuple(gt.shape)}")
    norm = (sigma * scale.clamp_min(1.0)).view(b, 1, 1, 1)
    key = F.smooth_l1_loss((keypoints.unsqueeze(1) - gt) / norm, torch.zeros_like(gt), reduction="none")
    key = key.sum(dim=(2, 3))  # (B, S)
    best = key.argmin(dim=1)
    rows = torch.arange(b, device=gt.device)
    gt_best = gt[rows, best]  # (B, N, 2)
    h, w = votes.shape[-2:]
    err = (votes - gt_best.view(b, n, 2, 1, 1)) / norm.view(b, 1, 1, 1, 1)
    off = F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none").sum(dim=(1, 2))  # (B, h, w)
    fg = foreground.to(off.dtype)
    off = (off * fg).sum(dim=(1, 2)) / fg.sum(dim=(1, 2)).clamp_min(1.0)
    return key[rows, best].mean(), off.mean()


def mask_loss(mask_logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of (B, h, w) logits against a (B, h, w) {0, 1} mask; ``valid`` (B, h, w) excludes pixels."""
    loss = F.binary_cross_entropy_with_logits(mask_logits, mask.to(mask_logits.dtype), reduction="none")
    if valid is None:
        return loss.mean()
    v = valid.to(loss.dtype)
    return (loss * v).sum() / v.sum().clamp_min(1.0)


def coordinate_losses(coords: torch.Tensor, error: torch.Tensor, gt: torch.Tensor, silhouette: torch.Tensor,
                      visible: torch.Tensor, beta: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pix2Pose object-coordinate loss and confidence (error prediction) loss.

    Args:
        coords: (B, 3, h, w) predicted normalised coordinates.
        error: (B, h, w) predicted error.
        gt: (B, 3, h, w) or (B, S, 3, h, w) target coordinates (per symmetry transform).
        silhouette: (B, h, w) the object's full (amodal) silhouette, where coordinates are supervised.
        visible: (B, h, w) its visible part, weighted by ``beta`` (Pix2Pose weights foreground errors by 3).
        beta: weight of the visible pixels.

    Returns:
        (L_coord, L_error): mean absolute coordinate error (the best symmetry variant per sample), and the L1 error of
        the predicted error against the detached per-pixel mean absolute coordinate error.
    """
    gt = _with_sym(gt, 4, "gt coordinates")
    b = gt.shape[0]
    if coords.shape != gt.shape[:1] + gt.shape[2:] or error.shape != silhouette.shape or silhouette.shape != (
            b,) + gt.shape[-2:]:
        raise ShapeError(f"coordinate_losses: coords {tuple(coords.shape)}, error {tuple(error.shape)}, silhouette "
                         f"{tuple(silhouette.shape)} do not match gt {tuple(gt.shape)}")
    weight = silhouette.to(coords.dtype) * (1.0 + (beta - 1.0) * visible.to(coords.dtype))  # (B, h, w)
    abs_err = (coords.unsqueeze(1) - gt).abs().mean(dim=2)  # (B, S, h, w)
    per_sym = (abs_err * weight.unsqueeze(1)).sum(dim=(2, 3)) / weight.sum(dim=(1, 2)).clamp_min(1.0).unsqueeze(1)
    best = per_sym.argmin(dim=1)
    rows = torch.arange(b, device=gt.device)
    err_map = abs_err[rows, best].detach()
    sil = silhouette.to(coords.dtype)
    l_err = ((error - err_map).abs() * sil).sum() / sil.sum().clamp_min(1.0)
    return per_sym[rows, best].mean(), l_err


def centre_heatmap(boxes: torch.Tensor, present: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """CenterNet targets: (B, C, h, w) Gaussians at the box centres (peak exactly 1 at the centre's cell).

    Args:
        boxes: (B, C, 4) (x0, y0, x1, y1) input pixels.
        present: (B, C) bool, which objects are in the image.
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0 / stride  # (B, C, 2) in cells
    size = (boxes[..., 2:] - boxes[..., :2]) / stride
    sigma = (size.min(dim=-1).values / 6.0).clamp_min(0.7)  # (B, C)
    peak = centre.floor()
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype).view(1, 1, 1, w)
    d2 = (xs - peak[..., 0, None, None]) ** 2 + (ys - peak[..., 1, None, None]) ** 2
    heat = torch.exp(-d2 / (2.0 * sigma[..., None, None] ** 2))
    return heat * present.to(heat.dtype)[..., None, None]


def detector_losses(out: dict[str, torch.Tensor], boxes: torch.Tensor, present: torch.Tensor, masks: torch.Tensor,
                    stride: int, alpha: float = 2.0, gamma: float = 4.0) -> dict[str, torch.Tensor]:
    """CenterNet focal loss on the heatmap, L1 on the centre offset and log size at the true centre cell, BCE on the
    per-class visible masks.

    Args:
        out: Detector.forward output (maps of size h x w).
        boxes: (B, C, 4) amodal boxes in input pixels; present: (B, C) bool.
        masks: (B, C, h, w) visible masks at the output stride.

    Returns:
        dict with ``heatmap``, ``box`` and ``mask`` losses.
    """
    heat_logits = out["heatmap"]
    b, c, h, w = heat_logits.shape
    if boxes.shape != (b, c, 4) or present.shape != (b, c) or masks.shape != (b, c, h, w):
        raise ShapeError(f"detector_losses: boxes {tuple(boxes.shape)}, present {tuple(present.shape)}, masks "
                         f"{tuple(masks.shape)} do not match heatmap {tuple(heat_logits.shape)}")
    target = centre_heatmap(boxes, present, h, w, stride)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2.0 / stride
    cell = centre.floor()
    cx = cell[..., 0].long().clamp(0, w - 1)
    cy = cell[..., 1].long().clamp(0, h - 1)
    pos = torch.zeros_like(target)
    bi, ci = torch.meshgrid(torch.arange(b, device=boxes.device), torch.arange(c, device=boxes.device), indexing="ij")
    pos[bi, ci, cy, cx] = present.to(pos.dtype)
    p = torch.sigmoid(heat_logits).clamp(1e-4, 1 - 1e-4)
    pos_loss = -torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = -torch.log(1 - p) * p ** alpha * (1 - target) ** gamma * (1 - pos)
    n_pos = pos.sum().clamp_min(1.0)
    l_heat = (pos_loss.sum() + neg_loss.sum()) / n_pos
    off_pred = out["offset"][bi, ci, :, cy, cx]  # (B, C, 2)
    size_pred = out["log_size"][bi, ci, :, cy, cx]
    size_gt = torch.log(((boxes[..., 2:] - boxes[..., :2]) / SIZE_UNIT).clamp_min(1e-3))
    pres = present.to(off_pred.dtype).unsqueeze(-1)
    l_box = (((off_pred - (centre - cell)).abs() + (size_pred - size_gt).abs()) * pres).sum() / n_pos
    l_mask = F.binary_cross_entropy_with_logits(out["mask_logits"], masks.to(heat_logits.dtype))
    return {"heatmap": l_heat, "box": l_box, "mask": l_mask}
