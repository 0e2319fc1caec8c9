"""Geometry of the ray-cast renderer: masks, depth and poses agree exactly with the meshes and the camera model."""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from selfpose_core.data.sim.generate import SimConfig, Simulator
from selfpose_core.data.sim.raycast_renderer import TextureAtlas, render_cad


@pytest.fixture(scope="module")
def views():
    sim = Simulator(SimConfig(seed=3, width=320, height=240, fx=290.0, fy=285.0, frames=2, test_frames=1))
    out = [sim.render_view(sim.trajectories[0], 0), sim.render_view(sim.trajectories[3], 0)]
    return sim, out


def _project(K, T_cam_obj, X):
    Xc = X @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    return np.stack([K.fx * Xc[:, 0] / Xc[:, 2] + K.cx, K.fy * Xc[:, 1] / Xc[:, 2] + K.cy], 1)


def test_projected_boxes_match_masks(views):
    sim, vs = views
    for view in vs:
        assert len(view.gt) >= 3
        K = view.frame.K
        for (obj_id, T), full, vis in zip(view.gt, view.masks, view.masks_visib):
            obj = sim.targets[obj_id - 1]
            assert not (vis & ~full).any()  # the visible part lies on the full silhouette
            lo, hi = obj.mesh.vertices.min(0), obj.mesh.vertices.max(0)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            cuv = _project(K, T, corners)
            vv, uu = np.nonzero(full)
            assert uu.min() >= cuv[:, 0].min() - 0.5 and uu.max() <= cuv[:, 0].max() + 0.5
            assert vv.min() >= cuv[:, 1].min() - 0.5 and vv.max() <= cuv[:, 1].max() + 0.5
            puv = _project(K, T, obj.mesh.vertices)
            inside = (puv[:, 0].min() > 1) and (puv[:, 1].min() > 1) and (puv[:, 0].max() < K.width - 2) and \
                (puv[:, 1].max() < K.height - 2)
            # pixel centres on the silhouette lie inside the projected mesh's box ...
            assert uu.min() >= puv[:, 0].min() - 1e-6 and uu.max() <= puv[:, 0].max() + 1e-6
            assert vv.min() >= puv[:, 1].min() - 1e-6 and vv.max() <= puv[:, 1].max() + 1e-6
            if inside:  # ... and fill it up to pixel sampling of the silhouette's corners
                assert uu.min() - puv[:, 0].min() < 2.0 and puv[:, 0].max() - uu.max() < 2.0
                assert vv.min() - puv[:, 1].min() < 2.0 and puv[:, 1].max() - vv.max() < 2.0
            centre = _project(K, T, ((lo + hi) / 2)[None])[0]
            assert full[int(round(centre[1])), int(round(centre[0]))] or obj.name == "drill"


def test_depth_backprojects_onto_the_meshes(views):
    sim, vs = views
    for view in vs:
        K = view.frame.K
        for (obj_id, T), vis in zip(view.gt, view.masks_visib):
            vv, uu = np.nonzero(vis)
            if len(uu) == 0:
                continue
            z = view.render.depth[vv, uu].astype(np.float64)
            X_cam = np.stack([(uu - K.cx) / K.fx * z, (vv - K.cy) / K.fy * z, z], 1)
            T_obj_cam = np.linalg.inv(T)
            X_obj = X_cam @ T_obj_cam[:3, :3].T + T_obj_cam[:3, 3]
            mesh = sim.targets[obj_id - 1].mesh
            rc = o3d.t.geometry.RaycastingScene()
            rc.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                             o3d.core.Tensor(mesh.faces.astype(np.uint32)))
            dist = rc.compute_distance(o3d.core.Tensor(X_obj.astype(np.float32))).numpy()
            assert dist.max() < 1e-3, f"obj {obj_id}: depth off the mesh by {dist.max() * 1e3:.2f} mm"
        assert (view.render.depth > 0).all()  # the room is closed: every pixel sees something


def test_sensor_depth_is_noisy_with_holes_and_mm_steps(views):
    _, vs = views
    view = vs[0]
    d, z = view.frame.depth, view.render.depth
    valid = d > 0
    assert 0.5 < valid.mean() < 0.999
    assert np.allclose(d[valid] * 1000, np.round(d[valid] * 1000), atol=1e-3)
    err = d[valid] - z[valid]
    assert 0.0005 < np.abs(err).mean() < 0.02


def test_cad_render_silhouette_equals_full_mask(views):
    sim, vs = views
    view = vs[0]
    cad = {m.obj_id: m for m in sim.cad_models()}
    for (obj_id, T), full in zip(view.gt, view.masks):
        img = render_cad([cad[obj_id]], [T], view.frame.K)
        sil = img.any(axis=2)
        assert (sil != full).sum() <= 0.01 * max(full.sum(), 1)


def test_texture_atlas_wraps_and_clamps():
    a = np.zeros((2, 4, 3), np.float32)
    a[:, :, 0] = np.arange(4)
    b = np.zeros((3, 2, 3), np.float32)
    b[:, :, 1] = np.arange(3)[::-1, None]  # row 0 (top, v = 1) holds 2
    atlas = TextureAtlas([a, b], [True, False])
    uv = np.array([[0.125, 0.5], [0.0, 0.5], [0.625, 0.5], [0.5, 1.2], [0.5, -0.3], [0.5, 0.5]], np.float32)
    got = atlas.sample(np.array([0, 0, 0, 1, 1, 1]), uv)
    assert got[0, 0] == pytest.approx(0.0)  # texel centre
    assert got[1, 0] == pytest.approx(1.5)  # u = 0 sits between the last and the first texel (wrap)
    assert got[2, 0] == pytest.approx(2.0)
    assert got[3, 1] == pytest.approx(2.0) and got[4, 1] == pytest.approx(0.0)  # v clamps
    assert got[5, 1] == pytest.approx(1.0)
