"""Multiview consensus: symmetry-aware RANSAC averaging, the drift model, the joint refinement under odometry drift,
and pseudo-label rendering."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from selfpose_core.adapt.consensus import (ConsensusConfig, RefineInputs, drift_corrections, planar_transforms,
                                           refine_consensus, render_pseudo_labels, robust_world_pose)
from selfpose_core.data.crops import ObjectGeometry, amodal_box, render_targets, square_box
from selfpose_core.data.sim.odometry import OdometryNoise, drift_poses
from selfpose_core.geometry.se3 import invert, make_T, rotation_angle, se3_exp
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import CameraIntrinsics, Symmetry


def _rot(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    return se3_exp(np.concatenate([np.zeros((n, 3)), rng.normal(0, sigma, (n, 3))], 1))[:, :3, :3]


def _box(name: str, extents, obj_id: int):
    m = trimesh.creation.box(extents)
    return object_model_from_arrays(name, np.asarray(m.vertices), np.asarray(m.faces), obj_id=obj_id)


def _cylinder(name: str, obj_id: int):
    m = trimesh.creation.cylinder(radius=0.04, height=0.12, sections=24)
    sym = Symmetry(continuous=[(np.array([0.0, 0.0, 1.0]), np.zeros(3))])
    return object_model_from_arrays(name, np.asarray(m.vertices), np.asarray(m.faces), obj_id=obj_id, symmetry=sym)


def test_robust_world_pose_rejects_outliers():
    rng = np.random.default_rng(0)
    obj = _box("box", (0.1, 0.06, 0.15), 1)
    T_true = make_T(_rot(rng, 1, 1.0)[0], np.array([0.3, -0.2, 0.75]))
    n_in, n_out = 24, 16
    R = _rot(rng, n_in, np.radians(2.0)) @ T_true[:3, :3]
    inl = make_T(R, T_true[:3, 3] + rng.normal(0, 0.005, (n_in, 3)))
    out = make_T(_rot(rng, n_out, 2.0), T_true[:3, 3] + rng.normal(0, 0.2, (n_out, 3)))
    cand = np.concatenate([inl, out])
    fit = robust_world_pose(cand, np.ones(len(cand)), obj.symmetry, obj.diameter)
    assert fit.success
    assert fit.inliers[:n_in].mean() > 0.9 and fit.inliers[n_in:].sum() <= 1
    assert np.linalg.norm(fit.T_world_obj[:3, 3] - T_true[:3, 3]) < 0.004
    assert np.degrees(rotation_angle(fit.T_world_obj[:3, :3], T_true[:3, :3])) < 1.5
    # a plain mean would be pulled away by the outliers
    assert np.linalg.norm(cand[:, :3, 3].mean(0) - T_true[:3, 3]) > 0.02


def test_robust_world_pose_symmetric_and_too_few():
    rng = np.random.default_rng(1)
    obj = _cylinder("can", 2)
    T_true = make_T(_rot(rng, 1, 1.0)[0], np.array([0.1, 0.2, 0.8]))
    n = 20
    spin = se3_exp(np.concatenate([np.zeros((n, 5)), rng.uniform(-np.pi, np.pi, (n, 1))], 1))  # about object z
    noisy = make_T(_rot(rng, n, np.radians(1.5)), rng.normal(0, 0.003, (n, 3)))
    cand = T_true @ noisy @ spin
    fit = robust_world_pose(cand, np.ones(n), obj.symmetry, obj.diameter)
    assert fit.inliers.all()
    # the symmetry axis (object z in the world) and the centre are recovered
    assert np.degrees(np.arccos(np.clip(fit.T_world_obj[:3, 2] @ T_true[:3, 2], -1, 1))) < 1.5
    assert np.linalg.norm(fit.T_world_obj[:3, 3] - T_true[:3, 3]) < 0.004
    # without symmetry handling the same candidates do not agree
    plain = robust_world_pose(cand, np.ones(n), Symmetry(), obj.diameter)
    assert plain.inliers.sum() < n // 2
    few = robust_world_pose(cand[:2], np.ones(2), obj.symmetry, obj.diameter, min_inliers=3)
    assert not few.success and np.isnan(few.T_world_obj).all()


def test_drift_corrections_interpolate_and_start_at_identity():
    knots = torch.tensor([[0.0, 0.0, 0.0], [0.02, -0.01, 0.01], [0.04, 0.0, -0.02]], dtype=torch.float64)
    C = drift_corrections(knots, torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(C[0], torch.eye(4, dtype=torch.float64))
    assert torch.allclose(C[2], planar_transforms(knots[1:2])[0])
    assert torch.allclose(C[1], planar_transforms(knots[1:2] / 2)[0])
    assert torch.allclose(C[3, :2, 3], knots[2, :2])


def _scene(rng: np.random.Generator, n: int):
    """Two objects on a table seen from a camera circling it at 0.6 m, true and drifting camera poses."""
    objects = [_box("box", (0.08, 0.06, 0.12), 1), _box("flat", (0.12, 0.1, 0.04), 2)]
    W = np.stack([make_T(_rot(rng, 1, 0.3)[0] @ np.eye(3), np.array([0.05, 0.03, 0.06])),
                  make_T(_rot(rng, 1, 0.3)[0], np.array([-0.06, -0.04, 0.02]))])
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eye = np.stack([0.6 * np.cos(ang), 0.6 * np.sin(ang), np.full(n, 0.35)], 1)
    z = -eye / np.linalg.norm(eye, axis=1, keepdims=True)
    x = np.cross(z, np.array([0.0, 0.0, 1.0]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    T_true = make_T(np.stack([x, y, z], 2), eye)
    T_rec = drift_poses(T_true, rng, OdometryNoise(trans_per_loop_m=0.03, yaw_per_loop_deg=2.0,
                                                   yaw_bias_per_loop_deg=2.0))
    return objects, W, T_true, T_rec


def test_refinement_corrects_odometry_drift():
    rng = np.random.default_rng(3)
    n = 24
    objects, W, T_true, T_rec = _scene(rng, n)
    K = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
    pairs = [(i, k) for i in range(n) for k in range(2)]
    T_obs = np.stack([invert(T_true[i]) @ W[k] for i, k in pairs])
    T_obs = make_T(_rot(rng, len(pairs), np.radians(1.0)) @ T_obs[:, :3, :3],
                   T_obs[:, :3, 3] + rng.normal(0, 0.004, (len(pairs), 3)))
    # start from the robust average through the drifting cameras
    W0 = np.stack([robust_world_pose(T_rec[[i for i, kk in pairs if kk == k]] @ T_obs[[j for j, (_, kk) in
                                     enumerate(pairs) if kk == k]], np.ones(n), o.symmetry, o.diameter).T_world_obj
                   for k, o in enumerate(objects)])
    S = 32
    geoms = [ObjectGeometry.from_model(o) for o in objects]
    Kc, masks, ign = [], [], []
    for (i, k) in pairs:
        T = invert(T_true[i]) @ W[k]
        box = square_box(amodal_box(K.K, invert(T_rec[i]) @ W0[k], objects[k].vertices), 1.2)
        Kcrop = K.crop_resize(tuple(box), S)
        Kc.append(Kcrop.K)
        masks.append(render_targets(geoms[k], Kcrop.K, T, (S, S))["mask"])
        ign.append(np.zeros((S, S), bool))
    cfg = ConsensusConfig(drift="correct", drift_knots=5, refine_iterations=150, refine_lr=3e-3, refine_batch=16,
                          crop_size=S, silhouette_weight=0.0)
    inputs = RefineInputs(W0, T_rec, np.linspace(0, 1, n), np.array([p[0] for p in pairs]),
                          np.array([p[1] for p in pairs]), T_obs, np.ones(len(pairs)), np.stack(Kc),
                          np.stack(masks), np.stack(ign), None)
    out = refine_consensus(objects, inputs, cfg, torch.Generator().manual_seed(0))
    assert out.history[-1]["loss"] < out.history[0]["loss"]

    def cam_errors(T_wc: np.ndarray, Wk: np.ndarray) -> np.ndarray:
        return np.array([np.linalg.norm((invert(T_wc[i]) @ Wk[k])[:3, 3] - (invert(T_true[i]) @ W[k])[:3, 3])
                         for i, k in pairs])

    before = cam_errors(T_rec, W0)
    after = cam_errors(out.corrections @ T_rec, out.T_world_obj)
    assert np.median(after) < 0.6 * np.median(before)
    assert np.median(after) < 0.006
    for k in range(2):
        assert np.linalg.norm(out.T_world_obj[k, :3, 3] - W[k, :3, 3]) < 0.01
        assert np.degrees(rotation_angle(out.T_world_obj[k, :3, :3], W[k, :3, :3])) < 2.0
    # "weight" mode keeps the recorded cameras; the silhouette term alone moves the objects towards the masks
    cfg_w = ConsensusConfig(drift="weight", refine_iterations=6, refine_batch=8, crop_size=S, keypoint_weight=0.0,
                            refine_lr=2e-3)
    out_w = refine_consensus(objects, inputs, cfg_w, torch.Generator().manual_seed(0))
    assert np.allclose(out_w.corrections, np.eye(4))
    assert "silhouette" in out_w.history[0] and not np.allclose(out_w.T_world_obj, W0)
    # objects registered from depth are held: only the others move
    inputs.fixed = np.array([True, False])
    out_f = refine_consensus(objects, inputs, cfg_w, torch.Generator().manual_seed(0))
    assert np.array_equal(out_f.T_world_obj[0], W0[0]) and not np.allclose(out_f.T_world_obj[1], W0[1])
    inputs.fixed = np.array([True, True])  # nothing left to refine: no iteration
    assert refine_consensus(objects, inputs, cfg_w, torch.Generator().manual_seed(0)).history == []


def test_render_pseudo_labels_occlusion_and_depth():
    objects = [_box("front", (0.06, 0.06, 0.06), 1), _box("back", (0.2, 0.2, 0.1), 2)]
    K = CameraIntrinsics(200.0, 200.0, 79.5, 59.5, 160, 120)
    W = np.stack([make_T(np.eye(3), np.array([0.0, 0.0, 0.5])), make_T(np.eye(3), np.array([0.0, 0.0, 0.8]))])
    T_wc = np.eye(4)[None]
    depth = np.full((120, 160), 0.2, np.float32)  # an unknown occluder covers the left half
    depth[:, 80:] = 0.0  # no depth on the right half
    cfg = ConsensusConfig(min_visible_fraction=0.05)
    labels = render_pseudo_labels(objects, W, np.array([0.9, 0.8]), T_wc, np.array([0.5]), lambda i: K,
                                  lambda i: None, cfg, ["front", "back"])
    front, back = sorted(labels.instances, key=lambda p: p.obj_index)
    assert front.visib_fract == pytest.approx(1.0)
    assert 0.3 < back.visib_fract < 0.9  # the front box hides the centre of the back one
    assert not (front.mask & back.mask).any()
    assert front.confidence == pytest.approx(0.45)
    assert np.allclose(front.box, amodal_box(K.K, W[0], objects[0].vertices))
    with_depth = render_pseudo_labels(objects, W, np.array([0.9, 0.8]), T_wc, np.array([1.0]), lambda i: K,
                                      lambda i: depth, cfg, ["front", "back"])
    f2 = next(p for p in with_depth.instances if p.obj_index == 0)
    assert not f2.mask[:, :80].any() and f2.mask[:, 80:].any()
    labels.save(tmp := __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "p.npz")
    from selfpose_core.adapt.pseudo_labels import PseudoLabels

    back_again = PseudoLabels.load(tmp)
    assert len(back_again.instances) == 2
    assert all((a.mask == b.mask).all() for a, b in zip(labels.instances, back_again.instances))


def test_estimate_frames_keeps_known_confident_objects_and_round_trips(tmp_path):
    from types import SimpleNamespace

    from selfpose_core.adapt.consensus import FrameEstimates, estimate_frames
    from selfpose_core.types import Frame, PoseEstimate

    K = CameraIntrinsics(100.0, 100.0, 31.5, 23.5, 64, 48)
    frames = [Frame(np.zeros((48, 64, 3), np.uint8), K, index=i) for i in range(4)]
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:15] = True

    class Stub:
        def estimate(self, frame):
            T = make_T(np.eye(3), np.array([0.0, 0.0, 0.5 + frame.index]))
            return [PoseEstimate("a", T, 0.9, 1, (1.0, 2.0, 3.0, 4.0), mask),
                    PoseEstimate("b", T, 0.01, 2, (1.0, 2.0, 3.0, 4.0), None),  # below min_score
                    PoseEstimate("zzz", T, 0.9, 9, None, None)]  # not one of ctx.objects

    ctx = SimpleNamespace(objects=[_box("a", (0.1, 0.1, 0.1), 1), _box("b", (0.1, 0.1, 0.1), 2)],
                          recording=frames)
    est = estimate_frames(ctx, np.array([1, 3]), Stub(), min_score=0.05)
    assert est.frame.tolist() == [1, 3] and est.obj_index.tolist() == [0, 0]
    assert est.T_cam_obj[1, 2, 3] == pytest.approx(3.5) and est.box[0].tolist() == [1.0, 2.0, 3.0, 4.0]
    est.save(tmp_path / "e.npz")
    back = FrameEstimates.concatenate([FrameEstimates.load(tmp_path / "e.npz"), est])
    assert back.frame.tolist() == [1, 1, 3, 3] and all((m == mask).all() for m in back.masks)
