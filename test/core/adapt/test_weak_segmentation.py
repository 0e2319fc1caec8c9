"""Weakly-supervised segmentation from boxes: pseudo labels (Eq. 1), box cells, GrabCut prior, test-time
augmentation, and the procedure on simulated frames (IoU against the box prior)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from selfpose_core.adapt.recording_crops import FrameStore, RecordingInstance
from selfpose_core.adapt.weak_segmentation import (WeakSegmentationConfig, box_cells, grabcut_probability,
                                                   pseudo_labels, segmentation_loss, tta_probability,
                                                   weak_segmentation)
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.crops import crop_affine

_spec = importlib.util.spec_from_file_location("pc_tests", Path(__file__).with_name("test_pose_consistency.py"))
_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pc)
gt_context = _pc.gt_context


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_pseudo_labels_follow_eq1():
    prob = torch.tensor([[[0.9, 0.6, 0.2, 0.75]]])
    inside = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    label, certain = pseudo_labels(prob, inside, 0.7)
    assert label.tolist() == [[[1.0, 1.0, 0.0, 0.0]]]
    assert certain.tolist() == [[[True, False, True, True]]]  # 0.6 uncertain; outside the box: certain background
    logits = torch.tensor([[[5.0, -5.0, -5.0, -5.0]]])
    assert float(segmentation_loss(logits, label, certain)) < 0.01  # the uncertain (wrong) pixel does not count
    assert float(segmentation_loss(-logits, label, certain)) > 3
    # class balance: one wrong foreground pixel weighs as much as all the background together
    one_fg = torch.tensor([[[-5.0, -5.0, -5.0, -5.0]]])
    assert float(segmentation_loss(one_fg, label, certain)) == pytest.approx(
        0.5 * float(torch.nn.functional.softplus(torch.tensor(5.0))) + 0.5 * float(
            torch.nn.functional.softplus(torch.tensor(-5.0))), rel=1e-5)


def test_box_cells():
    cells = box_cells(torch.tensor([[4.0, 0.0, 12.0, 8.0]]), 4, 4, 4)  # cell centres at 2, 6, 10, 14
    expect = torch.zeros(4, 4)
    expect[:2, 1:3] = 1
    assert torch.equal(cells[0], expect)


def _disk_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = (rng.uniform(0, 1, (8, 8, 3)) * 255).astype(np.uint8)
    img = cv2.resize(img, (64, 64), interpolation=cv2.INTER_LINEAR)
    gt = np.zeros((64, 64), np.uint8)
    cv2.circle(gt, (30, 34), 14, 1, -1)
    img[gt > 0] = (220, 40, 40)
    return img, gt > 0, np.array([13.0, 17.0, 48.0, 52.0])  # loose box around the disk


def test_grabcut_prior_beats_the_box():
    img, gt, box = _disk_image(np.random.default_rng(0))
    p = grabcut_probability(img, box)
    box_mask = np.zeros_like(gt)
    box_mask[17:52, 13:48] = True
    assert _iou(p >= 0.5, gt) > max(0.85, _iou(box_mask, gt) + 0.15)
    assert p[:10].max() == 0.0  # outside the box: sure background
    flat = np.full((64, 64, 3), 128, np.uint8)  # nothing to separate: no opinion inside the box
    q = grabcut_probability(flat, box)
    assert set(np.unique(q[17:52, 13:48])) == {0.5}


class _RedNet(torch.nn.Module):
    """Mask logits from the red channel pooled to stride 2: translation and flip equivariant."""

    def forward(self, image, obj_index):
        return {"mask_logits": 20 * (torch.nn.functional.avg_pool2d(image[:, :1], 2)[:, 0] - 0.5)}


def test_tta_undoes_flips_and_rescales():
    img, gt, _ = _disk_image(np.random.default_rng(1))
    x = torch.as_tensor(img.transpose(2, 0, 1)[None] / 255.0, dtype=torch.float32)
    net = _RedNet()
    plain = tta_probability(net, x, torch.tensor([0]), (1.0,), flip=False)
    flipped = tta_probability(net, x, torch.tensor([0]), (1.0,), flip=True)
    scaled = tta_probability(net, x, torch.tensor([0]), (1.0, 0.75, 1.25), flip=True)
    assert plain.shape == (1, 32, 32)
    assert torch.allclose(plain, flipped, atol=1e-5)
    # rescaled inputs come back at the output size and agree with the plain prediction up to resampling
    assert _iou(scaled[0].numpy() >= 0.5, plain[0].numpy() >= 0.5) > 0.85
    assert not torch.allclose(scaled, plain, atol=1e-3)
    assert net.training  # the mode is restored


def _loose_instances(ctx, rng):
    """The loop's objects with ground-truth boxes expanded by 0-15 % per side (DSC's loose boxes), no masks, and
    the ground-truth visible masks kept aside for scoring."""
    ds = BopDataset(ctx.recording.path.parent / "bop", "train_loop")
    masks = {}
    for s in ds.samples(1, load_depth=False, load_masks=True):
        for g in s.gt:
            masks[(s.im_id, g.obj_id)] = g.mask_visib
    ids = [m.obj_id for m in ctx.objects]
    out, gts = [], []
    for p in ctx.pseudo.instances:
        wh = p.box[2:] - p.box[:2]
        e = rng.uniform(0, 0.15, 4) * np.r_[wh, wh]
        out.append(RecordingInstance(p.frame, p.obj_index, p.box + np.r_[-e[:2], e[2:]], 1.0))
        gts.append(masks[(p.frame, ids[p.obj_index])])
    return out, gts


def _ious(labels, instances, gts, h: int, crop: int, stride: int) -> tuple[float, float]:
    from selfpose_core.adapt.weak_segmentation import _inside_box

    ib, il = [], []
    for i, (inst, gt) in enumerate(zip(instances, gts)):
        A = crop_affine(labels.crop_boxes[i], h)
        g = cv2.warpAffine(gt.astype(np.float32), A, (h, h), flags=cv2.INTER_LINEAR) >= 0.5
        box = _inside_box([inst], labels.crop_boxes[i:i + 1], crop, h, stride)[0].numpy() > 0.5
        ib.append(_iou(box, g))
        il.append(_iou(labels.prob[i] >= 0.5, g))
    return float(np.mean(ib)), float(np.mean(il))


def test_rounds_improve_iou_over_the_box_on_simulated_frames(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path, stride=2)
    instances, gts = _loose_instances(ctx, np.random.default_rng(0))
    store = FrameStore(ctx, [i.frame for i in instances])
    before = [p.detach().clone() for p in ctx.bundle.pose_net.parameters()]
    # the tiny bundle is untrained (its mask head knows nothing): the first labels are GrabCut's (prior_weight 1)
    first = weak_segmentation(ctx.bundle.pose_net, store, instances,
                              WeakSegmentationConfig(iterations=0, tta_scales=(1.0,), prior_weight=1.0))
    box_iou, first_iou = _ious(first, instances, gts, 16, 32, 2)
    assert first_iou > box_iou + 0.05
    losses = []
    cfg = WeakSegmentationConfig(iterations=2, steps_per_round=8, batch_size=8, lr=3e-3, tta_scales=(1.0,),
                                 prior_weight=1.0, synthetic_batch=0)
    labels = weak_segmentation(ctx.bundle.pose_net, store, instances, cfg,
                               log_scalars=lambda s, d: losses.append(d["seg_real"]))
    _, label_iou = _ious(labels, instances, gts, 16, 32, 2)
    assert label_iou > box_iou + 0.05
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert labels.prob.shape == (len(instances), 16, 16)
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.bundle.pose_net.parameters()))  # a copy was trained
    # re-cutting the labels into their own crops gives them back
    lab, cer = labels.in_crops([0, 1], labels.crop_boxes[:2], 16, 32)
    assert torch.equal(lab, torch.as_tensor(labels.prob[:2] >= 0.5).float())


def test_labels_follow_the_image_into_other_crops():
    from selfpose_core.adapt.weak_segmentation import SegmentationLabels

    prob = np.zeros((1, 8, 8), np.float32)
    prob[0, 3, 4] = 1.0
    labels = SegmentationLabels(np.array([[100.0, 50.0, 180.0, 130.0]]), prob, 0.7)  # a cell = 10 image pixels
    shifted = np.array([[110.0, 30.0, 190.0, 110.0]])  # 1 cell right, 2 cells up
    lab, cer = labels.in_crops([0], shifted, 8, 32)
    assert lab[0].nonzero().tolist() == [[5, 3]]
    zoomed = np.array([[100.0, 50.0, 260.0, 210.0]])  # twice the side: the cell lands at half the index
    lab, _ = labels.in_crops([0], zoomed, 16, 32)
    assert lab[0].nonzero().tolist() == [[3, 4]]
