from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from selfpose_core.errors import ConfigError, MeshError
from selfpose_core.mesh.objects_config import (ObjectEntry, load_objects_config, read_objects_config,
                                               write_objects_config)
from selfpose_core.types import Symmetry

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config" / "objects.yaml"


@pytest.fixture
def meshes(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    trimesh.creation.box((0.1, 0.1, 0.2)).export(tmp_path / "models" / "box.ply")
    cyl = trimesh.creation.cylinder(radius=40.0, height=100.0)  # millimetres
    cyl.export(tmp_path / "models" / "can.obj")
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = """
objects:
  - name: box
    mesh: models/box.ply
    units: m
    symmetry:
      discrete:
        - {axis: [0, 0, 1], angle_deg: 180}
        - [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]
  - name: can
    mesh: models/can.obj
    category: can
    obj_id: 5
    symmetry: {continuous: [{axis: [0, 0, 2], offset: [0, 0, 0.01]}]}
  - name: plain
    mesh: models/box.ply
    symmetry: none
"""


def test_load_objects_config(meshes):
    models = load_objects_config(_write(meshes / "objects.yaml", GOOD))
    assert [m.name for m in models] == ["box", "can", "plain"]
    assert [m.obj_id for m in models] == [1, 5, 3]
    box, can, plain = models
    np.testing.assert_allclose(box.symmetry.discrete[0], np.diag([-1.0, -1, 1, 1]), atol=1e-12)
    np.testing.assert_allclose(box.symmetry.discrete[1], np.diag([1.0, -1, -1, 1]))
    axis, offset = can.symmetry.continuous[0]
    np.testing.assert_allclose(axis, [0, 0, 1])
    np.testing.assert_allclose(offset, [0, 0, 0.01])
    assert can.category == "can"
    assert can.diameter == pytest.approx(np.hypot(0.08, 0.1), rel=1e-3)  # converted from millimetres
    assert not plain.symmetry.is_symmetric
    assert box.source_path == str(meshes / "models" / "box.ply")


@pytest.mark.parametrize("text, match", [
    ("objects:\n  - name: a\n    mesh: models/box.ply\n    colour: red\n",
     r"objects\[0\]\.colour: unknown key \(allowed: name, mesh, units, symmetry, category, obj_id\)"),
    ("objects:\n  - name: a\n    mesh: models/nope.ply\n", r"objects\[0\]\.mesh: mesh file .*nope.ply does not exist"),
    ("objects:\n  - {name: a, mesh: models/box.ply}\n  - {name: a, mesh: models/box.ply}\n",
     r"objects\[1\]\.name: duplicate name 'a'"),
    ("objects:\n  - {name: a, mesh: models/box.ply, obj_id: 2}\n  - {name: b, mesh: models/box.ply}\n",
     r"objects\[1\]\.obj_id: duplicate obj_id 2"),
    ("objects:\n  - {name: a, mesh: models/box.ply, units: cm}\n", r"objects\[0\]\.units: must be one of"),
    ("objects:\n  - {mesh: models/box.ply}\n", r"objects\[0\]\.name: missing"),
    ("objects:\n  - {name: 'a b', mesh: models/box.ply}\n", r"objects\[0\]\.name"),
    ("objects:\n  - {name: a, mesh: models/box.ply, obj_id: 0}\n", r"objects\[0\]\.obj_id: must be a positive"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [[1, 2]]}}\n",
     r"objects\[0\]\.symmetry\.discrete\[0\]: must be a 4x4"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [[[2,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]]}}\n",
     r"objects\[0\]\.symmetry\.discrete\[0\]: is not a rigid transform"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [{axis: [0, 0, 0], angle_deg: 90}]}}\n",
     r"objects\[0\]\.symmetry\.discrete\[0\]\.axis: axis must not be zero"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {continuous: [{axis: [0, 1], offset: [0, 0, 0]}]}}\n",
     r"objects\[0\]\.symmetry\.continuous\[0\]\.axis: must be a list of 3"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {spherical: true}}\n",
     r"objects\[0\]\.symmetry\.spherical: unknown key \(allowed: discrete, continuous\)"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: radial}\n", r"objects\[0\]\.symmetry: must be 'none'"),
    ("models:\n  - {name: a, mesh: models/box.ply}\n", r"objects: missing"),
    ("objects: [\n", r"not valid YAML"),
    ("objects: []\n", r"objects: must be a non-empty list"),
    # issue 17: NaN symmetry angle, ids beyond int32, duplicate keys, bounded excerpts, alias bombs
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [{axis: [0, 0, 1], angle_deg: .nan}]}}\n",
     r"objects\[0\]\.symmetry\.discrete\[0\]\.angle_deg: must be a finite number of degrees, got nan"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [{axis: [0, 0, 1], angle_deg: '90'}]}}\n",
     r"angle_deg: must be a finite number of degrees, got '90'"),
    ("objects:\n  - {name: a, mesh: models/box.ply, obj_id: 2147483648}\n",
     r"objects\[0\]\.obj_id: must be a positive integer \(at most 2147483647\), got 2147483648"),
    ("objects:\n  - name: a\n    mesh: models/box.ply\n    name: b\n",
     r"bad.yaml:4:5: not valid YAML: duplicate key 'name'"),
    ("objects:\n  - {name: a, mesh: models/box.ply, symmetry: {discrete: [{axis: [0, 0, 1], angle_deg: .inf}]}}\n",
     r"angle_deg: must be a finite number of degrees, got inf"),
    ("objects:\n  - {name: " + "a" * 200 + ", mesh: models/box.ply}\n",
     r"objects\[0\]\.name: must be 1 to 128 letters, digits, _ - \. ; got 'a+\.\.\.a+'$"),
    ("objects:\n  - {name: a, mesh: " + "m" * 5000 + "}\n",
     r"objects\[0\]\.mesh: must be a file path, got 'm+\.\.\.m+'$"),
    ("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n"
                                                           for i in range(1, 9)) + "objects: *l8\n",
     r"bad.yaml:\d+:\d+: expands to more than 1000000 YAML nodes"),
])
def test_config_errors_name_file_and_key(meshes, text, match):
    path = _write(meshes / "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_objects_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < len(str(path)) + 300


def test_unusable_mesh_names_config_key_and_mesh(meshes):
    (meshes / "models" / "empty.obj").write_text("v 0 0 0\n")
    path = _write(meshes / "o.yaml", "objects:\n  - {name: a, mesh: models/empty.obj}\n")
    with pytest.raises(MeshError, match=r"o\.yaml: objects\[0\]\.mesh: mesh file .*empty.obj"):
        load_objects_config(path)


def test_write_then_read_round_trip(meshes):
    sym = Symmetry(discrete=np.diag([-1.0, -1, 1, 1])[None], continuous=[(np.array([0, 1.0, 0]), np.zeros(3))])
    out = meshes / "sim" / "objects.yaml"
    write_objects_config(out, [
        ObjectEntry(name="box", mesh=str(meshes / "models" / "box.ply"), units="m", symmetry=sym, category="box"),
        {"name": "can", "mesh": str(meshes / "models" / "can.obj"), "obj_id": np.int64(9)},
    ])
    entries = read_objects_config(out)
    assert [(e.name, e.obj_id, e.units, e.category) for e in entries] == [("box", 1, "m", "box"),
                                                                          ("can", 9, "auto", None)]
    np.testing.assert_allclose(entries[0].symmetry.discrete, sym.discrete)
    np.testing.assert_allclose(entries[0].symmetry.continuous[0][0], [0, 1, 0])
    with pytest.raises(ConfigError, match=r"objects\[0\]\.units"):
        write_objects_config(meshes / "x.yaml", [{"name": "a", "mesh": "a.ply", "units": "inch"}])
    with pytest.raises(ConfigError, match="duplicate names"):
        write_objects_config(meshes / "x.yaml", [{"name": "a", "mesh": "a.ply"}, {"name": "a", "mesh": "b.ply"}])
    # meshes inside the config's folder are stored relative to it, so the folder can be moved
    write_objects_config(meshes / "objects.yaml", [ObjectEntry(name="box", mesh=str(meshes / "models" / "box.ply"))])
    assert "mesh: models/box.ply" in (meshes / "objects.yaml").read_text()


def test_repository_example_config_is_valid():
    entries = read_objects_config(REPO_CONFIG, check_files=False)  # a template: its meshes are the user's
    assert len(entries) >= 3
    assert any(e.symmetry.continuous for e in entries) and any(len(e.symmetry.discrete) for e in entries)
