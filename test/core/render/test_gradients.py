"""Gradients of the renderer: finite differences w.r.t. pose, vertices and attributes, and pose recovery."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as Fn
import trimesh

from selfpose_core.render import RenderMesh, render

K1 = torch.tensor([[200.0, 0.0, 63.5], [0.0, 200.0, 63.5], [0.0, 0.0, 1.0]], dtype=torch.float64)[None]
P0 = torch.tensor([0.3, 0.5, 0.2, 0.01, -0.005, 0.5], dtype=torch.float64)  # axis-angle, translation


def _render(mesh, p, rodrigues, **kw):
    return render(mesh, rodrigues(p[:3])[None], p[3:][None], K1, (128, 128), **kw)


def _check_fd(loss, p0, rel=0.03):
    p = p0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(p), p)
    fd = []
    for i in range(len(p0)):
        h = 1e-4 if i < 3 else 1e-5
        e = torch.zeros_like(p0)
        e[i] = h
        fd.append(((loss(p0 + e) - loss(p0 - e)) / (2 * h)).item())
    fd = torch.tensor(fd, dtype=torch.float64)
    assert fd.abs().max() > 0
    assert torch.allclose(g, fd, atol=rel * fd.abs().max().item(), rtol=0), (g, fd)


@pytest.mark.parametrize("name", ["box", "torus"])
def test_silhouette_loss_gradient_matches_finite_differences(render_mesh, rodrigues, one_thread, name):
    mesh = render_mesh(name, torch.float64)
    weights = torch.rand(1, 128, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _check_fd(lambda p: (_render(mesh, p, rodrigues).silhouette * weights).sum(), P0)


def test_depth_loss_gradient_matches_finite_differences(render_mesh, rodrigues, one_thread):
    mesh = render_mesh("box", torch.float64)
    with torch.no_grad():
        mask = _render(mesh, P0, rodrigues).mask.double()
    # interior pixels only: depth jumps at the silhouette, where finite differences are meaningless
    interior = -Fn.max_pool2d(-mask[None], 5, 1, 2)[0]
    weights = torch.rand(1, 128, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * interior
    _check_fd(lambda p: (_render(mesh, p, rodrigues, silhouette=False).depth * weights).sum(), P0)


def test_gradients_reach_vertices_and_attributes(render_mesh, rodrigues, one_thread):
    base = render_mesh("sphere", torch.float64)
    attrs = torch.rand(base.num_vertices, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    verts = base.vertices.clone().requires_grad_(True)
    attrs_g = attrs.clone().requires_grad_(True)
    out = _render(RenderMesh(verts, base.faces, attrs_g), P0, rodrigues)
    w = torch.rand(out.attributes.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    loss = (out.attributes * w).sum() + out.depth.sum() + out.silhouette.sum()
    gv, ga = torch.autograd.grad(loss, [verts, attrs_g])
    assert torch.isfinite(gv).all() and torch.isfinite(ga).all()
    assert (gv.abs().sum(1) > 0).sum() > 50 and (ga.abs().sum(1) > 0).sum() > 50
    # attributes enter linearly: a finite difference on one visible vertex's attribute is exact
    i = int(ga.abs().sum(1).argmax())
    e = torch.zeros_like(attrs)
    e[i, 0] = 1e-3
    with torch.no_grad():
        up = (_render(RenderMesh(base.vertices, base.faces, attrs + e), P0, rodrigues).attributes * w).sum()
        dn = (_render(RenderMesh(base.vertices, base.faces, attrs - e), P0, rodrigues).attributes * w).sum()
    assert math.isclose(((up - dn) / 2e-3).item(), ga[i, 0].item(), rel_tol=1e-6)
    # a vertex position: depth + attributes (interior) finite difference
    j = int((gv.abs().sum(1) * (ga.abs().sum(1) > 0)).argmax())

    def interior_loss(v):
        o = _render(RenderMesh(v, base.faces, attrs), P0, rodrigues, silhouette=False)
        return (o.attributes * w).sum() + o.depth.sum()
    vv = base.vertices.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(interior_loss(vv), vv)
    e = torch.zeros_like(base.vertices)
    e[j, 2] = 1e-6
    with torch.no_grad():
        fd = (interior_loss(base.vertices + e) - interior_loss(base.vertices - e)) / 2e-6
    assert math.isclose(fd.item(), g[j, 2].item(), rel_tol=0.05, abs_tol=1e-3 * g.abs().max().item())


def _look_at(center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = -center / np.linalg.norm(center)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    R_world_cam = np.stack([x, np.cross(z, x), z], 1)
    return R_world_cam.T, -R_world_cam.T @ center


def _recover_pose(kind: str, rodrigues, iters: int) -> tuple[float, float]:
    """Perturb an object's pose by 20 deg and 3 cm, optimise it back from 3 views; return (deg, mm) errors."""
    tm = trimesh.util.concatenate([
        trimesh.creation.box(extents=(0.12, 0.06, 0.04)),
        trimesh.creation.cylinder(radius=0.02, height=0.08,
                                  transform=trimesh.transformations.translation_matrix([0.04, 0.0, 0.05]))])
    mesh = RenderMesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))
    cams = [_look_at(np.array([0.5 * math.cos(a), 0.5 * math.sin(a), 0.25])) for a in (0.0, 2.1, 4.2)]
    Rc = torch.tensor(np.stack([c[0] for c in cams]), dtype=torch.float32)
    tc = torch.tensor(np.stack([c[1] for c in cams]), dtype=torch.float32)
    K = torch.tensor([[220.0, 0, 47.5], [0, 220.0, 47.5], [0, 0, 1]]).expand(3, 3, 3)
    size = (96, 96)
    R_true, t_true = rodrigues(torch.tensor([0.3, -0.2, 0.5])), torch.tensor([0.01, -0.02, 0.0])
    gen = torch.Generator().manual_seed(4)
    axis, shift = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    R0 = rodrigues(axis / axis.norm() * math.radians(20.0)) @ R_true
    t0 = t_true + 0.03 * shift / shift.norm()
    with torch.no_grad():
        target = render(mesh, Rc @ R_true, (Rc @ t_true[:, None])[..., 0] + tc, K, size)
    w = torch.zeros(3, requires_grad=True)
    t = t0.clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [w], "lr": 0.02}, {"params": [t], "lr": 0.003}])
    for _ in range(iters):
        R = rodrigues(w) @ R0
        out = render(mesh, Rc @ R, (Rc @ t[:, None])[..., 0] + tc, K, size, coords=False, visibility=False,
                     silhouette=kind == "silhouette")
        if kind == "silhouette":
            a, b = out.silhouette[:, None], target.silhouette[:, None]
            loss = sum(((Fn.avg_pool2d(a, k) - Fn.avg_pool2d(b, k)) ** 2).mean() for k in (1, 2, 4, 8))
        else:
            both = out.mask & target.mask
            loss = ((out.depth - target.depth).abs() * both).sum() / both.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = (rodrigues(w) @ R0).detach()
    cos = ((R.T @ R_true).trace().item() - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))), 1000 * (t.detach() - t_true).norm().item()


def test_pose_recovered_from_silhouettes_alone(rodrigues, one_thread):
    deg, mm = _recover_pose("silhouette", rodrigues, iters=100)
    assert deg < 1.0 and mm < 2.0


def test_pose_recovered_from_depth_alone(rodrigues, one_thread):
    deg, mm = _recover_pose("depth", rodrigues, iters=100)
    assert deg < 1.0 and mm < 2.0
