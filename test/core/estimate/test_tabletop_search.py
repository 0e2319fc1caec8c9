"""Table-top search with depth: proposals, resting poses, the voxel nearest-point grid, verification and the
whole search on a rendered table scene (true poses and identities back, clutter left out, order-independent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from selfpose_core.data.sim import catalog
from selfpose_core.estimate.hypotheses import footprint_parts, resting_rotations
from selfpose_core.estimate.proposals import ProposalConfig, find_proposals
from selfpose_core.estimate.tabletop import VoxelNearest
from selfpose_core.estimate.tabletop_search import SearchConfig, TabletopSearch
from selfpose_core.estimate.verification import VerifyConfig, verify_poses
from selfpose_core.geometry.se3 import invert
from selfpose_core.estimate.estimator import PoseEstimator
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.types import Frame



def test_proposals_find_the_table_and_each_object_with_or_without_the_camera_pose(scene):
    models, _, frames = scene
    frame, masks = frames[0]
    up_cam = frame.T_world_cam[2, :3]
    for T_wc in (frame.T_world_cam, None):
        plane, props = find_proposals(frame.depth, frame.K.K, ProposalConfig(), T_world_cam=T_wc)
        assert np.degrees(np.arccos(np.clip(plane[:3] @ up_cam, -1, 1))) < 1.0
        # the plane passes through the table: the world origin seen from the camera
        origin_cam = invert(frame.T_world_cam)[:3, 3]
        assert abs(plane[:3] @ origin_cam + plane[3]) < 0.003
        assert len(props) == 4  # three objects and the ball
        for m in masks:  # each object's pixels are (mostly) one proposal's
            hits = [np.mean(m[p.pixels[:, 0], p.pixels[:, 1]]) for p in props]
            assert max(hits) > 0.95


def _with_flying_pixels(depth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``depth`` with every pixel next to a depth edge (a jump over 4 % to a 4-neighbour, both sides) measured
    at a random depth between the nearest and the farthest valid depth of its 5 x 5 neighbourhood, as stereo
    cameras do; and where they are."""
    import cv2

    z = depth.astype(np.float32)
    jump = np.zeros(z.shape, bool)
    for axis in (0, 1):
        d = np.abs(np.diff(z, axis=axis)) > 0.04 * np.maximum(np.minimum(z[:-1] if axis == 0 else z[:, :-1],
                                                                          z[1:] if axis == 0 else z[:, 1:]), 1e-3)
        if axis == 0:
            jump[:-1] |= d
            jump[1:] |= d
        else:
            jump[:, :-1] |= d
            jump[:, 1:] |= d
    valid = z > 0
    near = cv2.erode(np.where(valid, z, np.inf).astype(np.float32), np.ones((5, 5), np.uint8))
    near = np.where(np.isfinite(near), near, z)
    far = cv2.dilate(z, np.ones((5, 5), np.uint8))
    flying = jump & valid & (far > near)
    out = np.where(flying, near + rng.random(z.shape, dtype=np.float32) * (far - near), z)
    return out.astype(np.float32), flying


def test_flying_pixels_are_dropped_and_every_surface_pixel_kept(rng):
    """A box 0.8 m away in front of a wall at 1.5 m; the pixels on both sides of its outline measured anywhere
    between the two (flying pixels). Those off both surfaces go, the box and the wall stay, outline included."""
    from selfpose_core.estimate.tabletop import without_flying_pixels

    depth = np.full((120, 160), 1.5, np.float32)
    depth[40:80, 50:110] = 0.8
    depth[0, :5] = np.nan  # invalid depth stays invalid
    noisy, flying = _with_flying_pixels(depth, rng)
    clean = without_flying_pixels(noisy, 0.02, 3)
    off_surface = flying & (np.abs(noisy - depth) > 0.02 * depth)
    assert off_surface.sum() > 200
    assert (clean[off_surface] == 0).mean() > 0.95
    assert np.array_equal(clean[~flying & (depth > 0)], depth[~flying & (depth > 0)])  # the outline stays
    assert np.all(clean[0, :5] == 0)
    assert np.array_equal(without_flying_pixels(noisy, 0.02, 0), np.nan_to_num(noisy, nan=0.0))
    for stride in (2, 3):  # on a grid: the same pixels, judged by their neighbours in the full image
        assert np.array_equal(without_flying_pixels(noisy, 0.02, 3, stride), clean[::stride, ::stride])


