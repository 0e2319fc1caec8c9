"""Depth-based scene registration: fusion, table + clusters, upright 4-DOF ICP, CAD registration and assignment."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.adapt.scene_registration import (RegistrationConfig, fuse_depth,
                                                     register_objects, tabletop_clusters)
from selfpose_core.estimate.tabletop import upright_icp
from selfpose_core.data.sim import catalog
from selfpose_core.geometry.se3 import rotation_angle
from selfpose_core.geometry.symmetry import closest_symmetric_pose
from selfpose_core.types import CameraIntrinsics

TABLE_Z = 0.5


def _ring(n: int = 12, radius: float = 0.9, height: float = 0.6) -> np.ndarray:
    """(n, 4, 4) cameras on a ring looking at (0, 0, TABLE_Z) (optical z forward, y down)."""
    poses = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        c = np.array([radius * np.cos(a), radius * np.sin(a), TABLE_Z + height])
        z = -c + [0, 0, TABLE_Z]
        z /= np.linalg.norm(z)
        x = np.cross(z, [0, 0, 1.0])
        x /= np.linalg.norm(x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
        T[:3, 3] = c
        poses.append(T)
    return np.stack(poses)


def _upright(yaw_deg: float, xy: tuple[float, float], model) -> np.ndarray:
    a = np.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = (xy[0], xy[1], TABLE_Z - model.vertices[:, 2].min())
    return T


def _surface_points(model, T, n, rng):
    """Points on the model's surface at T, without the faces that touch the table, with 1.5 mm noise."""
    import trimesh

    mesh = trimesh.Trimesh(model.vertices, model.faces, process=False)
    pts, fid = trimesh.sample.sample_surface(mesh, 3 * n, seed=int(rng.integers(1 << 30)))
    world = pts @ T[:3, :3].T + T[:3, 3]
    keep = (mesh.face_normals[fid] @ T[:3, :3].T)[:, 2] > -0.5
    return world[keep][:n] + rng.normal(0, 0.0015, (min(n, keep.sum()), 3))


@pytest.fixture(scope="module")
def scene():
    """A table top with a mug, a cereal box and a ball (clutter); the objects' true world poses."""
    rng = np.random.default_rng(0)
    objs = {o.name: o for o in catalog.make_targets(["cereal_box", "mug"], np.random.default_rng(1))}
    models = [objs["cereal_box"].cad_model(1), objs["mug"].cad_model(2)]
    truth = [_upright(35.0, (0.15, -0.1), models[0]), _upright(-120.0, (-0.2, 0.12), models[1])]
    table = np.column_stack([rng.uniform(-0.5, 0.5, 40000), rng.uniform(-0.4, 0.4, 40000), np.full(40000, TABLE_Z)])
    table += rng.normal(0, 0.001, table.shape)
    ball = rng.normal(size=(3000, 3))
    ball = 0.05 * ball / np.linalg.norm(ball, axis=1, keepdims=True) + [0.2, 0.25, TABLE_Z + 0.05]
    ball = ball[ball[:, 2] > TABLE_Z + 0.01]
    cloud = np.concatenate([table, ball] + [_surface_points(m, T, 6000, rng) for m, T in zip(models, truth)])
    return models, truth, cloud


def test_fuse_depth_puts_a_flat_table_back_in_the_world():
    K = CameraIntrinsics(300.0, 300.0, 79.5, 59.5, 160, 120)
    T = _ring(4)
    def depth_of(i):  # a horizontal plane z = TABLE_Z seen by camera i, ray by ray
        v, u = np.mgrid[0:120, 0:160]
        rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones_like(u, float)], -1) @ T[i][:3, :3].T
        s = (TABLE_Z - T[i][2, 3]) / rays[..., 2]
        d = s.astype(np.float32)
        d[::7, ::5] = np.nan  # invalid pixels are skipped
        return d
    pts = fuse_depth(depth_of, range(4), T, lambda i: K, RegistrationConfig(stride=2, max_depth=5.0))
    assert len(pts) > 500 and np.abs(pts[:, 2] - TABLE_Z).max() < 1e-6


def test_tabletop_clusters_finds_the_table_and_three_objects(scene):
    models, truth, cloud = scene
    plane, clusters = tabletop_clusters(cloud, np.array([0.0, 0.0, TABLE_Z + 0.1]), RegistrationConfig())
    assert np.allclose(plane[:3], [0, 0, 1], atol=0.01) and abs(plane[3] + TABLE_Z) < 0.005
    assert len(clusters) == 3


def test_upright_icp_recovers_yaw_and_translation_and_stays_upright(scene):
    models, truth, cloud = scene
    rng = np.random.default_rng(3)
    pts = _surface_points(models[1], truth[1], 3000, rng)
    from selfpose_core.geometry.se3 import so3_exp

    T0 = truth[1].copy()  # 12 degrees of yaw and 1.8 cm off
    T0[:3, :3] = so3_exp(np.radians([0.0, 0.0, 12.0])) @ T0[:3, :3]
    T0[:3, 3] += [0.01, -0.015, 0.0]
    dense = _surface_points(models[1], np.eye(4), 4000, rng)
    T = upright_icp(dense, pts, T0, np.array([0, 0, 1.0]), (0.04, 0.02, 0.01), 30)
    assert np.degrees(rotation_angle(T[:3, :3], truth[1][:3, :3])) < 1.0
    assert np.linalg.norm(T[:3, 3] - truth[1][:3, 3]) < 0.003
    assert abs(T[2, 2] - 1.0) < 1e-9  # rotation about z only


