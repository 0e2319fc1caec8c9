from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial.distance import pdist

from selfpose_core.errors import MeshError, ShapeError
from selfpose_core.mesh.loading import decimate, load_object_model, object_model_from_arrays, save_mesh
from selfpose_core.types import Symmetry


def _box(extents=(0.06, 0.08, 0.1)) -> trimesh.Trimesh:
    return trimesh.creation.box(extents)


def _textured(mesh: trimesh.Trimesh, rng: np.random.Generator) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray]:
    uv = rng.uniform(size=(len(mesh.vertices), 2))
    tex = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    return mesh, uv, tex


def test_millimetre_mesh_is_detected_and_gives_the_same_diameter(tmp_path, caplog):
    metres = _box()
    mm = _box()
    mm.apply_scale(1000.0)
    metres.export(tmp_path / "m.ply")
    mm.export(tmp_path / "mm.ply")
    a = load_object_model(tmp_path / "m.ply", "a")
    with caplog.at_level(logging.WARNING):
        b = load_object_model(tmp_path / "mm.ply", "b")
    assert "mm.ply" in caplog.text and "millimetres" in caplog.text
    assert a.diameter == pytest.approx(np.linalg.norm([0.06, 0.08, 0.1]), rel=1e-6)
    assert b.diameter == pytest.approx(a.diameter, rel=1e-6)
    np.testing.assert_allclose(b.vertices, a.vertices, atol=1e-7)
    assert load_object_model(tmp_path / "mm.ply", "c", units="mm").diameter == pytest.approx(a.diameter, rel=1e-6)


def test_implausible_sizes_are_rejected_with_a_hint(tmp_path):
    mm = _box()
    mm.apply_scale(1000.0)
    mm.export(tmp_path / "mm.ply")
    with pytest.raises(MeshError, match=r"mm\.ply.*units: mm"):
        load_object_model(tmp_path / "mm.ply", "x", units="m")
    _box().export(tmp_path / "m.ply")
    with pytest.raises(MeshError, match=r"m\.ply.*units: m"):
        load_object_model(tmp_path / "m.ply", "x", units="mm")
    huge = _box()
    huge.apply_scale(1e6)
    huge.export(tmp_path / "huge.ply")
    with pytest.raises(MeshError, match="huge.ply"):
        load_object_model(tmp_path / "huge.ply", "x")
    tiny = _box()
    tiny.apply_scale(1e-4)
    tiny.export(tmp_path / "tiny.ply")
    with pytest.raises(MeshError, match="tiny.ply"):
        load_object_model(tmp_path / "tiny.ply", "x")


def test_missing_unreadable_empty_and_nan_meshes_raise_mesh_error(tmp_path):
    with pytest.raises(MeshError, match="nothere.ply does not exist"):
        load_object_model(tmp_path / "nothere.ply", "x")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(MeshError, match="junk.ply"):
        load_object_model(tmp_path / "junk.ply", "x")
    (tmp_path / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                         "property float z\nend_header\n0 0 0\n0.1 0 0\n0 0.1 0\n")
    with pytest.raises(MeshError, match="points.ply.*no faces"):
        load_object_model(tmp_path / "points.ply", "x")
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 0.1 0 0\nv nan 0.1 0\nv 0 0 0.1\nf 1 2 3\nf 1 2 4\n")
    with pytest.raises(MeshError, match="nan.obj.*NaN"):
        load_object_model(tmp_path / "nan.obj", "x")
    (tmp_path / "a.xyz").write_text("0 0 0\n")
    with pytest.raises(MeshError, match="unsupported format"):
        load_object_model(tmp_path / "a.xyz", "x")


@pytest.mark.parametrize("suffix", ["obj", "glb"])
def test_textured_obj_and_glb_keep_uv_and_texture(tmp_path, rng, suffix):
    mesh, uv, tex = _textured(_box(), rng)
    mesh.export(tmp_path / f"t.{suffix}")
    model = load_object_model(tmp_path / f"t.{suffix}", "t", category="box", obj_id=7)
    assert model.texture is not None and model.uv is not None
    np.testing.assert_array_equal(model.texture, tex)
    # vertices may be reordered by the exporter: compare uv per vertex position
    order_in = np.lexsort(mesh.vertices.T)
    order_out = np.lexsort(model.vertices.T)
    np.testing.assert_allclose(model.vertices[order_out], mesh.vertices[order_in], atol=1e-6)
    np.testing.assert_allclose(model.uv[order_out], uv[order_in], atol=1e-6)
    assert (model.category, model.obj_id, model.name) == ("box", 7, "t")
    assert model.source_path.endswith(f"t.{suffix}")