def test_flying_pixels_do_not_join_an_object_to_what_stands_behind_it(scene, render_scene, look_at, rng,
                                                                      pose_errors):
    """A view with a wall 2 m away behind the table, every depth edge measured with flying pixels: between an
    object's outline and the wall they reach back from the object. The search drops them and finds the objects
    as on clean depth; keeping them (``edge_support=0``) makes a proposal wider than its object."""
    models, T_world_obj, frames = scene
    T_wc = look_at(np.array([0.9 * np.cos(2.6), 0.9 * np.sin(2.6), 0.4]), np.array([0.0, 0.0, 0.05]))
    rgb, depth, masks = render_scene(models, T_world_obj, T_wc, clutter=False)
    depth = np.where(depth > 0, depth, 2.0).astype(np.float32)  # the wall
    frame = Frame(rgb=rgb, K=frames[0][0].K, depth=depth, T_world_cam=T_wc)
    noisy = Frame(rgb=rgb, K=frame.K, depth=_with_flying_pixels(depth, rng)[0], T_world_cam=T_wc)
    from selfpose_core.mesh.measures import mesh_diameter

    for support, fits in ((3, True), (0, False)):
        cfg = ProposalConfig(edge_support=support)
        _, props = find_proposals(noisy.depth, frame.K.K, cfg, T_world_cam=frame.T_world_cam)
        widths = []  # of the proposal holding most of each object's pixels, over the object's diameter
        for m, model in zip(masks, models):
            p = max(props, key=lambda p: m[p.pixels[:, 0], p.pixels[:, 1]].sum())
            widths.append(mesh_diameter(p.points) - model.diameter)
        assert (max(widths) <= 0.01) == fits, (support, widths)
    found = TabletopSearch(models).search(noisy)
    assert sorted(f.obj_index for f in found) == [0, 1, 2]
    for f in found:
        t_err, r_err = pose_errors(models[f.obj_index], f.T_cam_obj, invert(frame.T_world_cam) @ T_world_obj[f.obj_index])
        assert t_err < 0.002 and r_err < 1.0, (models[f.obj_index].name, t_err, r_err)


def test_resting_rotations_start_upright_and_are_distinct_up_to_symmetry(scene):
    models = scene[0]
    box = resting_rotations(models[0], max_poses=6)
    assert np.allclose(box[0], np.eye(3))
    ups = np.array([R[2] for R in box])  # model direction turned up
    assert len(box) == 3  # a box with three 180-degree symmetries rests on three distinct face pairs
    assert np.allclose(np.abs(ups), np.eye(3)[np.argmax(np.abs(ups), 1)], atol=1e-6)
    for R in box:
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-9)


def test_a_revolved_object_rests_on_its_side_although_each_facet_is_unlikely():
    """The hull of a can has one stable facet per side of its polygon, each below the probability threshold; taken
    together (the same rest up to the can's symmetry about its axis) lying on its side is the likeliest rest."""
    can = catalog.make_targets(["tin_can"], np.random.default_rng(0))[0].cad_model(1)
    rests = resting_rotations(can)
    ups = np.array([R[2] for R in rests])  # model direction turned up
    assert np.allclose(ups[0], [0, 0, 1])
    assert abs(ups[1][2]) < 1e-6  # second: the axis lies flat
    assert sum(abs(u[2]) < 1e-6 for u in ups) == 1  # and once only: every side is the same rest


def test_footprint_parts_split_a_cluster_wider_than_the_object(rng):
    plane = np.array([0.0, 0.0, 1.0, 0.0])
    blob = rng.normal(0, 0.01, (200, 3)) + [0, 0, 0.05]
    assert len(footprint_parts(blob, plane, 0.1)) == 1
    pair = np.concatenate([blob + [-0.12, 0, 0], blob + [0.12, 0, 0]])
    parts = footprint_parts(pair, plane, 0.1)
    assert parts[0] is pair and len(parts) == 7  # the whole cluster, then ceil(2 x 0.34 / 0.1) > 6 parts: 6
    centres = sorted(float(p[:, 0].mean()) for p in parts[1:])
    assert centres[0] < -0.1 and centres[-1] > 0.1 and sum(len(p) for p in parts[1:]) == len(pair)
    assert all(np.array_equal(a, b) for a, b in zip(parts, footprint_parts(pair, plane, 0.1)))


