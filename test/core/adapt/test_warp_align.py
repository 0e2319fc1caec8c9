"""warp_align: the warp of Eq. 4-5 on a rendered pair, pair selection by camera rotation, the odometry check, and a
few stage steps on the tiny simulated loop."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from selfpose_core.adapt.network_pose import vertex_consistency
from selfpose_core.adapt.recording_crops import RecordingInstance
from selfpose_core.adapt.warp_align import WarpAlign, WarpAlignConfig, closest_pairs, warp_photometric_loss
from selfpose_core.geometry.se3 import make_T, rotation_angle, se3_exp, so3_exp
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render

_spec = importlib.util.spec_from_file_location("pc_tests", Path(__file__).with_name("test_pose_consistency.py"))
_pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pc)
gt_context = _pc.gt_context


def _textured_pair(rot_deg: float = 15.0):
    """An ellipsoid with random vertex colours rendered from two viewpoints ``rot_deg`` apart (64 x 64)."""
    m = trimesh.creation.icosphere(subdivisions=3)
    v = np.asarray(m.vertices) * np.array([0.05, 0.035, 0.07])
    freq = np.random.default_rng(0).normal(0, 60, (3, 3))
    colours = 0.5 + 0.5 * np.sin(v @ freq)  # a smooth texture: bilinear sampling is nearly exact
    mesh = RenderMesh(torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(np.asarray(m.faces)),
                      torch.as_tensor(colours, dtype=torch.float32))
    T_s = make_T(se3_exp(np.r_[0, 0, 0, 0.3, 0.2, 0.1])[:3, :3], np.array([0.0, 0.0, 0.5]))
    turn = make_T(se3_exp(np.r_[0, 0, 0, 0, np.radians(rot_deg), 0])[:3, :3], np.zeros(3))
    T_t = T_s @ turn  # the object turned about its own axis = the camera moved around it
    K = torch.tensor([[[150.0, 0, 31.5], [0, 150.0, 31.5], [0, 0, 1]]]).expand(2, 3, 3)
    T = torch.as_tensor(np.stack([T_s, T_t]), dtype=torch.float32)
    out = render(mesh, T[:, :3, :3], T[:, :3, 3], K, (64, 64), coords=False, silhouette=False, visibility=False)
    img = out.attributes.permute(0, 3, 1, 2)
    return mesh, img[:1], img[1:], K[:1], T[:1], T[1:]


def test_warp_with_true_motion_aligns_and_wrong_pose_does_not():
    mesh, src, tgt, K, T_s, T_t = _textured_pair()
    args = (src, tgt, K, K, T_s[:, :3, :3], T_s[:, :3, 3])
    loss, warped, valid = warp_photometric_loss(*args, T_t[:, :3, :3], T_t[:, :3, 3], [mesh], scales=3)
    assert int(valid.sum()) > 500
    assert float(loss) < 0.05
    # the warped source equals the target on the valid pixels, up to interpolation at colour edges
    assert float((warped - tgt).abs().mean(1)[valid].median()) < 0.01
    R_bad = so3_exp(torch.tensor([[0.0, 0.0, float(np.radians(6.0))]])) @ T_t[:, :3, :3]
    bad, _, _ = warp_photometric_loss(*args, R_bad, T_t[:, :3, 3], [mesh], scales=3)
    shifted, _, _ = warp_photometric_loss(*args, T_t[:, :3, :3], T_t[:, :3, 3] + torch.tensor([[0.006, 0, 0]]),
                                          [mesh], scales=3)
    assert float(bad) > 3 * float(loss) + 0.01 and float(shifted) > 3 * float(loss) + 0.01


def test_warp_loss_has_pose_gradients():
    mesh, src, tgt, K, T_s, T_t = _textured_pair()
    omega = torch.tensor([[0.0, 0.0, 0.05]], requires_grad=True)
    R_t = so3_exp(omega) @ T_t[:, :3, :3]
    loss, _, _ = warp_photometric_loss(src, tgt, K, K, T_s[:, :3, :3], T_s[:, :3, 3], R_t, T_t[:, :3, 3], [mesh],
                                       scales=3)
    loss.sum().backward()
    assert omega.grad is not None and float(omega.grad.abs().sum()) > 0


def test_closest_pairs_by_camera_rotation():
    yaw = np.radians([0, 10, 20, 45, 120, 125, 300])
    T = np.stack([make_T(se3_exp(np.r_[0, 0, 0, 0, 0, a])[:3, :3], np.zeros(3)) for a in yaw])
    inst = [RecordingInstance(i, 0, np.zeros(4), 1.0) for i in range(len(yaw))] + [RecordingInstance(0, 1, np.zeros(4),
                                                                                                      1.0)]
    rng = np.random.default_rng(0)
    pairs = closest_pairs(inst, T, np.arange(len(inst)), 4, np.radians(60), 0.0, rng)
    angles = [np.degrees(rotation_angle(T[inst[a].frame, :3, :3], T[inst[b].frame, :3, :3])) for a, b in pairs]
    assert np.allclose(sorted(angles), angles) and np.allclose(angles, [5, 10, 10, 20])
    assert all(inst[a].obj_index == inst[b].obj_index and inst[a].frame != inst[b].frame for a, b in pairs)
    assert {frozenset(p) for p in pairs} == {frozenset(p) for p in [(4, 5), (0, 1), (1, 2), (0, 2)]}
    assert closest_pairs(inst, T, np.arange(len(inst)), 4, np.radians(60), np.radians(50), rng) == []
    assert {frozenset(p) for p in closest_pairs(inst, T, np.arange(len(inst)), 4, np.radians(60), np.radians(40),
                                                rng)} == {frozenset((0, 3))}  # 0 -> 300 is 60 deg: excluded
    assert len(closest_pairs(inst, T, np.array([3, 4]), 4, np.radians(60), 0.0, rng)) == 0


def test_odometry_residual_is_zero_for_consistent_motion():
    T_s = make_T(se3_exp(np.r_[0, 0, 0, 0.3, 0.2, 0.1])[:3, :3], np.array([0.05, 0.0, 0.6]))
    T_odo = make_T(se3_exp(np.r_[0, 0, 0, 0, 0.4, 0])[:3, :3], np.array([0.2, 0.0, 0.05]))  # T_tgt<-src cameras
    T_t = T_odo @ T_s
    pts = torch.rand(1, 9, 3, dtype=torch.float64) * 0.1
    f = lambda T: (torch.as_tensor(T[None, :3, :3]), torch.as_tensor(T[None, :3, 3]))  # noqa: E731
    R_o, t_o = f(T_odo @ T_s)
    eye = [torch.eye(4, dtype=torch.float64)[None]]
    d = torch.tensor([0.2], dtype=torch.float64)
    assert float(vertex_consistency(*f(T_t), R_o, t_o, pts, eye, d)) < 1e-12
    T_wrong = T_t.copy()
    T_wrong[0, 3] += 0.02
    assert float(vertex_consistency(*f(T_wrong), R_o, t_o, pts, eye, d)) == pytest.approx(0.1, rel=1e-6)


def test_stage_runs_and_checkpoints(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = WarpAlignConfig(sample_frames=6, batch_size=2, synthetic_batch=1, symmetry_samples=4,
                          trainer=TrainerConfig(steps=2, lr=1e-4, warmup_steps=1, log_every=1, checkpoint_every=1,
                                                progress=False))
    result = WarpAlign().run(ctx, cfg)
    assert (tmp_path / "warp_align" / "train" / "checkpoint.pt").is_file()
    assert {"loss", "photometric", "odometry", "sup_synthetic", "valid"} <= set(result.losses)
    assert np.isfinite(result.losses["loss"])
