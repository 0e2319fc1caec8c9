"""Category-level pose metrics of the NOCS protocol (Wang et al., CVPR'19), as SSC-6D reports them.

A category pose is a rigid ``T_cam_obj`` (4, 4) of the instance's NOCS frame (``selfpose_core.mesh.categories``:
y up, origin at the box centre) plus its size: the (3,) extents of its tight box in metres (NOCS' ``scale * size``).

- **3D IoU** (:func:`iou_3d_nocs`): each pose's box corners are moved into the camera frame and replaced by their
  axis-aligned hull there, and the IoU of the two hulls is taken. This is the NOCS evaluation code after the fix
  SSC-6D's "revised evaluation" refers to: the original took the hull's min/max over the wrong axis of its (3, 8)
  corner array (over x, y, z of each corner instead of over the corners), which made most IoUs meaningless. A hull
  in the camera frame is not the exact oriented-box IoU (a cube turned 45 deg about the optical axis scores 0.5
  against itself unturned); it is kept so that figures compare with published ones. For symmetric targets the
  estimate's box is also turned about its own y axis by ``2 pi k / 20`` (k = 0..19) and the best IoU counts.
- **Rotation error** (:func:`rotation_error_nocs`): the angle of ``R_est^T R_gt``; for symmetric targets only the
  angle between the two y (up) axes.
- **Symmetric targets** (:func:`is_symmetric_target`): bottle, bowl, can; a mug when its handle is not visible in
  that image (the NOCS rule; the caller says whether the handle is visible).
- **Targets of a simulated category scene** (:func:`category_targets`): from its BOP copy.
- **Average precision** (:func:`nocs_average_precision`): per image and category, estimates in decreasing score
  take the best unmatched target (3D IoU at least the threshold; for the n deg m cm criteria the target with the
  smallest sum of degrees and centimetres among those within both thresholds and with 3D IoU at least 0.1); AP is
  the area under the precision envelope (VOC all points) over all images; the mean is over the categories with
  targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from selfpose_core.data.bop import BopDataset
from selfpose_core.data.sim.category_objects import read_handle_visibility, read_nocs_instances
from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.eval.metrics import re
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.mesh.categories import CATEGORIES, SYMMETRIC_CATEGORIES

IOU_ROTATIONS = 20  # turns of the estimate about its y axis tried for symmetric targets (the NOCS evaluation's)
POSE_MATCH_MIN_IOU = 0.1  # 3D IoU an estimate needs with a target to be matched under an n deg m cm criterion
IOU_THRESHOLDS = {"iou25": 0.25, "iou50": 0.5, "iou75": 0.75}
POSE_THRESHOLDS = {"5deg2cm": (5.0, 2.0), "5deg5cm": (5.0, 5.0), "10deg2cm": (10.0, 2.0), "10deg5cm": (10.0, 5.0),
                   "10deg10cm": (10.0, 10.0)}
METRICS = tuple(IOU_THRESHOLDS) + tuple(POSE_THRESHOLDS)


def is_symmetric_target(category: str, handle_visible: bool = True) -> bool:
    """Whether the NOCS evaluation ignores rotation about the up axis for this target."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    return category in SYMMETRIC_CATEGORIES or (category == "mug" and not handle_visible)