def test_voxel_nearest_agrees_with_a_kd_tree_within_its_bound(rng):
    pts = rng.normal(0, 0.05, (800, 3))
    grid = VoxelNearest(pts, 0.003, 0.03)
    q = rng.normal(0, 0.06, (2000, 3))
    d_tree = cKDTree(pts).query(q)[0]
    d_grid, j = grid.query(q, distance_upper_bound=0.02)
    ok = np.isfinite(d_grid)
    assert ok.sum() > 500
    assert np.allclose(d_grid[ok], np.linalg.norm(q[ok] - pts[j[ok]], axis=1))
    assert np.all(d_grid[ok] <= d_tree[ok] + 0.003 * np.sqrt(3) + 1e-12)
    assert np.all(d_tree[~ok] > 0.02 - 0.003 * np.sqrt(3))


def test_verification_scores_the_true_pose_above_shifted_ones(scene):
    models, T_world_obj, frames = scene
    frame, masks = frames[0]
    T_true = invert(frame.T_world_cam) @ T_world_obj[1]
    shifted = []
    for dx in (0.0, 0.02, 0.05):
        T = T_true.copy()
        T[0, 3] += dx
        shifted.append(T)
    scores = verify_poses(RenderMesh(models[1].vertices, models[1].faces), np.stack(shifted), frame.depth,
                          frame.K.K, masks[1], (0, 0, 640, 480), VerifyConfig())
    assert scores[0] > 0.95 and scores[0] > scores[1] > scores[2]


def test_verification_inside_the_bounding_sphere_ignores_the_other_object_of_a_merged_cluster(scene):
    models, T_world_obj, frames = scene
    frame, masks = frames[0]
    mesh = RenderMesh(models[1].vertices, models[1].faces)
    T_true = (invert(frame.T_world_cam) @ T_world_obj[1])[None]
    v = models[1].vertices
    centre = 0.5 * (v.min(0) + v.max(0))
    sphere = (centre, float(np.linalg.norm(v - centre, axis=1).max()) + 0.01)
    args = (mesh, T_true, frame.depth, frame.K.K)
    alone = verify_poses(*args, masks[1], (0, 0, 640, 480), VerifyConfig())[0]
    merged = masks[1] | masks[0]  # the box's pixels in the mug's proposal
    assert verify_poses(*args, merged, (0, 0, 640, 480), VerifyConfig())[0] < 0.5 * alone
    assert verify_poses(*args, merged, (0, 0, 640, 480), VerifyConfig(), sphere)[0] == pytest.approx(alone, abs=0.02)


@pytest.mark.parametrize("with_appearance", [True, False])
def test_search_returns_every_object_at_its_true_pose_and_leaves_the_clutter(scene, with_appearance, pose_errors):
    models, T_world_obj, frames = scene
    appearance = AppearanceModel.fit(len(models), [(f.rgb, m, k) for f, masks in frames
                                                   for k, m in enumerate(masks)]) if with_appearance else None
    search = TabletopSearch(models, appearance)
    for frame, _ in frames:
        found = search.search(frame)
        assert sorted(f.obj_index for f in found) == [0, 1, 2]
        for f in found:
            t_err, r_err = pose_errors(models[f.obj_index], f.T_cam_obj,
                                        invert(frame.T_world_cam) @ T_world_obj[f.obj_index])
            assert t_err < 0.001 and r_err < 0.1, (models[f.obj_index].name, t_err, r_err)  # exact depth: exact
            assert f.confidence > 0.9


def test_an_object_the_drive_gave_no_colours_for_is_still_found_by_its_shape(scene, pose_errors):
    models, T_world_obj, frames = scene
    appearance = AppearanceModel.fit(len(models), [(f.rgb, m, k) for f, masks in frames
                                                   for k, m in enumerate(masks) if k != 2])
    assert not appearance.known[2]
    found = {f.obj_index: f for f in TabletopSearch(models, appearance).search(frames[0][0])}
    assert sorted(found) == [0, 1, 2]
    t_err, r_err = pose_errors(models[2], found[2].T_cam_obj, invert(frames[0][0].T_world_cam) @ T_world_obj[2])
    assert t_err < 0.001 and r_err < 0.1


