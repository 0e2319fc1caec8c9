"""Category scenes (`selfpose simulate --categories`): held-out instances known by category only, ground truth in
their NOCS frame, instance meshes in the BOP copy for evaluation."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import yaml

from selfpose_core.cli import simulate as simulate_cli
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.sim.category_shapes import HELDOUT_START
from selfpose_core.data.sim.generate import SimConfig, simulate
from selfpose_core.data.sim.scene import TABLE_HEIGHT
from selfpose_core.errors import ConfigError, DatasetError
from selfpose_core.mesh.objects_config import read_objects_config

TINY = dict(width=160, height=120, fx=142.5, fy=142.5, frames=3, test_frames=1, n_clutter=1)


@pytest.fixture(scope="module")
def category_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "categories"
    cfg = SimConfig(seed=2, objects=["tin_can"], categories=["mug", "bowl", "mug"], **TINY)
    return out, simulate(out, cfg, progress=False)


def test_learner_gets_categories_only(category_scene):
    out, _ = category_scene
    entries = read_objects_config(out / "objects.yaml")
    assert [(e.category, e.mesh is None) for e in entries] == [("can", False), ("mug", True), ("bowl", True),
                                                               ("mug", True)]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["tin_can.ply"]  # no instance mesh for the learner
    names = [e.name for e in entries[1:]]
    assert names == [f"mug_{HELDOUT_START}", f"bowl_{HELDOUT_START}", f"mug_{HELDOUT_START + 1}"]


def test_ground_truth_in_the_nocs_frame_standing_on_the_table(category_scene):
    out, summary = category_scene
    bop = BopDataset(out / "bop", "train_loop")
    models = {m.obj_id: m for m in bop.objects}
    scene = yaml.safe_load((out / "scene.yaml").read_text())
    for o in scene["objects"][1:]:
        model = models[o["obj_id"]]
        lo, hi = model.bbox
        assert np.allclose(lo + hi, 0.0, atol=2e-6)  # box-centred (the PLY stores float32 millimetres)
        assert np.allclose(hi - lo, o["nocs_size_m"], atol=2e-6)
        assert o["nocs_scale_m"] == pytest.approx(np.linalg.norm(o["nocs_size_m"]), abs=1e-5)
        assert o["heldout"] and o["instance_index"] >= HELDOUT_START
    axis = models[3].symmetry.continuous[0][0]
    assert np.allclose(axis, [0, 1, 0]) and not models[2].symmetry.is_symmetric  # bowl about y; mug none
    seen = set()
    for sample in bop.samples(1):
        for g in sample.gt:
            if g.obj_id == 1:
                continue
            seen.add(g.obj_id)
            T_world_obj = sample.frame.T_world_cam @ g.T_cam_obj
            assert np.allclose(T_world_obj[:3, 1], [0, 0, 1], atol=1e-6)  # NOCS y is world up
            v = models[g.obj_id].vertices @ T_world_obj[:3, :3].T + T_world_obj[:3, 3]
            assert v[:, 2].min() == pytest.approx(TABLE_HEIGHT, abs=1e-5)  # standing on the table top
            # the rendered silhouette lies inside the projection of the model at the ground-truth pose
            cam = models[g.obj_id].vertices @ g.T_cam_obj[:3, :3].T + g.T_cam_obj[:3, 3]
            K = sample.frame.K
            u, w = K.fx * cam[:, 0] / cam[:, 2] + K.cx, K.fy * cam[:, 1] / cam[:, 2] + K.cy
            ys, xs = np.nonzero(g.mask_visib)
            assert len(xs) > 0
            assert xs.min() >= u.min() - 1.5 and xs.max() <= u.max() + 1.5
            assert ys.min() >= w.min() - 1.5 and ys.max() <= w.max() + 1.5
    assert seen == {2, 3, 4}


def test_cli_categories_choose_the_targets(tmp_path):
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    only = simulate_cli.config_from_args(parser.parse_args(["simulate", "--categories", "laptop, can"]))
    assert only.objects == [] and only.categories == ["laptop", "can"]
    both = simulate_cli.config_from_args(parser.parse_args(["simulate", "--categories", "mug", "--objects", "2"]))
    assert both.objects == ["cereal_box", "tin_can"] and both.categories == ["mug"]
    with pytest.raises(ConfigError, match=r"--categories: unknown category\(ies\) \['cup'\]; available: bottle"):
        args = parser.parse_args(["simulate", "--out", str(tmp_path / "x"), "--categories", "mug,cup"])
        args.func(args)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="categories: unknown"):
        SimConfig(objects=[], categories=["plate"])


def _look_at(eye: np.ndarray) -> np.ndarray:
    """T_obj_cam of an optical-frame camera at ``eye`` looking at the origin, image up = +y."""
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    T[:3, 3] = eye
    return T


@pytest.mark.parametrize("eye, visible", [((0.5, 0.2, 0.05), True), ((0.05, 0.2, 0.5), True),
                                          ((-0.5, 0.2, 0.05), False), ((-0.3, 0.1, -0.05), False)])
def test_handle_visibility_from_the_rendered_depth(eye, visible):
    import open3d as o3d

    from selfpose_core.data.sim.category_objects import handle_visible
    from selfpose_core.data.sim.category_shapes import instance
    from selfpose_core.data.sim.raycast_renderer import pixel_rays
    from selfpose_core.types import CameraIntrinsics

    mug = instance("mug", 4)
    tm = mug.trimesh()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(tm.vertices.astype(np.float32)), o3d.core.Tensor(tm.faces.astype(np.uint32)))
    K = CameraIntrinsics(300.0, 300.0, 79.5, 59.5, 160, 120)
    T_obj_cam = _look_at(np.array(eye))
    t = scene.cast_rays(o3d.core.Tensor(pixel_rays(K, T_obj_cam)))["t_hit"].numpy()  # unit camera-z: z-depth
    hit = np.isfinite(t)
    T_cam_obj = np.linalg.inv(T_obj_cam)
    assert handle_visible(mug.parts[1], T_cam_obj, K, np.where(hit, t, 0.0), hit) is visible


def test_handle_visibility_written_per_scene(category_scene):
    from selfpose_core.data.sim.category_objects import read_handle_visibility

    out, _ = category_scene
    vis = read_handle_visibility(out / "bop" / "train_loop" / "000001")
    assert sorted(vis) == [0, 1, 2] and all(set(v) <= {2, 4} for v in vis.values())  # the two mugs
    assert read_handle_visibility(out / "bop" / "no_such_scene") == {}
    bad = out / "bad_scene"
    bad.mkdir()
    (bad / "scene_handle_visibility.json").write_text('{"0": {"2": "yes"}}')
    with pytest.raises(DatasetError, match="scene_handle_visibility.json: not a mapping"):
        read_handle_visibility(bad)


def test_nocs_ap_on_the_scene_ground_truth(category_scene):
    from selfpose_core.data.sim.category_objects import read_handle_visibility
    from selfpose_core.eval.nocs import CategoryPose, category_targets, nocs_average_precision

    out, _ = category_scene
    bop = BopDataset(out / "bop", "train_loop")
    targets = category_targets(bop)
    assert {t.category for t in targets} == {"mug", "bowl"}  # the tin can's "can" is a label of a mesh object
    assert all(np.allclose(t.size, np.ptp(bop.objects[2].vertices, axis=0), atol=2e-6) for t in targets if t.category == "bowl")
    handles = read_handle_visibility(bop.scene_dir(1))
    for im_id, per_mug in handles.items():
        mugs = [t.handle_visible for t in targets if t.image_id == (1, im_id) and t.category == "mug"]
        assert sorted(mugs) == sorted(per_mug.values())
    perfect = nocs_average_precision(targets, targets)
    assert all(v == pytest.approx(1.0) for v in perfect["mean"].values())
    # The bowls turned about their up axis by 40 deg: still perfect; shifted by 3 cm: 5deg2cm lost, 5deg5cm kept.
    turn = np.array([[np.cos(0.7), 0, np.sin(0.7), 0], [0, 1, 0, 0], [-np.sin(0.7), 0, np.cos(0.7), 0], [0, 0, 0, 1]])
    shift = np.eye(4)
    shift[0, 3] = 0.03
    moved = [CategoryPose(t.image_id, t.category, shift @ t.T_cam_obj @ turn if t.category == "bowl" else t.T_cam_obj,
                          t.size) for t in targets]
    ap = nocs_average_precision(moved, targets)
    assert ap["bowl"]["5deg2cm"] == 0.0 and ap["bowl"]["5deg5cm"] == pytest.approx(1.0)
    assert ap["mug"]["5deg2cm"] == pytest.approx(1.0)