def test_register_objects_finds_both_objects_and_leaves_the_ball(scene):
    models, truth, cloud = scene
    found = register_objects(models, cloud, _ring(), RegistrationConfig())
    assert sorted(found) == [0, 1]
    assert len({f.cluster for f in found.values()}) == 2
    for k, f in found.items():
        T = closest_symmetric_pose(truth[k], f.T_world_obj, models[k].symmetry)
        assert np.linalg.norm(T[:3, 3] - truth[k][:3, 3]) < 0.005, models[k].name
        assert np.degrees(rotation_angle(T[:3, :3], truth[k][:3, :3])) < 2.0, models[k].name
        assert f.fscore > 0.8


def test_no_table_no_objects():
    rng = np.random.default_rng(0)
    wall = np.column_stack([rng.uniform(-0.5, 0.5, 5000), np.zeros(5000), rng.uniform(0.3, 0.9, 5000)])
    assert register_objects([], wall, _ring(), RegistrationConfig()) == {}


def test_bad_registration_config_names_the_key():
    from selfpose_core.errors import ConfigError

    with pytest.raises(ConfigError, match="registration.tau"):
        RegistrationConfig(tau=0.0).validate()


def test_any_orientation_registration_finds_the_upright_box_too(scene):
    """``upright: false`` (FPFH-RANSAC + point-to-plane ICP) on the same table: the box within 1 cm / 5 deg."""
    models, truth, cloud = scene
    plane, clusters = tabletop_clusters(cloud, np.array([0.0, 0.0, TABLE_Z + 0.1]), RegistrationConfig())
    from selfpose_core.adapt.scene_registration import register_model

    box = min(clusters, key=lambda c: np.linalg.norm(c.mean(0)[:2] - truth[0][:2, 3]))  # the nearest cluster
    T, f = register_model(models[0], box, plane, RegistrationConfig(upright=False))
    T = closest_symmetric_pose(truth[0], T, models[0].symmetry)
    assert f > 0.8
    assert np.linalg.norm(T[:3, 3] - truth[0][:3, 3]) < 0.01
    assert np.degrees(rotation_angle(T[:3, :3], truth[0][:3, :3])) < 5.0


def test_register_objects_finds_an_object_lying_in_another_resting_pose():
    """A cereal box lying on its broad face: found by the resting-pose hypotheses, not by upright ones."""
    from selfpose_core.estimate.hypotheses import resting_rotations

    rng = np.random.default_rng(2)
    box = catalog.make_targets(["cereal_box"], np.random.default_rng(1))[0].cad_model(1)
    rests = resting_rotations(box, 4)
    lying = next(R for R in rests if abs(R[2] @ [0.0, 0.0, 1.0]) < 0.5)  # the mesh's z lies horizontal
    T = np.eye(4)
    a = np.radians(20.0)
    T[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ lying
    T[:3, 3] = (0.05, 0.0, 0.0)
    T[2, 3] = TABLE_Z - (box.vertices @ T[:3, :3].T)[:, 2].min()
    table = np.column_stack([rng.uniform(-0.5, 0.5, 40000), rng.uniform(-0.4, 0.4, 40000), np.full(40000, TABLE_Z)])
    cloud = np.concatenate([table, _surface_points(box, T, 6000, rng)])
    found = register_objects([box], cloud, _ring(), RegistrationConfig())
    assert list(found) == [0]
    T_found = closest_symmetric_pose(T, found[0].T_world_obj, box.symmetry)
    assert np.linalg.norm(T_found[:3, 3] - T[:3, 3]) < 0.005
    assert np.degrees(rotation_angle(T_found[:3, :3], T[:3, :3])) < 2.0
    assert not register_objects([box], cloud, _ring(), RegistrationConfig(resting_poses=1))  # upright only: none


def test_register_objects_finds_two_touching_objects_in_one_cluster(scene):
    """The mug 2 mm from the cereal box: one cluster in the fused cloud. Both objects are registered on it,
    each explaining its own points."""
    models, truth, _ = scene
    rng = np.random.default_rng(3)
    box, mug = models
    T_box = truth[0]
    side = T_box[:3, :3] @ [0.0, -1.0, 0.0]  # the box's broad face (19 x 28 cm)
    T_mug = _upright(-120.0, (0.0, 0.0), mug)
    reach = ((mug.vertices @ T_mug[:3, :3].T) @ -side).max()
    T_mug[:2, 3] = (T_box[:3, 3] + (box.vertices[:, 1].max() + 0.002 + reach) * side)[:2]
    table = np.column_stack([rng.uniform(-0.5, 0.5, 40000), rng.uniform(-0.4, 0.4, 40000), np.full(40000, TABLE_Z)])
    cloud = np.concatenate([table, _surface_points(box, T_box, 6000, rng), _surface_points(mug, T_mug, 3000, rng)])
    _, clusters = tabletop_clusters(cloud, np.array([0.0, 0.0, TABLE_Z]), RegistrationConfig())
    assert len(clusters) == 1
    found = register_objects(models, cloud, _ring(), RegistrationConfig())
    assert sorted(found) == [0, 1] and found[0].cluster == found[1].cluster
    for k, T_true, max_deg in ((0, T_box, 2.0), (1, T_mug, 3.0)):  # box points within the ICP gate turn the mug
        T = closest_symmetric_pose(T_true, found[k].T_world_obj, models[k].symmetry)
        assert np.linalg.norm(T[:3, 3] - T_true[:3, 3]) < 0.005, models[k].name
        assert np.degrees(rotation_angle(T[:3, :3], T_true[:3, :3])) < max_deg, models[k].name
