"""Surface sampling of meshes (shared by depth refinement, NOL and scene registration), areas and the exact diameter."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from selfpose_core.errors import ShapeError
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


def test_exact_diameter_on_a_ball_without_the_hull_and_in_small_chunks(monkeypatch):
    from scipy.spatial.distance import pdist

    from selfpose_core.mesh import measures

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.05)  # every vertex on the hull: near-ties everywhere
    rng = np.random.default_rng(0)
    for v in (np.asarray(ball.vertices), rng.normal(size=(3000, 3)) * [1.0, 2.0, 0.5], rng.random((3000, 3))):
        expected = pdist(v).max()
        assert measures.mesh_diameter(v) == expected
        monkeypatch.setattr(measures, "_HULL_MAX_POINTS", 600)  # hulls of chunks (the ball: every point kept)
        assert measures.mesh_diameter(v) == expected
        monkeypatch.setattr(measures, "_HULL_MAX_POINTS", 10)  # the branch and bound over every point ...
        monkeypatch.setattr(measures, "_PAIR_CHUNK", 4)  # ... refining 4 node pairs at a time
        monkeypatch.setattr(measures, "FACE_CHUNK", 64)
        assert measures.mesh_diameter(v) == expected
        monkeypatch.undo()


def test_sampling_and_areas_work_in_chunks_with_the_same_draws(monkeypatch):
    from selfpose_core.mesh import measures

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    a = sample_surface(ball.vertices, ball.faces, 500, np.random.default_rng(3))
    monkeypatch.setattr(measures, "FACE_CHUNK", 7)
    b = sample_surface(ball.vertices, ball.faces, 500, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    np.testing.assert_allclose(measures.face_areas(ball.vertices, ball.faces), ball.area_faces, rtol=1e-12)
    with pytest.raises(ShapeError, match="all have zero area"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 5, np.random.default_rng(0))
