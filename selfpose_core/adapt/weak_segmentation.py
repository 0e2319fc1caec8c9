"""Weakly-supervised object segmentation from 2D boxes (DSC-PoseNet, Yang et al. CVPR 2021, Sec. 3.1, Eq. 1-2).

The segmentation network is a copy of the pose network (its visible-mask head; pre-trained on synthetic crops, as
DSC's segmenter is initialised on synthetic data). ``T`` rounds of:

1. pseudo labels for every box-annotated real crop: the network's foreground probability with test-time
   augmentation (input scales and left-right flips, averaged), set to background outside the box (the box removes
   outliers), and pixels with ``1 - sigma < P < sigma`` marked uncertain (Eq. 1, sigma = 0.7);
2. fine-tuning on the certain pixels (Eq. 2, binary cross-entropy; here class-balanced), mixed with the synthetic
   crops' masks.

The labels of the last round are the pseudo masks of the dual-scale stage. Boxes come from the consensus pseudo
labels (or the detector). Departure: DSC's segmenter starts from 50K PBR images; ours from a short synthetic
pre-training, so the first round fuses the network's probability with a GrabCut segmentation initialised from the
box (Rother et al. 2004; box-supervised pseudo masks as in Khoreva et al., "Simple Does It", CVPR 2017) and, when
the consensus rendered one, the pseudo visible mask: ``P0 = (1 - prior_weight) P_net + prior_weight mean(priors)``;
and later rounds keep part of the previous round's probabilities, ``P_t = (1 - m) P_net + m P_{t-1}``
(``label_momentum`` m; 0 = DSC), so that a round whose short fine-tuning under-fits does not undo the labels.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from selfpose_core.adapt.recording_crops import FrameStore, RecordingInstance, crop_batch, CropJitter
from selfpose_core.config_io import require_at_least
from selfpose_core.data.crops import crop_affine
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.models.losses import mask_loss
from selfpose_core.saved_state import fail, load_npz

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WeakSegmentationConfig:
    """``dual_scale.segmentation`` section (defaults: DSC-PoseNet where it says)."""

    iterations: int = 5  # T (DSC: 5); 0 = the first pseudo labels without fine-tuning
    sigma: float = 0.7  # reliable-confidence threshold of Eq. 1 (DSC: 0.7)
    steps_per_round: int = 50
    batch_size: int = 16
    synthetic_batch: int = 8
    lr: float = 1e-4
    tta_scales: tuple[float, ...] = (1.0, 0.75, 1.25)
    tta_flip: bool = True
    prior_weight: float = 0.5  # first round: weight of GrabCut (+ consensus mask) against the network
    label_momentum: float = 0.5  # later rounds: weight of the previous round's probabilities (0 = DSC)
    grabcut_iterations: int = 3
    crop_padding: float = 1.3

    def validate(self, where: str = "dual_scale.segmentation") -> None:
        require_at_least(self, ("batch_size", "grabcut_iterations"), 1, where)
        if self.iterations < 0 or self.steps_per_round < 0 or self.synthetic_batch < 0:
            raise ConfigError(f"{where}.iterations, steps_per_round and synthetic_batch must be >= 0")
        if not 0.5 <= self.sigma < 1:
            raise ConfigError(f"{where}.sigma must be in [0.5, 1), got {self.sigma}")
        for key in ("prior_weight", "label_momentum"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        if not self.tta_scales or any(s <= 0 for s in self.tta_scales):
            raise ConfigError(f"{where}.tta_scales must be positive, got {self.tta_scales}")


def box_cells(boxes: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    """(B, h, w) float: 1 where the centre of a stride-``stride`` output cell lies inside ``boxes`` (B, 4) (crop
    pixel edges)."""
    ys = (torch.arange(h, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(w, dtype=boxes.dtype) + 0.5) * stride
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] <= boxes[:, 3:4])  # (B, h)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] <= boxes[:, 2:3])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()


def grabcut_probability(image: np.ndarray, box: np.ndarray, iterations: int = 3, seed: int = 0,
                        min_fraction: float = 0.15) -> np.ndarray:
    """(H, W) float32 foreground probability of GrabCut initialised with ``box`` (4,) (pixel edges) on the uint8
    (H, W, 3) RGB ``image``: 0 sure background, 0.2 probable background, 0.8 probable foreground; 0.5 inside the
    box when GrabCut keeps less than ``min_fraction`` of the box as foreground (it lost the object)."""
    h, w = image.shape[:2]
    x0, y0 = int(np.clip(np.floor(box[0]), 0, w - 2)), int(np.clip(np.floor(box[1]), 0, h - 2))
    x1, y1 = int(np.clip(np.ceil(box[2]), x0 + 2, w)), int(np.clip(np.ceil(box[3]), y0 + 2, h))
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, (x0, y0, x1 - x0, y1 - y0), bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # degenerate colour statistics (e.g. a constant image)
        mask[:] = cv2.GC_BGD
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if fg.sum() < min_fraction * (x1 - x0) * (y1 - y0):  # GrabCut lost the object: no opinion inside the box
        inside = np.zeros((h, w), np.float32)
        inside[y0:y1, x0:x1] = 0.5
        return inside
    table = np.array([0.0, 1.0, 0.2, 0.8], np.float32)  # GC_BGD, GC_FGD, GC_PR_BGD, GC_PR_FGD
    return table[mask]


@torch.no_grad()
def tta_probability(net: torch.nn.Module, images: torch.Tensor, obj_index: torch.Tensor,
                    scales: Sequence[float] = (1.0,), flip: bool = True) -> torch.Tensor:
    """(B, h, w) foreground probability of ``net``'s mask head on ``images`` (B, 3, S, S), averaged over input
    ``scales`` (bilinear resize of the input, output resized back to h x w) and left-right flips. Runs in eval
    mode and restores the previous mode."""
    was_training = net.training
    net.eval()
    try:
        ref = net(images, obj_index)["mask_logits"]
        h, w = ref.shape[-2:]
        S = images.shape[-1]
        probs = []
        for s in scales:
            x = images if s == 1.0 else F.interpolate(images, size=(max(8, round(S * s)),) * 2, mode="bilinear",
                                                      align_corners=False)
            for flipped in ((False, True) if flip else (False,)):
                xi = x.flip(-1) if flipped else x
                logits = ref if (s == 1.0 and not flipped) else net(xi, obj_index)["mask_logits"]
                p = torch.sigmoid(logits)
                if flipped:
                    p = p.flip(-1)
                if p.shape[-2:] != (h, w):
                    p = F.interpolate(p[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                probs.append(p)
        return torch.stack(probs).mean(0)
    finally:
        net.train(was_training)


def pseudo_labels(prob: torch.Tensor, inside_box: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: ``(label (B, h, w) float {0, 1}, certain (B, h, w) bool)`` from the foreground probability ``prob``
    (B, h, w): background outside the box (``inside_box`` (B, h, w) in {0, 1}, certain there), uncertain where
    ``1 - sigma < P < sigma``."""
    check_shape(inside_box, tuple(prob.shape), "inside_box")
    p = prob * inside_box
    certain = (p <= 1 - sigma) | (p >= sigma)
    return (p >= 0.5).to(prob.dtype), certain


