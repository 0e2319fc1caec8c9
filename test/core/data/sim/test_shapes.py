"""Procedural meshes: closed, outward-oriented, consistent UVs and normals; the catalog's objects and symmetries."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from selfpose_core.data.sim import catalog
from selfpose_core.data.sim.shapes import box, box_net_cells, revolve, rounded_c_path, sweep_tube, weld


def _closed_outward(mesh) -> trimesh.Trimesh:
    v, f = weld(mesh)
    tm = trimesh.Trimesh(v, f, process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0  # faces wound counter-clockwise seen from outside
    return tm


def test_revolve_cylinder_volume_and_normals():
    r, h = 0.05, 0.1
    m = revolve(np.array([[0, 0], [r, 0], [r, 0], [r, h], [r, h], [0, h]]), 64)
    tm = _closed_outward(m)
    exact = 0.5 * 64 * r * r * np.sin(2 * np.pi / 64) * h  # inscribed 64-gon prism
    assert tm.volume == pytest.approx(exact, rel=1e-9)
    side = (m.vertices[:, 2] > 1e-9) & (m.vertices[:, 2] < h - 1e-9)
    radial = m.vertices[side, :2] / np.linalg.norm(m.vertices[side, :2], axis=1, keepdims=True)
    assert np.allclose(m.normals[side, :2], radial) and np.allclose(m.normals[side, 2], 0)


def test_box_net_and_normals():
    size = (0.2, 0.1, 0.3)
    m = box(size)
    tm = _closed_outward(m)
    assert tm.volume == pytest.approx(np.prod(size))
    cells = box_net_cells(size)
    areas = [(u1 - u0) * (v1 - v0) for u0, v0, u1, v1 in cells.values()]
    assert sum(areas) < 1.0 and all(a > 0 for a in areas)
    assert np.allclose(np.abs(m.normals).sum(1), 1.0)


def test_tube_is_closed():
    path = rounded_c_path(0.03, 0.07, 0.02, 0.08, 0.015)
    _closed_outward(sweep_tube(path, 0.005, 12))


@pytest.mark.parametrize("name", list(catalog.TARGETS))
def test_targets_closed_centred_and_textured(name):
    obj = catalog.make_targets([name], np.random.default_rng(0))[0]
    _closed_outward(obj.mesh)
    lo, hi = obj.mesh.vertices.min(0), obj.mesh.vertices.max(0)
    assert np.allclose((lo + hi) / 2, 0.0, atol=1e-12)  # origin at the bounding-box centre
    assert 0.05 < (hi - lo).max() < 0.35  # household size in metres
    assert obj.texture.dtype == np.uint8 and obj.texture.ndim == 3
    assert len(obj.mesh.faces) <= 5000
    assert obj.textureless == (len(np.unique(obj.texture.reshape(-1, 3), axis=0)) == 1)
    cad = obj.cad_model(3)
    assert cad.obj_id == 3 and cad.texture is None and cad.vertex_colors is None and cad.uv is None
    assert (hi - lo).max() <= cad.diameter <= np.linalg.norm(hi - lo) + 1e-9


def test_catalog_has_textureless_and_symmetric_objects():
    objs = catalog.make_targets(list(catalog.TARGETS), np.random.default_rng(0))
    assert any(o.textureless for o in objs)
    sym = {o.name: o for o in objs if o.symmetry.is_symmetric}
    assert sorted(sym) == ["bottle", "bowl", "cereal_box", "tin_can"]
    for name in ("bottle", "bowl", "tin_can"):
        axis, offset = sym[name].symmetry.continuous[0]
        assert np.allclose(axis, [0, 0, 1]) and np.allclose(offset, 0)
    assert len(sym["cereal_box"].symmetry.discrete) == 3
    # the bowl's texture depends on v only: its appearance is invariant to rotations about z
    assert (sym["bowl"].texture == sym["bowl"].texture[:, :1]).all()


def test_declared_symmetries_map_the_cad_shape_onto_itself():
    """Each declared symmetry moves the CAD surface onto itself (within 0.5 mm), the mug's handle breaks them."""
    import open3d as o3d
    import trimesh

    from selfpose_core.geometry.symmetry import symmetry_transforms

    objs = {o.name: o for o in catalog.make_targets(list(catalog.TARGETS), np.random.default_rng(0))}

    def off_surface(cad, T):
        pts = trimesh.sample.sample_surface(trimesh.Trimesh(cad.vertices, cad.faces, process=False), 400, seed=0)[0]
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(cad.vertices.astype(np.float32)),
                            o3d.core.Tensor(cad.faces.astype(np.uint32)))
        moved = (pts @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
        return float(scene.compute_distance(o3d.core.Tensor(moved)).numpy().max())

    for name in ("cereal_box", "tin_can", "bottle", "bowl"):
        cad = objs[name].cad_model(1)
        for T in symmetry_transforms(cad.symmetry, n_continuous=5)[1:]:
            assert off_surface(cad, T) < 5e-4, name
    mug = objs["mug"].cad_model(1)
    turn = symmetry_transforms(objs["tin_can"].symmetry, n_continuous=4)[2]  # 180 degrees about z
    assert off_surface(mug, turn) > 5e-3


def test_unknown_object_name():
    from selfpose_core.errors import ConfigError

    with pytest.raises(ConfigError, match="teapot"):
        catalog.make_targets(["teapot"], np.random.default_rng(0))


def test_objects_do_not_depend_on_the_selection():
    a = catalog.make_targets(["mug", "bowl"], np.random.default_rng(5))
    b = catalog.make_targets(list(catalog.TARGETS), np.random.default_rng(5))
    assert (a[0].texture == b[2].texture).all() and (a[1].texture == b[5].texture).all()
