"""A rendered table scene (three objects, a ball of clutter, two camera poses) shared by the estimate tests, and
a bundle with random network weights for it (every pose then comes from the depth)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from selfpose_core.data.sim import catalog
from selfpose_core.geometry.se3 import invert, rotation_angle
from selfpose_core.geometry.symmetry import closest_symmetric_pose
from selfpose_core.mesh.loading import save_mesh
from selfpose_core.mesh.objects_config import load_objects_config, write_objects_config
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(570.0, 570.0, 319.5, 239.5, 640, 480)
COLOURS = [(200, 40, 40), (40, 160, 60), (50, 70, 200)]
NAMES = ["cereal_box", "mug", "bottle"]


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_world_cam of an optical frame at ``eye`` looking at ``target`` with no roll (world z up)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    T[:3, 3] = eye
    return T


def _upright(model, yaw_deg: float, xy: tuple[float, float]) -> np.ndarray:
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = (xy[0], xy[1], -model.vertices[:, 2].min())
    return T


def _render_scene(models, T_world_obj, T_world_cam, clutter: bool):
    """(rgb, depth, visible masks) of a grey table (z = 0) with the objects (flat colours) and an optional ball."""
    parts = [(np.array([[-0.8, -0.8, 0], [0.8, -0.8, 0], [0.8, 0.8, 0], [-0.8, 0.8, 0.0]]),
              np.array([[0, 1, 2], [0, 2, 3]]), (120, 120, 120))]
    for m, T, col in zip(models, T_world_obj, COLOURS):
        parts.append((m.vertices @ T[:3, :3].T + T[:3, 3], m.faces, col))
    if clutter:
        import trimesh

        ball = trimesh.creation.icosphere(3, 0.04)
        parts.append((np.asarray(ball.vertices) + [0.0, 0.25, 0.04], np.asarray(ball.faces), (230, 200, 30)))
    verts, faces, owner, offset = [], [], [], 0
    for i, (v, f, _) in enumerate(parts):
        verts.append(v)
        faces.append(f + offset)
        owner.append(np.full(len(f), i))
        offset += len(v)
    T = invert(T_world_cam)
    out = render(RenderMesh(torch.tensor(np.concatenate(verts)), torch.tensor(np.concatenate(faces))),
                 torch.tensor(T[None, :3, :3]), torch.tensor(T[None, :3, 3]), torch.tensor(K.K[None]), (480, 640),
                 coords=False, attributes=False, silhouette=False, visibility=False)
    face = out.face_ids[0].numpy()
    part = np.where(face >= 0, np.concatenate(owner)[np.maximum(face, 0)], -1)
    rgb = np.zeros((480, 640, 3), np.uint8)
    for i, (_, _, col) in enumerate(parts):
        rgb[part == i] = col
    depth = out.depth[0].numpy().astype(np.float32)
    depth[part < 0] = 0.0
    return rgb, depth, [part == i + 1 for i in range(len(models))]


@pytest.fixture(scope="module")
def scene():
    objs = catalog.make_targets(NAMES, np.random.default_rng(1))
    models = [o.cad_model(i + 1) for i, o in enumerate(objs)]
    T_world_obj = [_upright(models[0], 30.0, (0.12, -0.08)), _upright(models[1], -100.0, (-0.15, 0.05)),
                   _upright(models[2], 0.0, (0.05, 0.15))]
    cams = [_look_at(np.array([0.9 * np.cos(a), 0.9 * np.sin(a), 0.6]), np.zeros(3)) for a in (-2.2, 0.8)]
    frames = []
    for T_wc in cams:
        rgb, depth, masks = _render_scene(models, T_world_obj, T_wc, clutter=True)
        frames.append((Frame(rgb=rgb, K=K, depth=depth, T_world_cam=T_wc), masks))
    return models, T_world_obj, frames


def _pose_errors(model, T_est, T_true):
    T_sym = closest_symmetric_pose(T_est, T_true, model.symmetry) if model.symmetry.is_symmetric else T_true
    return float(np.linalg.norm(T_est[:3, 3] - T_sym[:3, 3])), float(np.degrees(rotation_angle(T_est[:3, :3],
                                                                                              T_sym[:3, :3])))


@pytest.fixture(scope="module")
def look_at():
    """T_world_cam of an optical frame at ``eye`` looking at ``target`` with no roll (world z up)."""
    return _look_at


@pytest.fixture(scope="module")
def render_scene():
    """(rgb, depth, visible masks) of the table with ``models`` at ``T_world_obj`` seen from ``T_world_cam``."""
    return _render_scene


@pytest.fixture
def pose_errors():
    """(translation error m, rotation error deg) of ``T_est`` against ``T_true``, up to the model's symmetries."""
    return _pose_errors


@pytest.fixture(scope="module")
def random_bundle(scene, tmp_path_factory) -> Path:
    """A bundle of the scene's objects with random network weights and an appearance model from frame 0."""
    models, _, frames = scene
    folder = tmp_path_factory.mktemp("bundle")
    entries = []
    for m in models:
        save_mesh(m, folder / f"{m.name}.ply")
        entries.append({"name": m.name, "mesh": str(folder / f"{m.name}.ply"), "obj_id": m.obj_id})
    write_objects_config(folder / "objects.yaml", entries)
    loaded = load_objects_config(folder / "objects.yaml")
    spec = BundleSpec([BundleObject.from_model(m) for m in loaded], "../objects.yaml",
                      PoseNetSpec("correspondence", 64, BackboneConfig((8, 8, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 160, 120, 0.3), (640, 480))
    torch.manual_seed(0)
    bundle = ModelBundle.create(spec)
    frame, masks = frames[0]
    bundle.appearance = AppearanceModel.fit(len(models), [(frame.rgb, m, k) for k, m in enumerate(masks)])
    return bundle.save(folder / "bundle")
