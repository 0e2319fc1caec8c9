"""NOL at run time: source preparation and bad input, selection rules, pose refinement, rendering, training data."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.nol import (EitherSource, NolCrops, NolRenderer, NolScenes, NolStage, NolStageConfig,
                                     RefineConfig, centred_crop_intrinsics, hemisphere_poses, nol_bank_from_pseudo_labels,
                                     prepare_sources, refine_source_poses, render_nol_bank, rotate_in_plane,
                                     select_by_new_points, select_by_pose)
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.nol_training_set import look_at_rotation
from selfpose_core.data.recording import Recording
from selfpose_core.data.sim.shapes import box
from selfpose_core.errors import ConfigError, DatasetError, ShapeError
from selfpose_core.geometry.se3 import rotation_angle, so3_exp
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.models.nol import NolConfig, NolNet, save_nol
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render import RenderMesh, render
from selfpose_core.types import CameraIntrinsics, Frame

CAM = CameraIntrinsics(150.0, 150.0, 79.5, 59.5, 160, 120)
S = 32


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pose(direction, dist=0.45, roll=0.0, shift=(0.0, 0.0)):
    d = np.asarray(direction, float)
    T = np.eye(4)
    T[:3, :3] = look_at_rotation(d / np.linalg.norm(d), roll)
    T[:3, 3] = (shift[0], shift[1], dist)
    return T


@pytest.fixture(scope="module")
def scene():
    """A 12 cm box with a smooth colour texture seen from 8 directions around it (full 160x120 frames)."""
    part = box((0.1, 0.08, 0.12))
    v, u = np.mgrid[0:64, 0:64] / 63.0
    tex = np.stack([u, v, 0.5 + 0.4 * np.sin(6 * u) * np.cos(5 * v)], -1).astype(np.float32)
    mesh = RenderMesh(torch.as_tensor(part.vertices, dtype=torch.float32), torch.as_tensor(part.faces),
                      uv=torch.as_tensor(part.uv, dtype=torch.float32), texture=torch.as_tensor(tex))
    model = object_model_from_arrays("box", part.vertices, part.faces)
    az = np.deg2rad(np.arange(0, 360, 45))
    poses = np.stack([_pose([np.cos(a), np.sin(a), 0.8], shift=(0.02 * np.cos(3 * a), 0.01)) for a in az])
    R = torch.as_tensor(poses[:, :3, :3], dtype=torch.float32)
    t = torch.as_tensor(poses[:, :3, 3], dtype=torch.float32)
    Kt = torch.as_tensor(np.broadcast_to(CAM.K, (len(poses), 3, 3)).copy(), dtype=torch.float32)
    with torch.no_grad():
        out = render(mesh, R, t, Kt, (CAM.height, CAM.width), coords=False, silhouette=False, visibility=False)
    bg = np.full((CAM.height, CAM.width, 3), 0.1, np.float32)
    m = out.mask.numpy()
    images = [((np.where(m[i, ..., None], out.texture[i].numpy(), bg)) * 255).astype(np.uint8)
              for i in range(len(poses))]
    return {"model": model, "mesh": mesh, "images": images, "poses": poses, "masks": list(m)}


def test_select_by_new_points_takes_the_most_new_surface_first():
    vis = np.zeros((4, 10), bool)
    vis[0, :4] = True
    vis[1, 3:9] = True
    vis[2, :2] = True  # adds nothing after 0
    vis[3, 9] = True
    assert select_by_new_points(vis) == [1, 0, 3]
    assert select_by_new_points(vis, max_sources=2) == [1, 0]
    target = np.zeros(10, bool)
    target[:2] = True
    assert select_by_new_points(vis, points=target) == [0]
    assert select_by_new_points(np.zeros((0, 5), bool)) == []
    with pytest.raises(ShapeError):
        select_by_new_points(np.zeros(5, bool))


def test_select_by_pose_keeps_only_dissimilar_views(rng):
    T = np.stack([_pose(rng.normal(size=3), dist=rng.uniform(0.3, 1.5)) for _ in range(60)])
    chosen = select_by_pose(T, rng, min_translation=0.3, min_rotation_deg=45.0, max_sources=100)

    def similar(i, j):
        return (np.linalg.norm(T[i, :3, 3] - T[j, :3, 3]) < 0.3 and
                np.degrees(float(rotation_angle(T[i, :3, :3], T[j, :3, :3]))) < 45.0)

    assert len(set(chosen)) == len(chosen) > 1
    assert not any(similar(a, b) for a in chosen for b in chosen if a != b)
    assert all(any(similar(i, c) for c in chosen) for i in range(60) if i not in chosen)
    assert len(select_by_pose(T, rng, max_sources=3)) == 3


def test_prepare_sources_keeps_good_views_and_reports_bad_ones(scene, caplog):
    images, poses, masks = list(scene["images"]), scene["poses"].copy(), [m.copy() for m in scene["masks"]]
    masks[1][:] = False  # object fully occluded
    poses[2] = poses[2].copy()
    poses[2][:3, 3] += (0.12, 0.0, 0.0)  # wildly wrong pose: the mask is elsewhere
    poses[3] = poses[3].copy()
    poses[3][2, 3] = -0.4  # behind the camera
    with caplog.at_level(logging.WARNING):
        src = prepare_sources(scene["model"], images, poses, CAM, masks, crop_size=S, frame_ids=range(10, 18))
    assert src.frame_ids == [10, 14, 15, 16, 17]
    reasons = dict(src.dropped)
    assert "occluded" in reasons[11] and "disagrees" in reasons[12] and "behind" in reasons[13]
    assert "frame 12" in caplog.text
    assert src.images.shape == (5, 3, S, S) and src.masks.shape == (5, S, S) and src.K.shape == (5, 3, 3)
    assert src.masks.any((1, 2)).all()
    with pytest.raises(ShapeError, match="T_cam_obj"):
        prepare_sources(scene["model"], images, poses[:3], CAM)


def test_renderer_needs_at_least_one_source_and_works_with_few(scene, caplog):
    model = scene["model"]
    net = NolNet(NolConfig(crop_size=S))
    empty = prepare_sources(model, scene["images"][:1], scene["poses"][:1], CAM, [np.zeros((120, 160), bool)],
                            crop_size=S)
    with pytest.raises(DatasetError, match="no usable source"):
        NolRenderer(net, model, empty, refine=False)
    few = prepare_sources(model, scene["images"][:2], scene["poses"][:2], CAM, scene["masks"][:2], crop_size=S)
    with caplog.at_level(logging.WARNING):
        r = NolRenderer(net, model, few, refine=False, n_points=300)
    assert "only 2 usable" in caplog.text
    T = _pose([1, 0.5, 0.8])
    out = r.render(T[None], centred_crop_intrinsics(model.diameter, 0.45, S)[None], S)
    assert out.images.shape == (1, S, S, 3) and out.sources[0] and set(out.sources[0]) <= {0, 1}
    assert 0.2 < out.coverage[0] <= 1.0
    assert not (out.masks & ~out.silhouettes).any()


def test_average_projection_reproduces_a_held_out_view(scene):
    model = scene["model"]
    src = prepare_sources(model, scene["images"], scene["poses"], CAM, scene["masks"], crop_size=48)
    r = NolRenderer(NolNet(NolConfig(crop_size=48)), model, src, refine=False, n_points=500)
    T = _pose([np.cos(0.4), np.sin(0.4), 0.8])
    Kc = centred_crop_intrinsics(model.diameter, 0.45, 48)
    out = r.render(T[None], Kc[None], 48, use_lstm=False)
    with torch.no_grad():
        truth = render(scene["mesh"], torch.as_tensor(T[None, :3, :3], dtype=torch.float32),
                       torch.as_tensor(T[None, :3, 3], dtype=torch.float32),
                       torch.as_tensor(Kc[None], dtype=torch.float32), (48, 48), coords=False,
                       silhouette=False, visibility=False).texture[0].numpy()
    m = out.masks[0]
    assert out.coverage[0] > 0.9
    assert np.abs(out.images[0] - truth)[m].mean() < 0.05


def test_refinement_moves_a_perturbed_source_towards_its_true_pose(scene):
    model = scene["model"]
    src = prepare_sources(model, scene["images"][:5], scene["poses"][:5], CAM, scene["masks"][:5], crop_size=48)
    true = src.T_cam_obj.copy()
    bad = true.copy()
    bad[2, :3, :3] = np.asarray(so3_exp(np.array([0.0, 0.06, 0.03]))) @ bad[2, :3, :3]
    bad[2, :3, 3] += (0.008, -0.006, 0.0)
    torch.manual_seed(0)
    res = refine_source_poses(NolNet(NolConfig(crop_size=48)), model, src.with_poses(bad),
                              RefineConfig(max_iterations=30, patience=4))
    assert res.errors[0] > min(res.errors) and 1 <= res.iterations <= 30
    before = np.linalg.norm(bad[2, :3, 3] - true[2, :3, 3])
    after = np.linalg.norm(res.T_cam_obj[2, :3, 3] - true[2, :3, 3])
    assert after < before
    # every refined rotation is a rotation
    R = res.T_cam_obj[:, :3, :3]
    assert np.allclose(R @ np.swapaxes(R, 1, 2), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-5)


def test_hemisphere_poses_are_upright_and_complete():
    T = hemisphere_poses(0.6)
    assert T.shape == (72 * 18, 4, 4)  # every 5 deg: the paper's 1296 views
    up = T[:, :3, :3] @ np.array([0.0, 0.0, 1.0])  # object z axis in the camera
    assert (up[:, 1] < 1e-9).all()  # points up in the image (camera y is down)
    assert np.allclose(T[:, :3, 3], [0, 0, 0.6])


def test_in_plane_rotation_moves_pixels_like_the_pose(rng):
    K = centred_crop_intrinsics(0.2, 0.6, 33)
    T = _pose([1.0, 0.2, 0.5], dist=0.6)
    img = np.zeros((33, 33, 3), np.uint8)
    X = np.array([0.05, -0.03, 0.02])
    Xc = T[:3, :3] @ X + T[:3, 3]
    u, v = (K @ Xc)[:2] / Xc[2]
    img[int(round(v)), int(round(u))] = 255
    out, _, T2 = rotate_in_plane(img, np.ones((33, 33), bool), T, K, 30.0)
    Xc2 = T2[:3, :3] @ X + T2[:3, 3]
    u2, v2 = (K @ Xc2)[:2] / Xc2[2]
    ys, xs = np.nonzero(out[..., 0] > 40)
    assert abs(xs.mean() - u2) < 1.0 and abs(ys.mean() - v2) < 1.0


def test_bank_and_crops_feed_the_estimator(scene):
    model = scene["model"]
    src = prepare_sources(model, scene["images"], scene["poses"], CAM, scene["masks"], crop_size=S)
    r = NolRenderer(NolNet(NolConfig(crop_size=S)), model, src, refine=False, n_points=300)
    bank = render_nol_bank([r], size=S, step_deg=90.0, elevation_deg=(30.0, 30.0), in_plane_deg=(0, 30))
    assert len(bank) == 8 and bank.images.dtype == np.uint8 and (bank.obj_index == 0).all()
    geo = ObjectGeometry.from_model(model)
    ds = NolCrops(bank, [geo], length=3, seed=1, crop_size=32, stride=2)
    item = ds[0]
    assert set(item) == {"image", "obj_index", "silhouette", "visible", "coords", "keypoints", "scale", "K", "T"}
    assert item["image"].shape == (3, 32, 32) and item["coords"].shape == (1, 3, 16, 16)
    assert item["keypoints"].shape == (1, 9, 2) and item["silhouette"].sum() > 0
    # keypoints are where the crop camera puts the object's keypoints
    Kc, T = item["K"].double().numpy(), item["T"].double().numpy()
    c = T[:3, :3] @ model.keypoints[-1] + T[:3, 3]
    assert np.allclose((Kc @ c)[:2] / c[2], item["keypoints"][0, -1].numpy(), atol=1e-3)
    assert torch.equal(ds[0]["image"], item["image"])


def test_scenes_paste_nol_objects_for_the_detector(scene):
    model = scene["model"]
    src = prepare_sources(model, scene["images"], scene["poses"], CAM, scene["masks"], crop_size=S)
    r = NolRenderer(NolNet(NolConfig(crop_size=S)), model, src, refine=False, n_points=300)
    bank = render_nol_bank([r], size=S, step_deg=90.0, elevation_deg=(30.0, 30.0), in_plane_deg=(0,))
    ds = NolScenes(bank, [ObjectGeometry.from_model(model)], CAM, 80, 60, length=4, seed=2, stride=4)
    items = [ds[i] for i in range(4)]
    for it in items:
        assert it["image"].shape == (3, 60, 80) and it["boxes"].shape == (1, 4) and it["masks"].shape == (1, 15, 20)
        if it["present"][0]:
            ys, xs = np.nonzero(it["masks"][0].numpy())
            b = it["boxes"][0].numpy() / 4  # the visible mask lies inside the amodal box (mask cells of 4 px)
            assert xs.min() >= b[0] - 1.5 and xs.max() <= b[2] + 1.5 and ys.min() >= b[1] - 1.5 and ys.max() <= b[3] + 1.5
    assert any(bool(it["present"][0]) for it in items)


def test_bank_from_pseudo_labels_uses_recording_frames_and_masks(scene, tmp_path):
    model = scene["model"]
    save_nol(NolNet(NolConfig(crop_size=S)), tmp_path / "nol.pt")
    frames = [Frame(img, CAM) for img in scene["images"]]
    inst = [PseudoInstance(i, 0, scene["poses"][i], np.zeros(4), 0.9, scene["masks"][i], 0.9) for i in range(8)]
    inst[3].confidence = 0.1  # not used
    ctx = SimpleNamespace(objects=[model], pseudo=SimpleNamespace(instances=inst), recording=frames, seed=0,
                          device="cpu")
    cfg = NolStageConfig(weights=str(tmp_path / "nol.pt"), render_size=S, step_deg=90.0,
                         elevation_deg=(30.0, 30.0), in_plane_deg=(0.0,), refine=False)
    bank, report = nol_bank_from_pseudo_labels(ctx, cfg)
    assert len(bank) == 4 and (bank.obj_index == 0).all() and 1 <= report["box"]["sources"] <= 7
    cfg.validate()
    with pytest.raises(ConfigError, match="nol-train"):
        NolStageConfig().validate()


def test_stage_trains_the_estimator_on_nol_images(adapt_scene, tmp_path):
    objects = load_objects_config(adapt_scene.objects_yaml)
    rec = Recording(adapt_scene.bag)
    spec = BundleSpec([BundleObject.from_model(m) for m in objects], str(adapt_scene.objects_yaml),
                      PoseNetSpec("keypoint", 32, BackboneConfig((8, 12, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 12, 16), 4), 80, 60), (160, 120))
    torch.manual_seed(0)
    bundle = ModelBundle.create(spec)
    ids = [m.obj_id for m in objects]
    inst = [PseudoInstance(s.im_id, ids.index(g.obj_id), g.T_cam_obj, np.zeros(4), 1.0, g.mask_visib, g.visib_fract)
            for s in BopDataset(adapt_scene.bop, "train_loop").samples(1, load_depth=False)
            for g in s.gt if g.obj_id in ids and g.visib_fract >= 0.3]
    pseudo = PseudoLabels([m.name for m in objects], np.tile(np.eye(4), (len(objects), 1, 1)), np.ones(len(objects)),
                          rec.poses, np.ones(len(rec)), inst)
    ctx = AdaptContext(objects, rec, bundle, tmp_path / "work", adapt_scene.objects_yaml, pseudo=pseudo,
                       progress=False)
    save_nol(NolNet(NolConfig(crop_size=S)), tmp_path / "nol.pt")
    cfg = NolStageConfig(weights=str(tmp_path / "nol.pt"), render_size=S, step_deg=90.0, elevation_deg=(30.0, 30.0),
                         in_plane_deg=(0.0, 30.0), refine=False, crop_batch=2, scene_batch=1, recording_share=0.0,
                         trainer=TrainerConfig(steps=2, warmup_steps=1, log_every=1, checkpoint_every=2))
    before = {k: v.clone() for k, v in bundle.pose_net.state_dict().items()}
    res = NolStage().run(ctx, cfg)
    assert res.details["nol_images"] == 16 and res.artefacts["nol_bank"].is_file()
    assert np.isfinite(res.losses["loss"])
    assert any(not torch.equal(before[k], v) for k, v in bundle.pose_net.state_dict().items())
    assert bundle.spec.provenance["stages"][-1]["stage"] == "nol"
    # three sources: NOL renders, the recording's pseudo-labelled frames and CAD renders in the same batches
    cfg.recording_share, cfg.nol_fraction = 0.5, 1.0
    ctx.work_dir = tmp_path / "work_mixed"
    res = NolStage().run(ctx, cfg)
    assert np.isfinite(res.losses["loss"])


def test_either_source_mixes_two_datasets_deterministically():
    a, b = [{"x": torch.tensor(0)}] * 400, [{"x": torch.tensor(1)}] * 400
    mixed = EitherSource(a, b, 0.25, seed=3)
    picks = np.array([int(mixed[i]["x"]) for i in range(len(mixed))])
    assert len(mixed) == 400 and 0.18 < picks.mean() < 0.32
    assert np.array_equal(picks, [int(EitherSource(a, b, 0.25, seed=3)[i]["x"]) for i in range(400)])
    with pytest.raises(ConfigError, match="recording_share"):
        NolStageConfig(weights="w.pt", recording_share=1.0).validate()


def test_a_wildly_wrong_pose_without_mask_is_dropped_after_refinement(scene, caplog):
    model = scene["model"]
    poses = scene["poses"].copy()
    poses[5][:3, :3] = np.asarray(so3_exp(np.array([0.0, 0.0, np.pi / 2]))) @ poses[5][:3, :3]
    src = prepare_sources(model, scene["images"], poses, CAM, None, crop_size=S, frame_ids=range(8))
    assert len(src) == 8  # without masks nothing can be checked before refinement
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        r = NolRenderer(NolNet(NolConfig(crop_size=S)), model, src, refine=True, n_points=300,
                        refine_config=RefineConfig(max_iterations=5))
    assert 5 not in r.sources.frame_ids and "outlier" in dict(r.sources.dropped)[5]
