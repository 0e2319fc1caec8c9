"""The hard embedded scene (targets lying in other resting poses, objects in contact, look-alike distractors) and the
normal scene as before (all upright, apart)."""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import trimesh
import yaml
from scipy.spatial import ConvexHull

from selfpose_core.data.bop import BopDataset
from selfpose_core.data.sim.camera_effects import REALSENSE_DEPTH, DepthEffects
from selfpose_core.data.sim.catalog import TARGETS, dominant_colors, lookalike, make_targets
from selfpose_core.data.sim.generate import SimConfig, Simulator, simulate
from selfpose_core.data.sim.scene import TABLE_HEIGHT, HardLayout, build_scene
from selfpose_core.data.sim.shapes import weld
from selfpose_core.errors import ConfigError

SMALL = dict(width=160, height=120, fx=142.5, fy=142.5, frames=1, test_frames=0)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    """A simulated hard dataset (one frame) and the simulator of the same config."""
    out = tmp_path_factory.mktemp("hard") / "scene"
    cfg = SimConfig(seed=0, difficulty="hard", **SMALL)
    simulate(out, cfg, progress=False)
    return out, Simulator(cfg)


def _posed(inst) -> tuple[np.ndarray, np.ndarray]:
    """World vertices (N, 3) and faces (F, 3) of an instance's closed (welded) mesh."""
    v, f = weld(inst.obj.mesh)
    T = inst.T_world_obj
    return v @ T[:3, :3].T + T[:3, 3], f


def _on_table(scene) -> list:
    """Targets and distractors on the table top (not the room, the table or the floor clutter)."""
    return [i for i in scene.instances if i.obj.category != "background" and i.T_world_obj[2, 3] > 0.3]


def _hard_scenes():
    targets = make_targets(list(TARGETS), np.random.default_rng(0))
    return [build_scene(targets, np.random.default_rng([s, 2]), hard=HardLayout()) for s in range(3)]


def test_targets_rest_on_the_table_and_some_lie():
    for scene in _hard_scenes():
        tilts = []
        for inst in scene.targets:
            v, f = _posed(inst)
            z = v[:, 2]
            assert abs(z.min() - TABLE_HEIGHT) < 1e-3 and (z >= TABLE_HEIGHT - 1e-9).all(), inst.obj.name
            # stable: the centre of mass lies above the support polygon (the vertices touching the table)
            com = trimesh.Trimesh(v, f, process=False).center_mass
            support = ConvexHull(v[z < TABLE_HEIGHT + 1e-4, :2])
            assert (support.equations[:, :2] @ com[:2] + support.equations[:, 2] < 0).all(), inst.obj.name
            tilts.append(np.degrees(np.arccos(np.clip(inst.T_world_obj[2, 2], -1.0, 1.0))))
        assert max(tilts) > 30.0
        assert min(tilts) < 1e-6  # the others stand upright