def test_search_gives_the_same_poses_whatever_ran_before(scene):
    models, _, frames = scene
    search = TabletopSearch(models, config=SearchConfig(yaw_steps=6))
    first = search.search(frames[0][0])
    search.search(frames[1][0])
    again = search.search(frames[0][0])
    assert [f.obj_index for f in first] == [f.obj_index for f in again]
    for a, b in zip(first, again):
        assert np.array_equal(a.T_cam_obj, b.T_cam_obj) and a.confidence == b.confidence


def test_search_without_depth_or_table_finds_nothing(scene):
    models, _, frames = scene
    frame = frames[0][0]
    search = TabletopSearch(models)
    assert search.search(Frame(rgb=frame.rgb, K=frame.K)) == []
    assert search.search(Frame(rgb=frame.rgb, K=frame.K, depth=np.zeros_like(frame.depth))) == []


def test_pose_estimator_with_depth_returns_the_true_poses_through_the_search(scene, random_bundle, pose_errors):
    """The whole estimator on a table frame: networks with random weights (the learned path finds nothing
    useful), so every pose comes from the search, exact on exact depth."""
    models, T_world_obj, frames = scene
    frame = frames[0][0]
    est = PoseEstimator(random_bundle)
    out = {e.object_name: e for e in est.estimate(frame)}
    assert set(out) == {m.name for m in models}
    for k, m in enumerate(models):
        t_err, r_err = pose_errors(m, out[m.name].T_cam_obj, invert(frame.T_world_cam) @ T_world_obj[k])
        assert t_err < 0.001 and r_err < 0.1, (m.name, t_err, r_err)
        assert out[m.name].score > 0.9 and out[m.name].mask.shape == (480, 640)


def test_search_gives_the_same_poses_with_one_or_two_torch_threads(scene):
    models, _, frames = scene
    search = TabletopSearch(models, config=SearchConfig(yaw_steps=6))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(search.search(frames[1][0]))
    finally:
        torch.set_num_threads(before)
    assert [f.obj_index for f in runs[0]] == [f.obj_index for f in runs[1]]
    assert all(np.array_equal(a.T_cam_obj, b.T_cam_obj) for a, b in zip(*runs))


def test_touching_objects_in_one_cluster_are_both_found(scene, render_scene, look_at, pose_errors):
    """The mug pressed against the box makes one depth cluster: the second round clusters what the first object
    leaves unexplained and finds the other there."""
    models, T_world_obj, _ = scene
    touching = [T.copy() for T in T_world_obj]
    touching[1][:3, 3] = touching[0][:3, 3] + touching[0][:3, :3] @ [0.0, -0.079, 0.0]
    touching[1][2, 3] = T_world_obj[1][2, 3]
    T_wc = look_at(np.array([0.3, -0.9, 0.6]), np.array([0.1, -0.1, 0.0]))
    rgb, depth, masks = render_scene(models, touching, T_wc, clutter=False)
    frame = Frame(rgb=rgb, K=scene[2][0][0].K, depth=depth, T_world_cam=T_wc)
    assert masks[0].sum() > 2000 and masks[1].sum() > 1000
    _, props = find_proposals(depth, frame.K.K, ProposalConfig(), T_world_cam=T_wc)
    share = np.array([[m[p.pixels[:, 0], p.pixels[:, 1]].sum() / m[::2, ::2].sum() for p in props]
                      for m in masks[:2]])
    assert share.max(1).min() > 0.8 and share[0].argmax() == share[1].argmax()  # one cluster holds both
    one_round = {f.obj_index for f in TabletopSearch(models, config=SearchConfig(explain_rounds=0)).search(frame)}
    assert not {0, 1} <= one_round
    found = {f.obj_index: f for f in TabletopSearch(models).search(frame)}
    for k, max_deg in ((0, 0.1), (1, 1.0)):  # the mug's alignment pairs some pixels across the contact
        t_err, r_err = pose_errors(models[k], found[k].T_cam_obj, invert(T_wc) @ touching[k])
        assert t_err < 0.001 and r_err < max_deg, (models[k].name, t_err, r_err)


