"""Small objects (an asymmetric box-like mesh and a capsule) with an objects.yaml, for the estimator tests."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from selfpose_core.mesh.loading import object_model_from_arrays, save_mesh
from selfpose_core.mesh.objects_config import load_objects_config, write_objects_config


def _wedge() -> trimesh.Trimesh:
    """A box with one corner cut off: no symmetry, few faces."""
    box = trimesh.creation.box((0.08, 0.05, 0.12))
    v = np.asarray(box.vertices).copy()
    v[np.argmax(v.sum(axis=1))] *= 0.4
    return trimesh.Trimesh(v, box.faces, process=False)


@pytest.fixture(scope="session")
def objects_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("objects")
    entries = []
    for i, mesh in enumerate([_wedge(), trimesh.creation.capsule(0.06, 0.025, count=[8, 8])]):
        m = object_model_from_arrays(f"obj{i}", np.asarray(mesh.vertices), np.asarray(mesh.faces), obj_id=i + 1)
        save_mesh(m, d / f"obj{i}.ply")
        entries.append({"name": f"obj{i}", "mesh": str(d / f"obj{i}.ply"), "obj_id": i + 1})
    write_objects_config(d / "objects.yaml", entries)
    return d


@pytest.fixture(scope="session")
def objects(objects_dir):
    return load_objects_config(objects_dir / "objects.yaml")
