"""Category shape families: closed meshes in the NOCS frame, realistic sizes, variation, symmetries, seeded splits."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from selfpose_core.data.sim import category_shapes as cs
from selfpose_core.data.sim.shapes import weld
from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.mesh.categories import CATEGORIES, SYMMETRIC_CATEGORIES, nocs_scale

# Plausible extents (x, y = up, z) in metres of household objects of each category (NOCS-REAL's are in these ranges).
SIZE_RANGES = {
    "bottle": ((0.04, 0.15, 0.04), (0.10, 0.31, 0.10)),
    "bowl": ((0.10, 0.02, 0.10), (0.20, 0.09, 0.20)),
    "camera": ((0.08, 0.05, 0.06), (0.15, 0.13, 0.16)),
    "can": ((0.05, 0.06, 0.05), (0.10, 0.17, 0.10)),
    "laptop": ((0.27, 0.10, 0.15), (0.41, 0.40, 0.45)),
    "mug": ((0.08, 0.07, 0.06), (0.16, 0.13, 0.12)),
}


def _closed(vertices, faces) -> trimesh.Trimesh:
    tm = trimesh.Trimesh(vertices, faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0
    return tm


@pytest.mark.parametrize("category", CATEGORIES)
def test_instances_are_closed_centred_and_plausibly_sized(category):
    lo_ok, hi_ok = (np.array(b) for b in SIZE_RANGES[category])
    sizes = []
    for inst in cs.training_instances(category, 12, seed=3):
        for part in inst.parts:
            _closed(*weld(part))
        tm = inst.trimesh()
        assert tm.is_watertight
        v = tm.vertices
        assert np.allclose(v.min(0) + v.max(0), 0.0, atol=1e-9)  # origin at the box centre
        assert np.allclose(inst.size, v.max(0) - v.min(0)) and inst.scale == pytest.approx(np.linalg.norm(inst.size))
        assert inst.scale == pytest.approx(nocs_scale(v))
        assert np.all(inst.size >= lo_ok) and np.all(inst.size <= hi_ok), (inst.name, inst.size)
        sizes.append(inst.size)
    spread = np.std(sizes, axis=0) / np.mean(sizes, axis=0)
    assert spread.max() > 0.08  # real intra-class variation, not one shape rescaled by noise


@pytest.mark.parametrize("category", CATEGORIES)
def test_symmetry_about_the_up_axis_exactly_for_bottle_bowl_can(category):
    inst = cs.instance(category, 7)
    v = inst.trimesh().vertices
    a = 2 * np.pi / cs.SEGMENTS * 5  # a rotation about y by a whole number of facets
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    moved = cKDTree(v).query(v @ Ry.T)[0].max()
    if category in SYMMETRIC_CATEGORIES:
        assert moved < 1e-6
        assert inst.symmetry.continuous and np.allclose(inst.symmetry.continuous[0][0], [0, 1, 0])
    else:
        assert moved > 0.005
        assert not inst.symmetry.is_symmetric


def test_canonical_frame_y_up_handle_x_lens_z():
    mug = cs.instance("mug", 2)
    cup, handle = (p.vertices for p in mug.parts)
    assert handle[:, 0].min() > 0 and handle[:, 0].max() > cup[:, 0].max() + 0.01  # handle along +x
    assert np.abs(handle[:, 2]).max() < 0.01  # in the x-y plane
    bottle = cs.instance("bottle", 2).trimesh().vertices
    top = bottle[bottle[:, 1] > bottle[:, 1].max() - 0.01]
    assert np.linalg.norm(top[:, [0, 2]], axis=1).max() < 0.6 * cs.instance("bottle", 2).params["radius"]  # cap up
    camera = cs.instance("camera", 2)
    body, lens = camera.parts[0].vertices, camera.parts[1].vertices
    assert lens[:, 2].max() > body[:, 2].max() + 0.01  # lens towards +z


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_laptop_screen_stands_at_the_hinge_angle(index):
    laptop = cs.instance("laptop", index)
    a = np.deg2rad(laptop.params["hinge_deg"])
    screen = laptop.parts[1].vertices
    centred = screen - screen.mean(0)
    _, _, vt = np.linalg.svd(centred[:, 1:], full_matrices=False)  # principal direction in the y-z plane
    expected = np.array([np.sin(a), np.cos(a)])  # from the hinge: up for 90 deg, leaning back (-z) beyond
    assert abs(vt[0] @ expected) > np.cos(np.deg2rad(1.0))
    assert 70 <= laptop.params["hinge_deg"] <= 135


def test_same_arguments_same_mesh_and_instances_independent():
    a, b = cs.instance("mug", 11, seed=5), cs.instance("mug", 11, seed=5)
    assert np.array_equal(a.mesh.vertices, b.mesh.vertices) and a.params == b.params
    assert cs.instance("mug", 12, seed=5).params != a.params
    assert cs.instance("mug", 11, seed=6).params != a.params
    assert cs.training_instances("mug", 12, seed=5)[11].params == a.params


def test_heldout_instances_are_not_training_instances():
    train = {tuple(i.params.values()) for i in cs.training_instances("can", 300, seed=0)}
    held = cs.heldout_instances("can", 20, seed=0)
    assert len(train) == 300  # hundreds of distinct shapes from one seed
    assert all(h.heldout and h.index >= cs.HELDOUT_START for h in held)
    assert not train & {tuple(h.params.values()) for h in held}
    assert not any(i.heldout for i in cs.training_instances("can", 3))


def test_object_model_carries_category_and_symmetry():
    model = cs.instance("can", 1).object_model(obj_id=4)
    assert model.category == "can" and model.obj_id == 4 and model.name == "can_1"
    assert model.symmetry.continuous and model.diameter > 0.05


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="unknown category 'cup'.*bottle, bowl"):
        cs.instance("cup", 0)
    with pytest.raises(ConfigError, match="non-negative integer, got -1"):
        cs.instance("mug", -1)
    with pytest.raises(ConfigError, match="count must be in"):
        cs.training_instances("mug", cs.HELDOUT_START + 1)


def test_signed_distance_of_a_can_and_a_mug():
    can = next(i for i in cs.training_instances("can", 20) if i.params["neck"] == 0)
    R = can.params["radius"]
    pts = np.array([[R + 0.01, 0, 0], [R - 0.005, 0, 0], [0, 0, 0], [0, -0.3, 0]])
    d = can.sdf(pts)
    assert d[0] == pytest.approx(0.01, abs=1e-6)  # a facet vertex lies on +x: the nearest point outside
    assert d[1] == pytest.approx(-0.005 * np.cos(np.pi / cs.SEGMENTS), abs=1e-6)  # inside, to the two facets
    assert d[2] < -0.02 and d[3] == pytest.approx(0.3 - can.size[1] / 2, abs=1e-6)
    mug = cs.instance("mug", 2)
    p = mug.params
    r_in = p["radius"] * (p["taper"] + (1 - p["taper"]) * 0.5) + p["radius"] * p["belly"] - p["wall"]
    cup = mug.parts[0].vertices
    mid = np.array([(cup[:, 0].min() + cup[:, 0].max()) / 2, cup[:, 1].min() + p["height"] / 2,
                    (cup[:, 2].min() + cup[:, 2].max()) / 2])  # on the cup's axis, half way up
    d = mug.sdf(np.array([mid, mid + [0, 0, r_in + p["wall"] / 2], mid + [0, 0, 0.3]]))
    assert d[0] == pytest.approx(r_in, abs=2e-3)  # the cup's cavity is outside the solid
    assert -p["wall"] / 2 - 1e-4 < d[1] < 0  # inside the wall
    assert d[2] == pytest.approx(0.3 - r_in - p["wall"], abs=2e-3)
    with pytest.raises(ShapeError, match=r"points must be \(N, 3\)"):
        mug.sdf(np.zeros((3, 2)))