def test_ply_vertex_colours_are_kept(tmp_path, rng):
    mesh = trimesh.creation.icosphere(1, 0.05)
    colours = rng.integers(0, 256, size=(len(mesh.vertices), 3), dtype=np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[colours, np.full(len(colours), 255)])
    mesh.export(tmp_path / "c.ply")
    model = load_object_model(tmp_path / "c.ply", "c")
    np.testing.assert_array_equal(model.vertex_colors, colours)
    assert model.uv is None and model.texture is None


def test_glb_scene_with_two_meshes_is_flattened_with_node_transforms(tmp_path):
    a = _box()
    b = trimesh.creation.icosphere(1, 0.03)
    scene = trimesh.Scene()
    scene.add_geometry(a)
    T = np.eye(4)
    T[:3, 3] = [0.2, 0, 0]
    scene.add_geometry(b, transform=T)
    scene.export(tmp_path / "two.glb")
    model = load_object_model(tmp_path / "two.glb", "two")
    assert len(model.faces) == len(a.faces) + len(b.faces)
    assert model.vertices[:, 0].max() == pytest.approx(0.23, abs=1e-6)


@pytest.mark.parametrize("mm", [False, True])
def test_save_mesh_round_trip_textured_ply(tmp_path, rng, mm):
    mesh, uv, tex = _textured(_box(), rng)
    model = object_model_from_arrays("b", mesh.vertices, mesh.faces, uv=uv, texture=tex)
    path = save_mesh(model, tmp_path / "obj_000001.ply", mm=mm)
    assert (tmp_path / "obj_000001.png").is_file()
    assert b"comment TextureFile obj_000001.png" in path.read_bytes()[:300]
    back = load_object_model(path, "b", units="mm" if mm else "m")
    np.testing.assert_allclose(back.vertices, model.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, model.faces)
    np.testing.assert_allclose(back.uv, uv, atol=1e-6)
    np.testing.assert_array_equal(back.texture, tex)


def test_save_mesh_obj_and_glb_with_vertex_colours(tmp_path, rng):
    mesh = trimesh.creation.icosphere(2, 0.05)
    colours = rng.integers(0, 256, size=(len(mesh.vertices), 3), dtype=np.uint8)
    model = object_model_from_arrays("s", mesh.vertices, mesh.faces, vertex_colors=colours)
    for suffix in ("ply", "obj", "glb"):
        back = load_object_model(save_mesh(model, tmp_path / f"s.{suffix}"), "s")
        assert back.diameter == pytest.approx(model.diameter, rel=1e-6)
        assert back.vertex_colors is not None
    with pytest.raises(MeshError, match="s.stl"):
        save_mesh(model, tmp_path / "s.stl")


def test_object_model_from_arrays_computes_diameter_and_keypoints(rng):
    mesh = trimesh.creation.icosphere(2, 1.0)
    v = mesh.vertices * [0.03, 0.05, 0.08] + [0.01, 0.0, -0.02]
    sym = Symmetry(continuous=[(np.array([0.0, 0, 1]), np.zeros(3))])
    model = object_model_from_arrays("e", v, mesh.faces, symmetry=sym, obj_id=3)
    assert model.diameter == pytest.approx(pdist(v).max(), rel=1e-12)
    assert model.keypoints.shape == (9, 3)
    np.testing.assert_allclose(model.keypoints[8], (v.min(0) + v.max(0)) / 2)
    assert model.symmetry is sym and model.obj_id == 3
    with pytest.raises(ShapeError, match="faces index"):
        object_model_from_arrays("e", v, mesh.faces + len(v))
    with pytest.raises(ShapeError, match="vertex_colors"):
        object_model_from_arrays("e", v, mesh.faces, vertex_colors=np.zeros((3, 3), np.uint8))


def test_decimate_reduces_faces_keeps_shape_and_colours(rng):
    mesh = trimesh.creation.icosphere(4, 0.05)
    colours = np.zeros((len(mesh.vertices), 3), np.uint8)
    colours[mesh.vertices[:, 2] > 0] = [255, 0, 0]
    model = object_model_from_arrays("s", mesh.vertices, mesh.faces, vertex_colors=colours, obj_id=4)
    small = decimate(model, 500)
    assert len(small.faces) <= 500 and len(small.faces) >= 400
    assert trimesh.Trimesh(small.vertices, small.faces).is_watertight
    assert small.diameter == pytest.approx(model.diameter, rel=0.02)
    top = small.vertices[:, 2] > 0.005
    assert (small.vertex_colors[top] == [255, 0, 0]).all()
    assert (small.vertex_colors[small.vertices[:, 2] < -0.005] == 0).all()
    assert small.obj_id == 4 and small.keypoints.shape == (9, 3)
    assert decimate(model, 10**6) is model
    mesh, uv, tex = _textured(trimesh.creation.icosphere(3, 0.05), rng)
    textured = decimate(object_model_from_arrays("t", mesh.vertices, mesh.faces, uv=uv, texture=tex), 200)
    assert textured.uv.shape == (len(textured.vertices), 2) and textured.texture is tex