def test_a_can_lying_against_the_mug_is_found_on_its_side(scene, render_scene, look_at, pose_errors):
    """A can lying on its side, its lid 2 mm from the mug's handle: one cluster wider than either object. Both
    are tried on the cluster's parts (the can in its lying rest) and come back at their true poses."""
    mug, T_mug = scene[0][1], scene[1][1]
    can = catalog.make_targets(["tin_can"], np.random.default_rng(0))[0].cad_model(2)
    side = np.array([0.0, -1.0, 0.0])
    R = resting_rotations(can)[1]
    axis = R @ [0.0, 0.0, 1.0]  # the can's axis, horizontal in this rest: turned to point along `side`
    a = np.arctan2(side[1], side[0]) - np.arctan2(axis[1], axis[0])
    T_can = np.eye(4)
    T_can[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ R
    V = can.vertices @ T_can[:3, :3].T
    W = mug.vertices @ T_mug[:3, :3].T
    reach = (W[W[:, 2] + T_mug[2, 3] < np.ptp(V[:, 2])] @ side).max()  # the mug's extent below the can's top
    T_can[:3, 3] = T_mug[:3, 3] * [1, 1, 0] + (reach + 0.002 + (V @ -side).max()) * side
    T_can[2, 3] = -V[:, 2].min()
    T_wc = look_at(T_can[:3, 3] + [0.55, -0.1, 0.35], T_can[:3, 3])
    rgb, depth, masks = render_scene([mug, can], [T_mug, T_can], T_wc, clutter=False)
    frame = Frame(rgb=rgb, K=scene[2][0][0].K, depth=depth, T_world_cam=T_wc)
    _, props = find_proposals(depth, frame.K.K, ProposalConfig(), T_world_cam=T_wc)
    assert len(props) == 1 and all(m[props[0].pixels[:, 0], props[0].pixels[:, 1]].sum() > 1000 for m in masks)
    found = {f.obj_index: f for f in TabletopSearch([mug, can]).search(frame)}
    assert set(found) == {0, 1}
    t_err, r_err = pose_errors(mug, found[0].T_cam_obj, invert(T_wc) @ T_mug)
    assert t_err < 0.001 and r_err < 0.5, (t_err, r_err)
    T_true = invert(T_wc) @ T_can  # the can's two ends have one shape: its axis is compared up to its sign
    t_err = np.linalg.norm(found[1].T_cam_obj[:3, 3] - T_true[:3, 3])
    cos = abs(found[1].T_cam_obj[:3, 2] @ T_true[:3, 2])
    assert t_err < 0.001 and np.degrees(np.arccos(min(cos, 1.0))) < 0.5, (t_err, cos)
    assert min(f.confidence for f in found.values()) > 0.85  # each fitted again to its own points


def test_ransac_plane_finds_the_plane_among_outliers_and_is_repeatable(rng):
    from selfpose_core.estimate.tabletop import ransac_plane

    n_true = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    xy = rng.uniform(-0.5, 0.5, (3000, 2))
    on = np.column_stack([xy, (-0.7 - xy @ n_true[:2]) / n_true[2]]) + rng.normal(0, 0.002, (3000, 3))
    points = np.concatenate([on, rng.uniform(-0.5, 0.5, (2000, 3))])
    n, d, inliers = ransac_plane(points, 0.006)
    n, d = (n, d) if n @ n_true > 0 else (-n, -d)
    assert np.degrees(np.arccos(min(1.0, n @ n_true))) < 1.0 and abs(d - 0.7) < 0.005
    assert 2900 <= np.sum(inliers < 3000) and np.sum(inliers >= 3000) < 100
    again = ransac_plane(points.copy(), 0.006)
    assert np.array_equal(again[2], inliers) and again[1] == ransac_plane(points, 0.006)[1]


def test_the_learned_surface_pattern_tells_a_printed_box_from_its_look_alike(look_at):
    """Two boxes of one shape and the same six colours, on other sides; the colour histograms (replaced by an
    oracle) cannot tell them apart, and the look-alike, nearer the camera, fits its cluster better than the printed
    box fits its own. The box's surface colours, learned from views at known poses, put it on the printed one."""
    import trimesh

    from selfpose_core.geometry.symmetry import Symmetry
    from selfpose_core.mesh.measures import sample_surface
    from selfpose_core.models.surface_colours import SurfaceColours
    from selfpose_core.render.renderer import render
    from selfpose_core.types import CameraIntrinsics, ObjectModel

    box = trimesh.creation.box((0.12, 0.06, 0.2))
    model = ObjectModel("box", np.asarray(box.vertices), np.asarray(box.faces), float(np.linalg.norm(box.extents)),
                        Symmetry())
    palette = np.array([(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 200, 40), (160, 60, 180), (40, 190, 190)])
    n = np.asarray(box.face_normals)
    side = np.argmax(np.abs(n), 1) * 2 + (n[np.arange(len(n)), np.argmax(np.abs(n), 1)] < 0)
    printed, look_alike = palette[np.array([0, 1, 2, 3, 4, 5])[side]], palette[np.array([2, 4, 0, 5, 3, 1])[side]]
    K = CameraIntrinsics(570.0, 570.0, 319.5, 239.5, 640, 480)

    def pose(x, y, yaw):
        T = np.eye(4)
        T[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
        T[:3, 3] = (x, y, 0.1)
        return T

    def view(objects, T_wc):
        """(rgb, depth, face ids) of a grey table (faces 0, 1) with ``objects`` = [(T_world_obj, face colours)]."""
        verts = [np.array([[-0.8, -0.8, 0], [0.8, -0.8, 0], [0.8, 0.8, 0], [-0.8, 0.8, 0.0]])]
        faces, colours = [np.array([[0, 1, 2], [0, 2, 3]])], [np.full((2, 3), 120)]
        for T, col in objects:
            faces.append(np.asarray(box.faces) + sum(len(v) for v in verts))
            verts.append(np.asarray(box.vertices) @ T[:3, :3].T + T[:3, 3])
            colours.append(col)
        T = invert(T_wc)
        out = render(RenderMesh(torch.tensor(np.concatenate(verts)), torch.tensor(np.concatenate(faces))),
                     torch.tensor(T[None, :3, :3]), torch.tensor(T[None, :3, 3]), torch.tensor(K.K[None]), (480, 640),
                     coords=False, attributes=False, silhouette=False, visibility=False)
        face = out.face_ids[0].numpy()
        rgb = np.where((face >= 0)[..., None], np.concatenate(colours)[np.maximum(face, 0)], 0).astype(np.uint8)
        return rgb, np.where(face >= 0, out.depth[0].numpy(), 0.0).astype(np.float32), face

    T_box = pose(0.0, 0.0, 0.3)  # the drive: the printed box alone, seen from around at its (pseudo) pose
    views = []
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        T_wc = look_at(np.array([0.7 * np.cos(a), 0.7 * np.sin(a), 0.45]), np.array([0.0, 0.0, 0.1]))
        rgb, depth, face = view([(T_box, printed)], T_wc)
        views.append((rgb, depth, K.K, 0, invert(T_wc) @ T_box, face >= 2))
    appearance = AppearanceModel.fit(1, [(rgb, mask, 0) for rgb, _, _, _, _, mask in views])
    appearance.similarity = lambda rgb, mask: np.ones(1)  # histograms that cannot tell the two apart
    learned = SurfaceColours.fit([sample_surface(model.vertices, model.faces, 800, np.random.default_rng(0))], views)
    # later: the printed box and, nearer the camera, its look-alike
    T_printed, T_other = pose(-0.15, 0.2, 1.0), pose(0.1, -0.15, -0.4)
    T_wc = look_at(np.array([0.55, -0.6, 0.5]), np.array([0.0, 0.0, 0.05]))
    rgb, depth, _ = view([(T_printed, printed), (T_other, look_alike)], T_wc)
    frame = Frame(rgb=rgb, K=K, depth=depth, T_world_cam=T_wc)
    for surface in (None, learned):
        appearance.surface = surface
        found = TabletopSearch([model], appearance).search(frame)
        assert len(found) == 1
        on_printed = np.linalg.norm(found[0].T_cam_obj[:3, 3] - (invert(T_wc) @ T_printed)[:3, 3]) < 0.01
        assert on_printed == (surface is not None)