def segmentation_loss(mask_logits: torch.Tensor, label: torch.Tensor, certain: torch.Tensor) -> torch.Tensor:
    """Eq. 2: binary cross-entropy of the mask logits (B, h, w) against the pseudo label over the certain pixels,
    class-balanced: the mean over the certain foreground and the mean over the certain background pixels weigh
    equally (the certain background, which includes everything outside the box, outnumbers the foreground)."""
    bce = F.binary_cross_entropy_with_logits(mask_logits, label.to(mask_logits.dtype), reduction="none")
    c = certain.to(bce.dtype)
    fg, bg = c * label, c * (1 - label)
    terms = [(bce * m).sum() / m.sum() for m in (fg, bg) if float(m.sum()) > 0]
    return torch.stack(terms).mean() if terms else (bce * 0).sum()


@dataclass(slots=True)
class SegmentationLabels:
    """Pseudo foreground probabilities of the instances, each on its fixed crop ``crop_boxes[i]`` (image pixel
    edges) at the pose network's output resolution; uncertain pixels follow from ``sigma``."""

    crop_boxes: np.ndarray  # (N, 4)
    prob: np.ndarray  # (N, h, h) float32, 0 outside the box
    sigma: float

    def save(self, path) -> None:
        np.savez_compressed(path, crop_boxes=self.crop_boxes, prob=self.prob, sigma=np.float64(self.sigma))

    @classmethod
    def load(cls, path) -> SegmentationLabels:
        """Read a file written by :meth:`save`, checked (ResumeError naming the file and the array)."""
        what = "segmentation labels"
        d = load_npz(path, what, {"crop_boxes": ("f", 2), "prob": ("f", 3), "sigma": ("f", 0)})
        n = len(d["prob"])
        if d["crop_boxes"].shape != (n, 4) or d["prob"].shape[1] != d["prob"].shape[2]:
            raise fail(path, what, "arrays 'crop_boxes', 'prob'", f"have shapes {d['crop_boxes'].shape}, "
                                                                  f"{d['prob'].shape}; expected (N, 4), (N, h, h)")
        if not (np.isfinite(d["crop_boxes"]).all() and np.isfinite(d["prob"]).all()):
            raise fail(path, what, "arrays 'crop_boxes', 'prob'", "hold NaN/inf")
        sigma = float(d["sigma"])
        if not 0.5 <= sigma <= 1.0:
            raise fail(path, what, "array 'sigma'", f"must be in [0.5, 1], got {sigma}")
        return cls(d["crop_boxes"], d["prob"].astype(np.float32, copy=False), sigma)

    def in_crops(self, index: Sequence[int], crop_boxes: np.ndarray, out_size: int, crop_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The labels of instances ``index`` re-cut for new crops ``crop_boxes`` (B, 4) at ``out_size`` cells
        (crops of ``crop_size`` pixels): ``(label (B, o, o) float, certain (B, o, o) bool)``; outside the labelled
        crop counts as certain background (it is outside the box)."""
        h = self.prob.shape[-1]
        labels = []
        for i, cb in zip(index, crop_boxes):
            # label cell -> image pixel -> new crop cell (cells are crops of h pixels of the same boxes)
            A_old = np.vstack([crop_affine(self.crop_boxes[i], h), [0, 0, 1]])
            A_new = np.vstack([crop_affine(cb, out_size), [0, 0, 1]])
            M = (A_new @ np.linalg.inv(A_old))[:2]
            labels.append(cv2.warpAffine(self.prob[i], M, (out_size, out_size), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        p = torch.as_tensor(np.stack(labels))
        return pseudo_labels(p, torch.ones_like(p), self.sigma)


def _box_in_crop(box: np.ndarray, A: np.ndarray) -> np.ndarray:
    """(4,) pixel-edge box (image) -> pixel-edge box in the crop of the (2, 3) centre-convention affine ``A``."""
    corners = np.array([[box[0], box[1]], [box[2], box[3]]]) - 0.5
    return (corners @ A[:, :2].T + A[:, 2] + 0.5).reshape(4)


def _inside_box(instances: Sequence[RecordingInstance], crop_boxes: np.ndarray, crop_size: int, h: int,
                stride: int) -> torch.Tensor:
    boxes = []
    for inst, cb in zip(instances, crop_boxes):
        A = crop_affine(cb, crop_size)
        p = _box_in_crop(inst.box, A)
        boxes.append(p)
    return box_cells(torch.as_tensor(np.stack(boxes), dtype=torch.float32), h, h, stride)


def _priors(store: FrameStore, instances: Sequence[RecordingInstance], crop_boxes: np.ndarray, crop_size: int,
            h: int, iterations: int) -> torch.Tensor:
    """(B, h, h) mean of the GrabCut probability and (when present) the consensus' pseudo visible mask."""
    out = []
    for inst, cb in zip(instances, crop_boxes):
        A = crop_affine(cb, crop_size)
        img = cv2.warpAffine(store.images[inst.frame], A, (crop_size, crop_size), flags=cv2.INTER_LINEAR)
        box = _box_in_crop(inst.box, A)
        priors = [grabcut_probability(img, box, iterations)]
        if inst.mask is not None:
            priors.append(cv2.warpAffine(inst.mask.astype(np.float32), A, (crop_size, crop_size),
                                         flags=cv2.INTER_LINEAR))
        p = np.mean(priors, axis=0)
        out.append(cv2.resize(p, (h, h), interpolation=cv2.INTER_AREA))
    return torch.as_tensor(np.stack(out))


def weak_segmentation(pose_net: torch.nn.Module, store: FrameStore, instances: Sequence[RecordingInstance],
                      cfg: WeakSegmentationConfig, *, seed: int = 0, device: str = "cpu",
                      synthetic: Callable[[int], dict[str, torch.Tensor]] | None = None,
                      log_scalars: Callable[[int, dict[str, float]], None] | None = None) -> SegmentationLabels:
    """Run the ``cfg.iterations`` rounds (module docstring) with a copy of ``pose_net`` as segmentation network;
    ``pose_net`` itself is not changed. ``synthetic(i)`` returns a collated batch of synthetic crops (keys of
    SyntheticCrops) for fine-tuning step i (None: real pseudo labels only)."""
    cfg.validate()
    seg = copy.deepcopy(pose_net).to(device)
    if isinstance(seg, torch.nn.parallel.DistributedDataParallel):
        seg = seg.module
    crop_size = int(seg.config.crop_size)
    stride = int(seg.config.backbone.out_stride)
    h = crop_size // stride
    rng = np.random.default_rng([seed, 1])
    jitter = CropJitter(cfg.crop_padding, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0)
    fixed = crop_batch(store, instances, crop_size, rng, jitter, augment=False)
    crop_boxes = fixed["crop_box"].numpy()
    inside = _inside_box(instances, crop_boxes, crop_size, h, stride)
    priors = _priors(store, instances, crop_boxes, crop_size, h, cfg.grabcut_iterations) if cfg.prior_weight > 0 \
        else None
    opt = torch.optim.Adam([p for p in seg.parameters() if p.requires_grad], lr=cfg.lr)
    n = len(instances)
    step = 0
    prob = None
    for round_ in range(cfg.iterations + 1):
        chunks = []
        for a in range(0, n, 64):
            chunks.append(tta_probability(seg, fixed["image"][a:a + 64].to(device),
                                          fixed["obj_index"][a:a + 64].to(device), cfg.tta_scales,
                                          cfg.tta_flip).cpu())
        net_prob = torch.cat(chunks)
        if round_ == 0:
            prob = net_prob if priors is None else (1 - cfg.prior_weight) * net_prob + cfg.prior_weight * priors
        else:
            prob = (1 - cfg.label_momentum) * net_prob + cfg.label_momentum * prob
        prob = prob * inside
        label, certain = pseudo_labels(prob, inside, cfg.sigma)
        log.info("weak segmentation round %d: %.0f%% certain pixels, %.0f%% foreground", round_,
                 100 * float(certain.float().mean()), 100 * float(label.mean()))
        if round_ == cfg.iterations:
            break
        seg.train()
        for _ in range(cfg.steps_per_round):
            idx = rng.integers(0, n, cfg.batch_size)
            x, lab, cer = fixed["image"][idx], label[idx], certain[idx]
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            lab = torch.where(flip[:, None, None], lab.flip(-1), lab)
            cer = torch.where(flip[:, None, None], cer.flip(-1), cer)
            out = seg(x.to(device), fixed["obj_index"][idx].to(device))
            loss = segmentation_loss(out["mask_logits"], lab.to(device), cer.to(device))
            scalars = {"seg_real": float(loss.detach())}
            if synthetic is not None and cfg.synthetic_batch > 0:
                syn = synthetic(step)
                l_syn = mask_loss(seg(syn["image"].to(device), syn["obj_index"].to(device))["mask_logits"],
                                  syn["visible"].to(device))
                loss = loss + l_syn
                scalars["seg_synthetic"] = float(l_syn.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if log_scalars is not None:
                log_scalars(step, scalars | {"seg_round": round_})
    return SegmentationLabels(crop_boxes, prob.numpy().astype(np.float32), cfg.sigma)
