"""Depth-based warping helpers: unproject, transform, project, sample, warp with validity."""
from __future__ import annotations

import torch

from selfpose_core.errors import ShapeError
from selfpose_core.render import RenderMesh, render
from selfpose_core.render.warp import project_points, sample_image, unproject_depth, warp_image

K = torch.tensor([[[60.0, 0.0, 24.5], [0.0, 60.0, 19.5], [0.0, 0.0, 1.0]]])


def test_unproject_then_project_is_identity():
    depth = torch.rand(1, 40, 50, generator=torch.Generator().manual_seed(0)) + 0.5
    X = unproject_depth(depth, K)
    uv, z = project_points(X, K)
    v, u = torch.meshgrid(torch.arange(40.0), torch.arange(50.0), indexing="ij")
    assert torch.allclose(uv[0, ..., 0], u, atol=1e-4) and torch.allclose(uv[0, ..., 1], v, atol=1e-4)
    assert torch.allclose(z, depth)


def test_sample_image_hits_pixel_centres_and_pads_with_zero():
    img = torch.arange(12.0).view(1, 1, 3, 4)
    uv = torch.tensor([[[[2.0, 1.0], [2.5, 1.0], [-2.0, 0.0]]]])
    out = sample_image(img, uv)[0, 0, 0]
    assert torch.allclose(out, torch.tensor([6.0, 6.5, 0.0]))


def test_warp_between_rendered_views_matches_the_rendering():
    # a textured plane seen by two cameras; warping view 1's image into view 0 with view 0's depth reproduces view 0
    v = torch.tensor([[-0.2, -0.2, 0.0], [0.2, -0.2, 0.0], [0.2, 0.2, 0.0], [-0.2, 0.2, 0.0]])
    attrs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    plane = RenderMesh(v, torch.tensor([[0, 1, 2], [0, 2, 3]]), attrs)
    c, s = torch.cos(torch.tensor(0.2)), torch.sin(torch.tensor(0.2))
    R = torch.stack([torch.eye(3), torch.tensor([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])])
    t = torch.tensor([[0.0, 0.0, 0.6], [0.03, 0.0, 0.6]])
    Ks = K.expand(2, 3, 3)
    out = render(plane, R, t, Ks, (40, 50))
    # T_src_tgt = T_cam1_obj @ inv(T_cam0_obj)
    R10 = R[1] @ R[0].T
    t10 = t[1] - R10 @ t[0]
    img1 = out.attributes[1].permute(2, 0, 1)[None]
    warped, valid = warp_image(img1, out.depth[:1], K, K, R10[None], t10[None], depth_src=out.depth[1:])
    assert valid.sum() > 0.5 * out.mask[0].sum()
    assert not valid[~out.mask[:1]].any()
    err = (warped[0].permute(1, 2, 0) - out.attributes[0])[valid[0]].abs().amax(-1)
    # exact inside; along the source silhouette bilinear sampling blends in the background
    assert err.median() < 1e-3 and torch.quantile(err, 0.9) < 0.01
    # the same pose but a point pushed off its surface in the source: the occlusion test rejects it
    far = out.depth[1:].clone() * 1.2
    _, valid_far = warp_image(img1, out.depth[:1], K, K, R10[None], t10[None], depth_src=far)
    assert valid_far.sum() == 0


def test_invalid_depth_and_gradients():
    depth = torch.full((1, 8, 8), 0.5)
    depth[0, 0, 0] = float("nan")
    depth[0, 1, 1] = 0.0
    img = torch.rand(1, 2, 8, 8, requires_grad=True)
    tt = torch.zeros(1, 3, requires_grad=True)
    warped, valid = warp_image(img, depth, K, K, torch.eye(3)[None], tt)
    assert not valid[0, 0, 0] and not valid[0, 1, 1] and valid.sum() > 0
    warped.sum().backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(tt.grad).all() and tt.grad.abs().sum() > 0


def test_shapes_are_checked():
    try:
        unproject_depth(torch.zeros(8, 8), K)
    except ShapeError as exc:
        assert "depth" in str(exc)
    else:
        raise AssertionError("no ShapeError")
