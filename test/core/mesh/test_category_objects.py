"""objects.yaml category entries: objects known only by their category (no mesh), validated with named errors."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from selfpose_core.errors import ConfigError
from selfpose_core.mesh.objects_config import (ObjectEntry, load_objects_config, read_objects_config,
                                               write_objects_config)


@pytest.fixture()
def folder(tmp_path):
    trimesh.creation.box((0.1, 0.1, 0.1)).export(tmp_path / "box.ply")
    return tmp_path


def _write(folder, text: str):
    path = folder / "objects.yaml"
    path.write_text(text)
    return path


def test_category_entries_read_with_the_category_symmetry(folder):
    path = _write(folder, "objects:\n  - {name: box, mesh: box.ply, category: box}\n"
                          "  - {name: some_mug, category: mug}\n  - {name: any_can, category: can, obj_id: 7}\n")
    box, mug, can = read_objects_config(path)
    assert box.mesh.endswith("box.ply") and box.category == "box"  # a mesh object keeps its category as a label
    assert mug.mesh is None and mug.category == "mug" and not mug.symmetry.is_symmetric and mug.obj_id == 2
    assert can.mesh is None and can.obj_id == 7
    axis, offset = can.symmetry.continuous[0]
    assert np.allclose(axis, [0, 1, 0]) and np.allclose(offset, 0)  # about the NOCS up axis


@pytest.mark.parametrize("entry, message", [
    ("{name: thing}", r"objects\[0\]: needs a mesh \(an object known by its model\) or a category.*bottle, bowl"),
    ("{name: thing, category: cup}", r"objects\[0\]\.category: 'cup' is not a category selfpose has shapes for"),
    ("{name: thing, category: [mug]}", r"objects\[0\]\.category: \['mug'\] is not a category"),
    ("{name: thing, category: mug, units: mm}", r"objects\[0\]\.units: not allowed without a mesh"),
    ("{name: thing, category: bowl, symmetry: none}", r"objects\[0\]\.symmetry: not allowed without a mesh"),
    ("{name: thing, category: mug, obj_id: 0}", r"objects\[0\]\.obj_id: must be a positive integer"),
    ("{category: mug}", r"objects\[0\]\.name: missing"),
])
def test_bad_category_entries_name_file_key_and_value(folder, entry, message):
    path = _write(folder, f"objects:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=message) as err:
        read_objects_config(path)
    assert str(err.value).startswith(str(path))


def test_loading_meshes_refuses_category_objects_by_name(folder):
    path = _write(folder, "objects:\n  - {name: box, mesh: box.ply}\n  - {name: some_mug, category: mug}\n")
    with pytest.raises(ConfigError, match=r"objects\[1\]: 'some_mug' is a category object \(category: mug, no mesh\)"):
        load_objects_config(path)
    assert [m.name for m in load_objects_config(_write(folder, "objects:\n  - {name: box, mesh: box.ply}\n"))] == ["box"]


def test_write_and_read_back_category_entries(folder):
    entries = [ObjectEntry("box", str(folder / "box.ply"), units="m"), ObjectEntry("a_bowl", None, category="bowl")]
    path = write_objects_config(folder / "out" / "objects.yaml", entries)
    text = path.read_text()
    assert "a_bowl" in text and "symmetry" not in text.split("a_bowl")[1]  # derived keys are not written
    back = read_objects_config(path)
    assert back[1].mesh is None and back[1].category == "bowl" and back[1].symmetry.continuous
    with pytest.raises(ConfigError, match=r"objects\[0\]\.category: 'plate' is not a category"):
        write_objects_config(folder / "bad.yaml", [{"name": "p", "category": "plate"}])