def _pose(T: np.ndarray, name: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    check_shape(T, ("*", 4, 4), name)
    return T


def _size(size: np.ndarray, name: str) -> np.ndarray:
    size = np.asarray(size, dtype=np.float64)
    check_shape(size, ("*", 3), name)
    if not np.all(np.isfinite(size)) or np.any(size < 0):
        raise ShapeError(f"{name} must hold finite non-negative extents, got {size.reshape(-1, 3)[0].tolist()} ...")
    return size


def _hull(R: np.ndarray, t: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame axis-aligned hull (lo, hi) of boxes ``[-size/2, size/2]`` moved by (R, t): half extents
    ``|R| size / 2`` about ``t`` (the same as the min/max over the 8 moved corners)."""
    half = np.einsum("...ij,...j->...i", np.abs(R), size / 2)
    return t - half, t + half


def iou_3d_nocs(T_est: np.ndarray, size_est: np.ndarray, T_gt: np.ndarray, size_gt: np.ndarray,
                symmetric: bool | np.ndarray = False) -> np.ndarray:
    """3D IoU of the NOCS evaluation (revised): camera-frame axis-aligned hulls of the two boxes.

    Args:
        T_est, T_gt: (*, 4, 4) rigid poses of the NOCS frames in the camera frame.
        size_est, size_gt: (*, 3) box extents in metres (boxes centred on the frame origin).
        symmetric: bool or (*,) bool: the best IoU over :data:`IOU_ROTATIONS` turns of the estimate about its y axis.
    Returns: (*,) IoU in [0, 1].
    """
    T_est, T_gt = _pose(T_est, "T_est"), _pose(T_gt, "T_gt")
    size_est, size_gt = _size(size_est, "size_est"), _size(size_gt, "size_gt")
    try:
        batch = np.broadcast_shapes(T_est.shape[:-2], T_gt.shape[:-2], size_est.shape[:-1], size_gt.shape[:-1],
                                    np.shape(symmetric))
    except ValueError as exc:
        raise ShapeError(f"batch shapes do not broadcast: T_est {T_est.shape}, size_est {size_est.shape}, "
                         f"T_gt {T_gt.shape}, size_gt {size_gt.shape}, symmetric {np.shape(symmetric)}") from exc
    a = 2 * np.pi * np.arange(IOU_ROTATIONS) / IOU_ROTATIONS
    c, s, z, o = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    Ry = np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)  # (K, 3, 3)
    lo_e, hi_e = _hull(T_est[..., None, :3, :3] @ Ry, T_est[..., None, :3, 3], size_est[..., None, :])
    lo_g, hi_g = _hull(T_gt[..., :3, :3], T_gt[..., :3, 3], size_gt)
    lo_g, hi_g = lo_g[..., None, :], hi_g[..., None, :]
    inter = np.prod(np.clip(np.minimum(hi_e, hi_g) - np.maximum(lo_e, lo_g), 0.0, None), axis=-1)
    union = np.prod(hi_e - lo_e, axis=-1) + np.prod(hi_g - lo_g, axis=-1) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)  # (*, K)
    iou = np.broadcast_to(iou, batch + (IOU_ROTATIONS,))
    return np.where(np.broadcast_to(symmetric, batch), iou.max(axis=-1), iou[..., 0])


def rotation_error_nocs(R_est: np.ndarray, R_gt: np.ndarray, symmetric: bool | np.ndarray = False) -> np.ndarray:
    """Rotation error in degrees, (*,): the angle of ``R_est^T R_gt``, or for symmetric targets the angle between
    the y (up) axes ``R_est[:, 1]`` and ``R_gt[:, 1]``. R_est, R_gt: (*, 3, 3)."""
    R_est, R_gt = np.asarray(R_est, dtype=np.float64), np.asarray(R_gt, dtype=np.float64)
    check_shape(R_est, ("*", 3, 3), "R_est")
    check_shape(R_gt, ("*", 3, 3), "R_gt")
    up = np.einsum("...i,...i->...", R_est[..., :, 1], R_gt[..., :, 1])
    up /= np.linalg.norm(R_est[..., :, 1], axis=-1) * np.linalg.norm(R_gt[..., :, 1], axis=-1)
    about_up = np.degrees(np.arccos(np.clip(up, -1.0, 1.0)))
    return np.where(symmetric, about_up, re(R_est, R_gt))


def translation_error_cm(t_est: np.ndarray, t_gt: np.ndarray) -> np.ndarray:
    """Distance between the box centres in centimetres, (*,); t_est, t_gt: (*, 3) metres."""
    t_est, t_gt = np.asarray(t_est, dtype=np.float64), np.asarray(t_gt, dtype=np.float64)
    check_shape(t_est, ("*", 3), "t_est")
    check_shape(t_gt, ("*", 3), "t_gt")
    return 100.0 * np.linalg.norm(t_est - t_gt, axis=-1)


@dataclass(slots=True)
class CategoryPose:
    """An estimate or a target of one category instance in one image.

    T_cam_obj: (4, 4) pose of the NOCS frame; size: (3,) box extents in metres; score: confidence (estimates);
    handle_visible: whether a mug's handle can be seen in this image (targets; decides the mug's symmetry).
    """

    image_id: int | tuple[int, int]  # (scene_id, im_id) for BOP data
    category: str
    T_cam_obj: np.ndarray
    size: np.ndarray
    score: float = 1.0
    handle_visible: bool = True


def category_targets(bop: BopDataset, min_visib_fract: float = 0.0) -> list[CategoryPose]:
    """The category instances of a BOP split as NOCS targets, image ids ``(scene_id, im_id)``.

    The category instances are those listed in ``models/nocs_instances.json`` (written by ``selfpose simulate
    --categories``, with their category and NOCS size; their poses are those of the NOCS frame); a split without
    that file has none. A mug's handle visibility comes from the scene's ``scene_handle_visibility.json`` (visible
    when absent).
    Instances whose visible fraction is not above ``min_visib_fract`` (entirely hidden ones, by default) are left
    out; an unknown fraction (-1) is kept.
    """
    instances = read_nocs_instances(bop.models_dir)
    out = []
    for scene_id in bop.scene_ids:
        handles = read_handle_visibility(bop.scene_dir(scene_id))
        for sample in bop.samples(scene_id, load_depth=False, load_masks=False):
            for g in sample.gt:
                if g.obj_id in instances and (g.visib_fract > min_visib_fract or g.visib_fract == -1):
                    category, size = instances[g.obj_id]
                    out.append(CategoryPose((scene_id, sample.im_id), category, g.T_cam_obj, size, 1.0,
                                            handles.get(sample.im_id, {}).get(g.obj_id, True)))
    return out


def average_precision(matched: np.ndarray, scores: np.ndarray, n_targets: int) -> float:
    """VOC all-point AP of estimates ``matched`` (E,) bool with ``scores`` (E,) against ``n_targets`` targets."""
    if n_targets == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(matched, dtype=bool)[order])
    precision = np.concatenate([[0.0], tp / np.arange(1, len(tp) + 1), [0.0]])
    recall = np.concatenate([[0.0], tp / n_targets, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[step] - recall[step - 1]) * precision[step]))


def _match_image(est: list[CategoryPose], tgt: list[CategoryPose]) -> dict[str, np.ndarray]:
    """For one image and category: which estimates (in decreasing score) are matched, per metric -> (E,) bool."""
    order = sorted(range(len(est)), key=lambda i: -est[i].score)
    est = [est[i] for i in order]
    out = {m: np.zeros(len(est), dtype=bool) for m in METRICS}
    if not est or not tgt:
        return {m: v[np.argsort(order)] for m, v in out.items()}
    Te, Tg = np.stack([e.T_cam_obj for e in est]), np.stack([g.T_cam_obj for g in tgt])
    se, sg = np.stack([e.size for e in est]), np.stack([g.size for g in tgt])
    sym = np.array([is_symmetric_target(g.category, g.handle_visible) for g in tgt])
    iou = iou_3d_nocs(Te[:, None], se[:, None], Tg[None], sg[None], sym[None])  # (E, G)
    deg = rotation_error_nocs(Te[:, None, :3, :3], Tg[None, :, :3, :3], sym[None])
    cm = translation_error_cm(Te[:, None, :3, 3], Tg[None, :, :3, 3])
    for name, thr in IOU_THRESHOLDS.items():
        taken = np.zeros(len(tgt), dtype=bool)
        for i in range(len(est)):
            cand = np.where(taken | (iou[i] < thr), -1.0, iou[i])
            j = int(np.argmax(cand))
            if cand[j] >= 0:
                taken[j], out[name][i] = True, True
    for name, (d, c) in POSE_THRESHOLDS.items():
        taken = np.zeros(len(tgt), dtype=bool)
        for i in range(len(est)):
            ok = ~taken & (deg[i] <= d) & (cm[i] <= c) & (iou[i] >= POSE_MATCH_MIN_IOU)
            if ok.any():
                j = int(np.argmin(np.where(ok, deg[i] + cm[i], np.inf)))
                taken[j], out[name][i] = True, True
    return {m: v[np.argsort(order)] for m, v in out.items()}


def nocs_average_precision(estimates: list[CategoryPose], targets: list[CategoryPose]) -> dict[str, dict[str, float]]:
    """NOCS AP per category and metric (:data:`METRICS`), in [0, 1], plus ``"mean"`` over the categories with
    targets. Categories with estimates but no target are left out (their AP is undefined)."""
    for where, items in (("estimate", estimates), ("target", targets)):
        for p in items:
            if p.category not in CATEGORIES:
                raise ConfigError(f"{where} in image {p.image_id}: unknown category {p.category!r} "
                                  f"(known: {', '.join(CATEGORIES)})")
    result: dict[str, dict[str, float]] = {}
    for cat in CATEGORIES:
        tgt = [g for g in targets if g.category == cat]
        if not tgt:
            continue
        est = [e for e in estimates if e.category == cat]
        matched = {m: [] for m in METRICS}
        for image in sorted({e.image_id for e in est}):
            found = _match_image([e for e in est if e.image_id == image], [g for g in tgt if g.image_id == image])
            for m in METRICS:
                matched[m].append(found[m])
        scores = np.array([e.score for image in sorted({e.image_id for e in est}) for e in est
                           if e.image_id == image])
        result[cat] = {m: average_precision(np.concatenate(matched[m]) if matched[m] else np.zeros(0, dtype=bool),
                                            scores, len(tgt)) for m in METRICS}
    if result:
        result["mean"] = {m: float(np.mean([r[m] for r in result.values()])) for m in METRICS}
    return result
