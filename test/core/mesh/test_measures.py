"""Surface sampling of meshes (shared by depth refinement, NOL and scene registration)."""
from __future__ import annotations

import numpy as np
import trimesh

from selfpose_core.mesh.measures import sample_surface


def test_sample_surface_lies_on_the_faces_with_their_normals_and_area_weighting():
    box = trimesh.creation.box((2.0, 1.0, 1.0))  # faces x = +-1: 1 x 1; y and z faces: 2 x 1 each
    pts, nrm = sample_surface(box.vertices, box.faces, 6000, np.random.default_rng(0))
    on_face = np.isclose(np.abs(pts), [1.0, 0.5, 0.5], atol=1e-9)
    assert on_face.any(axis=1).all()  # every point lies on the box
    assert np.allclose(np.linalg.norm(nrm, axis=1), 1.0)
    side = np.abs(nrm).argmax(axis=1)
    assert on_face[np.arange(len(pts)), side].all()  # ... on the face its normal belongs to
    share = np.bincount(side, minlength=3) / len(pts)  # areas 2 : 4 : 4
    assert np.allclose(share, [0.2, 0.4, 0.4], atol=0.03)
