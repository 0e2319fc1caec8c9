"""The renderer against Open3D ray casting: same pixels covered, same depth, same object coordinates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfpose_core.render import render
from selfpose_core.render.open3d_reference import Open3DRaycaster

pytest.importorskip("open3d")


def _compare(mesh_tm, mesh, R, t, K, size, backend="auto"):
    ref_mask, ref_depth, ref_coords, _ = Open3DRaycaster(mesh_tm.vertices, mesh_tm.faces).render(R, t, K, size)
    with torch.no_grad():
        out = render(mesh, torch.tensor(R, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                     torch.tensor(K, dtype=torch.float32), size, silhouette=False, backend=backend)
    mask, depth, coords = out.mask.numpy(), out.depth.numpy(), out.coords.numpy()
    iou = (mask & ref_mask).sum() / max((mask | ref_mask).sum(), 1)
    both = mask & ref_mask
    depth_err = np.abs(depth[both] - ref_depth[both])
    coord_err = np.linalg.norm(coords[both] - ref_coords[both], axis=-1)
    return iou, np.median(depth_err), coord_err, mask.sum(1).sum(1)


@pytest.mark.parametrize("name", ["box", "torus"])
def test_matches_open3d_on_random_views(trimeshes, render_mesh, random_views, name):
    R, t, K = random_views(20, seed=1)
    iou, med_depth, coord_err, per_view = _compare(trimeshes[name], render_mesh(name), R, t, K, (240, 320))
    assert (per_view > 50).all()  # every view sees the object
    assert iou >= 0.995
    assert med_depth <= 0.5e-3
    assert np.median(coord_err) <= 0.5e-3


def test_torch_backend_matches_open3d(trimeshes, render_mesh, random_views):
    R, t, K = random_views(4, seed=2, width=160, height=120, f=150.0)
    iou, med_depth, _, _ = _compare(trimeshes["torus"], render_mesh("torus"), R, t, K, (120, 160), backend="torch")
    assert iou >= 0.995
    assert med_depth <= 0.5e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["box", "sphere", "torus", "cylinder"])
def test_matches_open3d_100_views(trimeshes, render_mesh, random_views, name):
    R, t, K = random_views(100, seed=3, width=640, height=480, f=600.0)
    iou, med_depth, coord_err, per_view = _compare(trimeshes[name], render_mesh(name), R, t, K, (480, 640))
    assert (per_view > 100).all()
    assert iou >= 0.995
    assert med_depth <= 0.5e-3
    assert np.median(coord_err) <= 0.5e-3
