"""Object crops of recording frames for the self-supervised stages (no ground truth anywhere).

Where the objects are: the pseudo labels of ``multiview_consensus`` when they exist (amodal box, pose, visible mask,
confidence per frame and object), else the bundle's detector on every frame (boxes and scores only). Frames are
decoded once and kept in memory (RGB only). Crops are square boxes around the object box (``CameraIntrinsics``
pixel-edge convention, see :mod:`selfpose_core.data.crops`), jittered as in Sock et al.'s supplementary (box centre
moved by N(0, shift_std_px) pixels, side rescaled uniformly) and photometrically augmented.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from selfpose_core.data.backgrounds import photometric_augment
from selfpose_core.data.crops import cut_crop, square_box
from selfpose_core.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RecordingInstance:
    """One object in one recording frame."""

    frame: int
    obj_index: int
    box: np.ndarray  # (4,) amodal box (x0, y0, x1, y1), image pixels
    weight: float  # confidence in [0, 1]
    T_cam_obj: np.ndarray | None = None  # (4, 4) pseudo pose when the consensus gave one
    mask: np.ndarray | None = None  # (H, W) bool pseudo visible mask when the consensus gave one


@dataclass(slots=True)
class CropJitter:
    """Random crop placement and photometric augmentation (all zero = the plain square crop)."""

    padding: float = 1.3
    shift_std_px: float = 3.0
    scale: tuple[float, float] = (0.9, 1.1)
    colour_jitter: float = 0.15
    blur_prob: float = 0.2
    noise_std: float = 0.02


class FrameStore:
    """RGB images, intrinsics and camera poses of the recording frames that the instances use."""

    def __init__(self, ctx, frames: Sequence[int]) -> None:
        rec = ctx.recording
        self.images: dict[int, np.ndarray] = {}
        wanted = sorted({int(i) for i in frames})
        for i in wanted:
            self.images[i] = rec[i].rgb
        self.intrinsics = {i: rec.intrinsics(i) for i in wanted}
        poses = ctx.pseudo.T_world_cam if ctx.pseudo is not None else rec.poses
        self.T_world_cam = np.asarray(poses, np.float64)

    def __contains__(self, frame: int) -> bool:
        return frame in self.images


def recording_instances(ctx, *, min_confidence: float = 0.3, min_score: float = 0.3,
                        max_frames: int = 0) -> list[RecordingInstance]:
    """The object instances the self-supervised stages train on.

    With pseudo labels: those with confidence >= ``min_confidence``. Without: the bundle's detector on every frame
    (at most ``max_frames`` evenly spread frames when > 0), boxes with score >= ``min_score``.
    Raises DatasetError naming the recording when there is none.
    """
    rec = ctx.recording
    n = len(rec)
    frames = np.arange(n) if not max_frames or max_frames >= n else \
        np.unique(np.linspace(0, n - 1, max_frames).round().astype(np.int64))
    keep = set(frames.tolist())
    out: list[RecordingInstance] = []
    if ctx.pseudo is not None:
        for p in ctx.pseudo.confident(min_confidence):
            if p.frame in keep:
                out.append(RecordingInstance(p.frame, p.obj_index, np.asarray(p.box, np.float64), float(p.confidence),
                                             np.asarray(p.T_cam_obj, np.float64), p.mask))
    else:
        from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator

        modes = (ctx.bundle.detector.training, ctx.bundle.pose_net.training)
        est = PoseEstimator(ctx.bundle.path or ctx.work_dir, ctx.device, objects_config=ctx.objects_config,
                            config=EstimatorConfig(refine_depth=False, return_masks=False, depth_search=False),
                            bundle=ctx.bundle)
        for i in frames.tolist():
            scores, boxes = est.detect(rec[i].rgb)
            for k in np.nonzero(scores >= min_score)[0]:
                b = boxes[k]
                if b[2] > b[0] + 1 and b[3] > b[1] + 1:
                    out.append(RecordingInstance(int(i), int(k), b.astype(np.float64), float(scores[k])))
        ctx.bundle.detector.train(modes[0])
        ctx.bundle.pose_net.train(modes[1])
    if not out:
        raise DatasetError(f"recording {rec.path}: no object instance to adapt on (pseudo labels with confidence >= "
                           f"{min_confidence} or detections with score >= {min_score})")
    return out


def jittered_box(box: np.ndarray, rng: np.random.Generator, jitter: CropJitter, augment: bool = True) -> np.ndarray:
    """(4,) square crop box around ``box`` (4,), jittered when ``augment``."""
    if not augment:
        return square_box(box, jitter.padding)
    side = max(box[2] - box[0], box[3] - box[1], 1.0) * jitter.padding
    shift = rng.normal(0.0, jitter.shift_std_px, 2) / max(side / jitter.padding, 1.0)
    return square_box(box, jitter.padding, rng.uniform(*jitter.scale), (float(shift[0]), float(shift[1])))


def crop_batch(store: FrameStore, instances: Sequence[RecordingInstance], size: int, rng: np.random.Generator,
               jitter: CropJitter, augment: bool = True, boxes: Sequence[np.ndarray] | None = None
               ) -> dict[str, torch.Tensor]:
    """Crops of ``instances``: ``image`` (B, 3, S, S) float32, ``K`` (B, 3, 3) float32 crop cameras, ``obj_index``
    (B,) int64, ``crop_box`` (B, 4) float64, ``weight`` (B,) float32. ``boxes`` overrides the crop boxes."""
    imgs, Ks, cbs = [], [], []
    for j, inst in enumerate(instances):
        cb = boxes[j] if boxes is not None else jittered_box(inst.box, rng, jitter, augment)
        img, Kc = cut_crop(store.images[inst.frame], store.intrinsics[inst.frame], cb, size)
        if augment:
            img = photometric_augment(img, rng, jitter=jitter.colour_jitter, blur_prob=jitter.blur_prob,
                                      noise_std=jitter.noise_std)
        imgs.append(img)
        Ks.append(Kc)
        cbs.append(cb)
    return {"image": torch.from_numpy(np.ascontiguousarray(np.stack(imgs).transpose(0, 3, 1, 2))),
            "K": torch.as_tensor(np.stack(Ks), dtype=torch.float32),
            "obj_index": torch.as_tensor([i.obj_index for i in instances], dtype=torch.int64),
            "crop_box": torch.as_tensor(np.stack(cbs), dtype=torch.float64),
            "weight": torch.as_tensor([i.weight for i in instances], dtype=torch.float32)}