def test_two_textured_objs_in_one_folder_keep_their_own_textures(tmp_path, rng):
    models = []
    for name in ("a", "b"):
        mesh, uv, tex = _textured(_box(), rng)
        models.append(object_model_from_arrays(name, mesh.vertices, mesh.faces, uv=uv, texture=tex))
        save_mesh(models[-1], tmp_path / f"{name}.obj")
    for model in models:
        np.testing.assert_array_equal(load_object_model(tmp_path / f"{model.name}.obj", "x").texture, model.texture)


# --------------------------------------------------------------------------------------------- #17: validation
def test_all_faces_of_zero_area_are_refused(tmp_path):
    box = _box()
    flat = box.vertices.copy()
    flat[:, 1:] = 0.0  # every vertex on the x axis: every triangle collinear
    trimesh.Trimesh(flat, box.faces, process=False).export(tmp_path / "line.ply")
    with pytest.raises(MeshError, match=r"line.ply: all 12 faces have zero area"):
        load_object_model(tmp_path / "line.ply", "line")


@pytest.mark.parametrize("scale, units, expect", [
    (2.6, "auto", r"bounding-box diagonal 2\.6 m \(units=auto\) is large .* this is a 2\.6 mm part: set units: mm"),
    (0.004, "auto", r"bounding-box diagonal 0\.004 m \(units=auto\): a part this small"),
    (1.5 / 1000, "m", r"bounding-box diagonal 0\.0015 m \(units=m\): a part this small"),
])
def test_suspicious_sizes_warn_naming_the_value(tmp_path, caplog, scale, units, expect):
    box = _box((1.0, 1.0, 1.0))
    box.apply_scale(scale / np.sqrt(3.0))  # diagonal = scale
    box.export(tmp_path / "part.ply")
    with caplog.at_level(logging.WARNING):
        load_object_model(tmp_path / "part.ply", "part", units=units)
    assert "part.ply" in caplog.text
    assert any(re.search(expect, r.getMessage()) for r in caplog.records), caplog.text


def test_mesh_above_the_face_budget_is_decimated_keeping_the_exact_diameter(tmp_path, caplog):
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.05)  # 5120 faces
    ball.export(tmp_path / "ball.ply")
    full = load_object_model(tmp_path / "ball.ply", "ball")
    with caplog.at_level(logging.WARNING):
        small = load_object_model(tmp_path / "ball.ply", "ball", max_faces=600)
    assert "above the face budget of 600" in caplog.text
    assert 100 <= len(small.faces) <= 600
    assert small.diameter == full.diameter and np.array_equal(small.keypoints, full.keypoints)
    np.testing.assert_allclose(np.linalg.norm(small.vertices, axis=1), 0.05, atol=0.004)
    assert load_object_model(tmp_path / "ball.ply", "ball", max_faces=10 ** 6).faces.shape == full.faces.shape


def test_huge_meshes_are_refused_from_the_ply_header(tmp_path, monkeypatch):
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n" \
             "property float z\nelement face 50000000\nproperty list uchar int vertex_indices\nend_header\n"
    (tmp_path / "huge.ply").write_bytes(header.encode() + bytes(36))
    with pytest.raises(MeshError, match=r"huge.ply: 50000000 faces, more than the 10000000 selfpose reads"):
        load_object_model(tmp_path / "huge.ply", "huge")
    from selfpose_core.mesh import loading
    monkeypatch.setattr(loading, "MAX_MESH_FILE_BYTES", 100)
    _box().export(tmp_path / "box.ply")
    with pytest.raises(MeshError, match=r"box.ply: \d+ bytes, more than the 100 bytes"):
        load_object_model(tmp_path / "box.ply", "box")


def test_cluster_vertices_merges_cells_and_drops_collapsed_and_repeated_faces():
    from selfpose_core.mesh.loading import cluster_vertices

    grid = trimesh.creation.box((1.0, 1.0, 1.0)).subdivide().subdivide()  # 192 faces
    v, f, rep = cluster_vertices(grid.vertices, grid.faces, 0.6)
    assert len(v) < len(grid.vertices) and len(f) < len(grid.faces) and len(rep) == len(v)
    assert (f[:, 0] != f[:, 1]).all() and (f[:, 1] != f[:, 2]).all() and (f[:, 0] != f[:, 2]).all()
    assert len(np.unique(np.sort(f, axis=1), axis=0)) == len(f)
    assert np.isin(np.arange(len(v)), f).all()  # no unreferenced vertex
    v2, f2, _ = cluster_vertices(grid.vertices, grid.faces, 1e-6)  # no merging: the same mesh
    assert len(v2) == len(grid.vertices) and len(f2) == len(grid.faces)
