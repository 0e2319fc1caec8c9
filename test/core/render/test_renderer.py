"""Renderer outputs, batching, backends and the documented behaviour at the edges."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfpose_core.errors import MeshError, ShapeError
from selfpose_core.render import RenderMesh, available_backends, rasterize, render
from selfpose_core.types import ObjectModel

K64 = torch.tensor([[80.0, 0.0, 31.5], [0.0, 80.0, 31.5], [0.0, 0.0, 1.0]])


def _pose(B: int, z: float = 0.5, x: float = 0.0):
    return torch.eye(3).expand(B, 3, 3).clone(), torch.tensor([[x, 0.0, z]] * B), K64.expand(B, 3, 3)


def _square(size: float = 0.1, z: float = 0.0) -> RenderMesh:
    h = size / 2
    v = torch.tensor([[-h, -h, z], [h, -h, z], [h, h, z], [-h, h, z]])
    return RenderMesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]))


def _finite(out) -> bool:
    tensors = [out.silhouette, out.depth, out.coords, out.barycentrics, out.attributes, out.texture]
    return all(torch.isfinite(x).all() for x in tensors if x is not None)


def test_square_covers_the_expected_pixels_and_depth():
    # 0.1 m square at 0.5 m, f = 80: spans 16 px centred on pixel 31.5 -> columns/rows 24..39
    out = render(_square(), *_pose(1), (64, 64))
    ys, xs = out.mask[0].nonzero(as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (24, 39, 24, 39)
    assert torch.allclose(out.depth[0][out.mask[0]], torch.tensor(0.5))
    assert out.depth[0][~out.mask[0]].eq(0).all()
    assert (out.face_ids[0][~out.mask[0]] == -1).all()
    assert torch.allclose(out.barycentrics[0][out.mask[0]].sum(-1), torch.tensor(1.0))
    # object coordinates are the unprojected pixel centres
    u = torch.arange(64.0)
    assert torch.allclose(out.coords[0, 30, 24:40, 0], (u[24:40] - 31.5) / 80 * 0.5, atol=1e-6)
    # exact coverage: the silhouette sums to the square's area in pixels (16 x 16)
    assert math.isclose(out.silhouette.sum().item(), 256.0, abs_tol=1e-3)


def test_silhouette_is_fractional_coverage():
    # shift by a quarter pixel: one column of the border becomes 0.25 / 0.75 covered
    R, t, K = _pose(1)
    t[0, 0] = 0.25 / 80 * 0.5
    sil = render(_square(), R, t, K, (64, 64)).silhouette[0]
    assert math.isclose(sil.sum().item(), 256.0, abs_tol=1e-3)
    assert torch.allclose(sil[30, 24], torch.tensor(0.75)) and torch.allclose(sil[30, 40], torch.tensor(0.25))


def test_backends_agree(render_mesh, random_views):
    mesh = render_mesh("torus")
    R, t, K = (torch.tensor(a, dtype=torch.float32) for a in random_views(3, 96, 64, 90.0, seed=5))
    outs = {b: render(mesh, R, t, K, (64, 96), backend=b) for b in available_backends() if b != "pytorch3d"}
    ref = outs.pop("torch")
    for out in outs.values():
        assert torch.equal(out.face_ids, ref.face_ids)
        assert torch.allclose(out.depth, ref.depth, atol=1e-6)
        assert torch.allclose(out.silhouette, ref.silhouette, atol=1e-5)


@pytest.mark.skipif("pytorch3d" not in available_backends(), reason="PyTorch3D is not installed")
def test_pytorch3d_backend_matches(render_mesh, random_views):
    mesh = render_mesh("torus")
    R, t, K = (torch.tensor(a, dtype=torch.float32) for a in random_views(3, 96, 64, 90.0, seed=6))
    ours = render(mesh, R, t, K, (64, 96), backend="torch")
    theirs = render(mesh, R, t, K, (64, 96), backend="pytorch3d")
    iou = (ours.mask & theirs.mask).sum() / (ours.mask | theirs.mask).sum()
    assert iou >= 0.995
    both = ours.mask & theirs.mask
    assert (ours.depth[both] - theirs.depth[both]).abs().median() <= 0.5e-3


def test_attributes_texture_and_per_view_meshes():
    sq = _square()
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # v up: image row 0 is at v = 1
    tex = torch.zeros(2, 2, 1)
    tex[0, :, 0] = 1.0  # top texture row white
    textured = RenderMesh(sq.vertices, sq.faces, colours, uv, tex)
    out = render(textured, *_pose(1), (64, 64))
    assert torch.allclose(out.attributes[0, 24, 24], torch.tensor([1.0, 0, 0]), atol=0.05)
    assert torch.allclose(out.attributes[0, 39, 39], torch.tensor([0, 0, 1.0]), atol=0.05)
    # y down in the image, vertex 0 (v=1, top of texture) is at the top-left: top rows sample the white row
    assert out.texture[0, 25, 32, 0] > 0.9 and out.texture[0, 38, 32, 0] < 0.1
    # one mesh per view, of different sizes: same as rendering each alone
    small = _square(0.05)
    both = render([textured, RenderMesh(small.vertices, small.faces, colours, uv, tex)], *_pose(2), (64, 64))
    alone = render(small, *_pose(1), (64, 64))
    assert torch.equal(both.mask[1], alone.mask[0]) and torch.equal(both.mask[0], out.mask[0])
    assert both.vertex_visibility.shape == (2, 4)


def test_vertex_visibility_of_a_closed_mesh(render_mesh):
    mesh = render_mesh("sphere")
    out = render(mesh, *_pose(1, z=0.4), (64, 64))
    vis = out.vertex_visibility[0]
    front = mesh.vertices[:, 2] < -0.03  # facing the camera (which looks along +z), away from the limb
    back = mesh.vertices[:, 2] > 0.01
    assert vis[front].all() and not vis[back].any()


def test_object_from_object_model():
    v = np.array([[-0.05, -0.05, 0], [0.05, -0.05, 0], [0.05, 0.05, 0], [-0.05, 0.05, 0]])
    model = ObjectModel("sq", v, np.array([[0, 1, 2], [0, 2, 3]]), diameter=0.14,
                        vertex_colors=np.full((4, 3), 255, np.uint8))
    out = render(RenderMesh.from_object_model(model), *_pose(1), (64, 64))
    assert out.mask.sum() == 256 and torch.allclose(out.attributes[out.mask], torch.tensor(1.0))


def test_partly_outside_the_image(render_mesh):
    R, t, K = _pose(1, z=0.3, x=0.1)  # sphere centre 5 px inside the right border, radius 13 px
    out = render(render_mesh("sphere"), R, t, K, (64, 64))
    assert 0 < out.mask.sum() < 64 * 64 and out.mask[0, :, 63].any() and not out.mask[0, :, 0].any()
    assert _finite(out)


def test_behind_the_camera_and_crossing_it(render_mesh):
    mesh = render_mesh("sphere")
    R, t, K = _pose(2, z=-0.5)
    t[1, 2] = 0.02  # near plane cuts the sphere: faces crossing it are dropped
    t.requires_grad_(True)
    out = render(mesh, R, t, K, (64, 64))
    assert out.mask[0].sum() == 0 and _finite(out)
    assert out.depth[1][out.mask[1]].min() >= 1e-3
    (out.silhouette.sum() + out.depth.sum()).backward()
    assert torch.isfinite(t.grad).all()


def test_tiny_at_distance(render_mesh):
    # 0.12 m at 40 m, f = 80: 0.24 px. Covers at most one pixel centre; covering none, it vanishes (documented)
    R, t, K = _pose(2, z=40.0)
    t[1] = torch.tensor([-0.5 / 80 * 40, -0.5 / 80 * 40, 40.0])  # view 1: centred on pixel (31, 31)
    t.requires_grad_(True)
    out = render(render_mesh("box"), R, t, K, (64, 64))
    assert out.mask[0].sum() == 0 and out.mask[1].sum() == 1 and _finite(out)
    assert 0 < out.silhouette[1].sum() <= 1.0
    out.silhouette.sum().backward()
    assert torch.isfinite(t.grad).all()


def test_degenerate_faces_are_skipped():
    sq = _square()
    v = torch.cat([sq.vertices, torch.tensor([[0.0, 0.0, -0.1], [0.01, 0.0, -0.1]])])
    faces = torch.cat([sq.faces, torch.tensor([[4, 4, 4], [4, 5, 4], [0, 1, 0]])])  # points and lines
    R, t, K = _pose(1)
    t.requires_grad_(True)
    out = render(RenderMesh(v, faces), R, t, K, (64, 64))
    assert out.mask.sum() == 256 and (out.face_ids[out.mask] < 2).all() and _finite(out)
    out.silhouette.sum().backward()
    assert torch.isfinite(t.grad).all()


def test_empty_mesh_renders_background():
    empty = RenderMesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64))
    out = render(empty, *_pose(2), (16, 16))
    assert out.mask.sum() == 0 and out.depth.abs().sum() == 0 and out.silhouette.abs().sum() == 0
    assert (out.face_ids == -1).all() and _finite(out)


def test_bad_input_is_named():
    with pytest.raises(ShapeError, match="R"):
        render(_square(), torch.eye(3), torch.zeros(1, 3), K64[None], (8, 8))
    with pytest.raises(MeshError, match="faces"):
        RenderMesh(torch.zeros(3, 3), torch.tensor([[0, 1, 5]]))
    with pytest.raises(MeshError, match="one mesh or one per view"):
        render([_square(), _square()], *_pose(3), (8, 8))


def test_rasterize_on_its_own():
    xy = torch.tensor([[[0.8, 0.8], [6.7, 0.8], [0.8, 6.7]]])
    frags = rasterize(xy, torch.ones(1, 3), torch.tensor([[0, 1, 2]]), (8, 8))
    # pixel centres with x, y >= 1 and x + y <= 7 (hypotenuse x + y = 7.5)
    v, u = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    expected = (u >= 1) & (v >= 1) & (u + v <= 7)
    assert torch.equal(frags.face_ids[0] >= 0, expected)