def _closed_scene(v: np.ndarray, f: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
    return rc


def test_a_target_pair_in_contact_and_nothing_interpenetrates(hard):
    _, sim = hard
    items = _on_table(sim.scene(0))
    rng = np.random.default_rng(0)
    meshes = [_posed(i) for i in items]
    points = []
    for v, f in meshes:  # the vertices plus random points on the surface
        on_faces = np.einsum("ni,nij->nj", rng.dirichlet(np.ones(3), 4000), v[f[rng.integers(0, len(f), 4000)]])
        points.append(o3d.core.Tensor(np.concatenate([v, on_faces]).astype(np.float32)))
    scenes = [_closed_scene(v, f) for v, f in meshes]
    closest = np.inf
    for a in range(len(items)):
        for b in range(len(items)):
            if a == b:
                continue
            assert scenes[b].compute_occupancy(points[a]).numpy().sum() == 0, (items[a].obj.name, items[b].obj.name)
            if items[a].obj_id and items[b].obj_id:
                closest = min(closest, float(scenes[b].compute_distance(points[a]).numpy().min()))
    assert closest <= 0.005


def test_lookalikes_have_a_targets_size_and_colours(hard):
    _, sim = hard
    names = [i.obj.name for i in _on_table(sim.scene(0)) if "_like_" in i.obj.name]
    assert len(names) == HardLayout().n_lookalikes
    rng = np.random.default_rng(1)
    for target in sim.targets:
        look = lookalike(rng, target, 0)
        size_t = np.ptp(target.mesh.vertices, 0)
        size_l = np.ptp(look.mesh.vertices, 0)
        assert 0.8 < size_l[2] / size_t[2] < 1.2 and 0.8 < size_l[:2].min() / size_t[:2].min() < 1.2, target.name
        main = np.array(dominant_colors(look.texture)[0])
        assert min(np.abs(main - c).max() for c in dominant_colors(target.texture)) <= 24, target.name


def test_ground_truth_is_the_rendered_pose(hard):
    out, sim = hard
    summary = yaml.safe_load((out / "scene.yaml").read_text())
    assert summary["difficulty"] == "hard" and summary["config"]["depth_effects"]["flying_pixels"] > 0
    poses = {i.obj_id: i.T_world_obj for i in sim.scene(0).targets}
    for o in summary["objects"]:
        assert np.allclose(o["T_world_obj"], poses[o["obj_id"]], atol=1e-6)
    view = sim.render_view(sim.trajectories[0], 0)
    sample = BopDataset(out / "bop", "train_loop").sample(1, 0)
    assert len(sample.gt) >= 3
    K = view.frame.K
    for g in sample.gt:
        assert np.allclose(g.T_cam_obj, np.linalg.inv(view.T_world_cam_true) @ poses[g.obj_id], atol=1e-6)
        vv, uu = np.nonzero(g.mask_visib)
        z = view.render.depth[vv, uu].astype(np.float64)
        X = np.stack([(uu - K.cx) / K.fx * z, (vv - K.cy) / K.fy * z, z], 1)
        T = np.linalg.inv(g.T_cam_obj)
        v, f = weld(sim.targets[g.obj_id - 1].mesh)
        dist = _closed_scene(v, f).compute_distance(o3d.core.Tensor((X @ T[:3, :3].T + T[:3, 3]).astype(np.float32)))
        assert dist.numpy().max() < 1e-3, f"obj {g.obj_id}: rendered surface off its ground-truth pose"


def test_hard_same_seed_same_bytes():
    def frame(seed: int) -> list[bytes]:
        sim = Simulator(SimConfig(seed=seed, difficulty="hard", **SMALL))
        v = sim.render_view(sim.trajectories[0], 0)
        return [v.frame.rgb.tobytes(), v.frame.depth.tobytes(), np.stack([T for _, T in v.gt]).tobytes()]

    assert frame(4) == frame(4)


def test_normal_scene_is_upright_and_apart():
    sim = Simulator(SimConfig(seed=0, **{**SMALL, "test_frames": 1}))
    assert sim.config.depth_effects == DepthEffects()
    for style in range(4):
        items = _on_table(sim.scene(style))
        assert not any("_like_" in i.obj.name for i in items)
        for inst in items:
            R, t = inst.T_world_obj[:3, :3], inst.T_world_obj[:3, 3]
            assert R[2, 2] == 1.0 and t[2] == pytest.approx(TABLE_HEIGHT + inst.obj.half_height, abs=1e-12)
        for a, ia in enumerate(items):
            for ib in items[a + 1:]:
                gap = np.linalg.norm(ia.T_world_obj[:2, 3] - ib.T_world_obj[:2, 3]) - ia.obj.footprint_radius - \
                    ib.obj.footprint_radius
                assert gap > 0.02  # place_on_table's footprint circles 2 cm apart: nothing touches


def test_difficulty_is_checked_and_hard_switches_the_depth_model():
    with pytest.raises(ConfigError, match="difficulty must be one of normal, hard, got 'extreme'"):
        SimConfig(difficulty="extreme")
    assert SimConfig(difficulty="hard").depth_effects == REALSENSE_DEPTH
    custom = DepthEffects(dropout=0.0)
    assert SimConfig(difficulty="hard", depth_effects=custom).depth_effects == custom
