"""dual_scale: Dice (Eq. 14), the two views, the re-projected mean keypoints (Eq. 11), one step's losses and
gradients for both networks, the two-scale ensemble at inference, and a few stage steps on the tiny loop."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from selfpose_core.adapt.dual_scale import (DualScale, DualScaleConfig, average_reprojection, dice_loss,
                                            dual_scale_batch, dual_scale_losses)
from selfpose_core.estimate import dual_scale_views
from selfpose_core.estimate.dual_scale_views import dual_scale_estimate, view_boxes
from selfpose_core.adapt.recording_crops import FrameStore, recording_instances
from selfpose_core.adapt.stage_training import ObjectTensors
from selfpose_core.adapt.weak_segmentation import WeakSegmentationConfig, weak_segmentation
from selfpose_core.data.crops import ObjectGeometry, amodal_box, project_points
from selfpose_core.geometry.se3 import make_T, rotation_angle, se3_exp
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject
from selfpose_core.models.keypoint_net import KeypointNet, KeypointNetConfig
from selfpose_core.models.pretrain import PretrainConfig
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.types import CameraIntrinsics

_spec = importlib.util.spec_from_file_location("pc_tests", Path(__file__).with_name("test_pose_consistency.py"))
_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pc)
gt_context, _box_object, _oracle_outputs = _pc.gt_context, _pc._box_object, _pc._oracle_outputs


def test_dice_loss():
    y = torch.zeros(1, 8, 8)
    y[0, 2:6, 2:6] = 1
    assert float(dice_loss(y, y, eps=1e-6)) < 1e-6
    assert float(dice_loss(y, 1 - y, eps=1e-6)) > 0.99
    half = y.clone()
    half[0, 2:6, 4:6] = 0
    assert float(dice_loss(y, half, eps=1e-6)) == pytest.approx(1 - 16 / 24, abs=1e-5)
    w = torch.ones(1, 8, 8)
    w[0, 2:6, 4:6] = 0  # the differing pixels do not count
    assert float(dice_loss(y, half, w, eps=1e-6)) < 1e-6


def test_view_boxes():
    box = np.array([100.0, 50.0, 140.0, 110.0])  # 40 x 60
    u, n = view_boxes(box, 480, 0.5, 1.3)
    assert u[2] - u[0] == pytest.approx(240) and n[2] - n[0] == pytest.approx(78)
    for b in (u, n):
        assert np.allclose((b[:2] + b[2:]) / 2, [120, 80])
    big = np.array([0.0, 0.0, 300.0, 300.0])
    u, _ = view_boxes(big, 480, 0.5, 1.3)
    assert u[2] - u[0] == pytest.approx(330)  # never smaller than 1.1 x the object


def test_average_reprojection_recovers_projected_keypoints():
    obj = _box_object()
    K = CameraIntrinsics(500, 500, 320, 240, 640, 480).K
    T = make_T(se3_exp(np.r_[0, 0, 0, 0.4, 0.3, -0.2])[:3, :3], np.array([0.01, 0.02, 0.7]))
    kp = torch.as_tensor(project_points(K, T, obj.keypoints)[None])
    noise = torch.randn(kp.shape, generator=torch.Generator().manual_seed(0), dtype=kp.dtype)
    out = average_reprojection(kp + noise, kp - noise, torch.as_tensor(obj.keypoints[None]), torch.as_tensor(K[None]))
    assert torch.allclose(out, kp, atol=1e-6)


@pytest.mark.parametrize("kind", ["keypoint", "correspondence"])
def test_step_losses_finite_with_gradients(adapt_scene, tmp_path, kind):
    ctx = gt_context(adapt_scene, tmp_path, kind)
    instances = recording_instances(ctx)[:4]
    store = FrameStore(ctx, [i.frame for i in instances])
    cfg = DualScaleConfig(batch_size=4, synthetic_batch=0, plausible_offset=1e9, plausible_size=(0.0, 1e9))
    labels = weak_segmentation(ctx.bundle.pose_net, store, instances,
                               WeakSegmentationConfig(iterations=0, tta_scales=(1.0,)))
    batch = dual_scale_batch(store, instances, np.arange(4), labels, 32, cfg, np.random.default_rng(0))
    net = ctx.bundle.pose_net
    res = dual_scale_losses(net, batch, ObjectTensors(ctx.geometries(4), 32, 0), ctx.bundle.spec.objects, cfg,
                            PretrainConfig(offset_warmup_steps=0))
    for key in ("loss", "dual", "align", "mask"):
        assert torch.isfinite(res[key]), key
    assert 0 <= float(res["align"].detach()) <= 1
    res["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and float(sum(g.abs().sum() for g in grads)) > 0


class _OracleKeypointNet(KeypointNet):
    """Outputs what a perfect keypoint network would for the crop whose camera ``cut_crop`` made last."""

    def __init__(self, geom: ObjectGeometry, T: np.ndarray, cameras: list) -> None:
        super().__init__(1, KeypointNetConfig(BackboneConfig((8, 8), 2), 9, 64))
        self.geom, self.T, self.cameras = geom, T, cameras

    def forward(self, image, obj_index):
        return _oracle_outputs("keypoint", self.geom, self.cameras.pop(0), self.T, 64, 2)


def test_ensemble_of_the_two_scales_returns_the_pose(monkeypatch):
    obj = _box_object()
    cam = CameraIntrinsics(500, 500, 320, 240, 640, 480)
    T = make_T(se3_exp(np.r_[0, 0, 0, 0.4, 0.3, -0.2])[:3, :3], np.array([0.05, -0.03, 0.8]))
    cameras: list = []
    real_cut = dual_scale_views.cut_crop

    def recording_cut(*args, **kwargs):
        img, K = real_cut(*args, **kwargs)
        cameras.append(K)
        return img, K

    monkeypatch.setattr(dual_scale_views, "cut_crop", recording_cut)
    net = _OracleKeypointNet(ObjectGeometry.from_model(obj), T, cameras)
    box = amodal_box(cam.K, T, obj.vertices) + np.array([-12.0, 5.0, 20.0, -3.0])  # a sloppy detector box
    image = np.zeros((480, 640, 3), np.uint8)
    out = dual_scale_estimate(net, [BundleObject.from_model(obj)], image, cam, box, 0)
    assert out is not None
    T_est, info = out
    assert np.degrees(rotation_angle(T_est[:3, :3], T[:3, :3])) < 0.5
    assert np.linalg.norm(T_est[:3, 3] - T[:3, 3]) < 2e-3
    truth = project_points(cam.K, T, obj.keypoints)
    for key in ("keypoints_u", "keypoints_n"):
        assert np.abs(info[key] - truth).max() < 0.5
    # the normalised crop bounds the predicted mask, not the sloppy box
    tight = amodal_box(cam.K, T, obj.vertices)
    n = info["normalized_box"]
    assert abs((n[2] - n[0]) - 1.3 * max(tight[2] - tight[0], tight[3] - tight[1])) < 0.15 * (n[2] - n[0])


def test_stage_runs_and_checkpoints(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = DualScaleConfig(batch_size=2, synthetic_batch=1, symmetry_samples=4,
                          segmentation=WeakSegmentationConfig(iterations=1, steps_per_round=1, batch_size=2,
                                                              synthetic_batch=1, tta_scales=(1.0,)),
                          trainer=TrainerConfig(steps=2, lr=1e-4, warmup_steps=1, log_every=1, checkpoint_every=1,
                                                progress=False))
    result = DualScale().run(ctx, cfg)
    assert (tmp_path / "dual_scale" / "train" / "checkpoint.pt").is_file()
    assert (tmp_path / "dual_scale" / "segmentation.npz").is_file()
    assert {"loss", "dual", "align", "mask", "synthetic"} <= set(result.losses)
    assert 0 < result.details["segmentation"]["certain_fraction"] <= 1


def test_the_estimator_views_default_to_the_stage_defaults():
    """One source: the estimator's views without a dual_scale record are the dual_scale stage's defaults."""
    from selfpose_core.estimate.dual_scale_views import DualScaleViews

    cfg = DualScaleConfig()
    assert DualScaleViews() == DualScaleViews.of_stage({"config": {"context_fraction": cfg.context_fraction,
                                                                   "normalized_padding": cfg.normalized_padding}}, "x")
