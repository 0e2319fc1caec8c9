"""Render-and-compare verification of pose hypotheses against the observed depth.

Each hypothesis is rendered (the project's renderer, depth only) into a window of the depth image. Pixels of the
rendered silhouette with valid depth are

* **consistent** when the observed depth is within ``tau`` of the rendered depth (weighted by
  ``1 - (difference / tau)^2``, so that the score also ranks close hypotheses),
* **violations** when the observed depth lies farther than ``tau`` behind it (the camera sees through the
  object: free space where the hypothesis puts matter),
* **occluded** when the observed depth lies nearer (something in front hides the object; weighted little);

pixels of the proposal's mask that the silhouette does not cover are **unexplained** (with a ``sphere``, only those
whose observed point lies inside the object's bounding sphere at that pose: a proposal that also holds a touching
object or clutter does not count against the object's own fit). The score is
``consistent / (consistent + violations + unexplained + occluded_weight * occluded)`` in [0, 1]: 1 when the
rendered object covers exactly the observed segment at the observed depth. Pixels without observed depth count
for nothing. Reference: the verification of hypothesise-and-verify pipelines, e.g. Aldoma et al., "A global
hypotheses verification method for 3D object recognition", ECCV 2012 (here per object and without the global
optimisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfpose_core.geometry.projection import unproject
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.rasterizer import rasterize
from selfpose_core.render.renderer import project_vertices
from selfpose_core.types import CameraIntrinsics


@dataclass(slots=True)
class VerifyConfig:
    tau: float = 0.015  # metres: observed and rendered depth agree within this
    occluded_weight: float = 0.2  # weight of rendered pixels hidden behind nearer observed depth


def render_window(mesh: RenderMesh, T_cam_obj: np.ndarray, K: np.ndarray, window: tuple[int, int, int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(depth (H, h, w) metres, 0 = background; face ids (H, h, w), -1 = background) of ``mesh`` at the poses
    ``T_cam_obj`` (H, 4, 4), rendered into ``window`` = (x0, y0, x1, y1) (end exclusive) of the image of ``K``:
    the renderer's z-buffer alone (no barycentrics or gradients are needed here)."""
    x0, y0, x1, y1 = window
    Kw = CameraIntrinsics.from_K(K, x1, y1).crop(x0, y0, x1 - x0, y1 - y0).K
    T = torch.as_tensor(np.asarray(T_cam_obj), dtype=torch.float32)
    with torch.inference_mode():
        xy, z = project_vertices(mesh.vertices.to(torch.float32), T[:, :3, :3], T[:, :3, 3],
                                 torch.as_tensor(Kw, dtype=torch.float32).expand(len(T), 3, 3))
        frags = rasterize(xy, z, mesh.faces, (y1 - y0, x1 - x0))
    return frags.depth.numpy(), frags.face_ids.numpy()


def verify_counts(mesh: RenderMesh, T_cam_obj: np.ndarray, depth: np.ndarray, K: np.ndarray, mask: np.ndarray,
                  window: tuple[int, int, int, int], cfg: VerifyConfig,
                  sphere: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """(H, 4) evidence of the poses ``T_cam_obj`` (H, 4, 4) of ``mesh`` against ``depth`` (h, w) metres (0 / NaN
    invalid) seen through ``K`` (3, 3), with the proposal ``mask`` (h, w) bool, inside ``window``
    = (x0, y0, x1, y1) pixels of that image (end exclusive): per pose the graded count of consistent pixels and
    the counts of violations, occluded and unexplained pixels (module docstring). ``sphere`` = (centre (3,) in the
    object frame, radius m): mask pixels count as unexplained only inside it at each pose."""
    x0, y0, x1, y1 = window
    if x1 <= x0 or y1 <= y0 or not len(T_cam_obj):
        return np.zeros((len(T_cam_obj), 4))
    rendered, faces = render_window(mesh, T_cam_obj, K, window)
    sil = faces >= 0
    obs = np.nan_to_num(np.asarray(depth[y0:y1, x0:x1], np.float64), nan=0.0)[None]
    valid = obs > 0
    seg = mask[y0:y1, x0:x1][None]
    diff = obs - rendered
    consistent = np.where(sil & valid & (np.abs(diff) <= cfg.tau), 1.0 - (diff / cfg.tau) ** 2, 0.0).sum((1, 2))
    violations = (sil & valid & (diff > cfg.tau)).sum((1, 2))
    occluded = (sil & valid & (diff < -cfg.tau)).sum((1, 2))
    r, q = np.nonzero(seg[0] & valid[0])  # the proposal's pixels with depth
    unexplained = ~sil[:, r, q]
    if sphere is not None:
        unexplained &= _inside_sphere(obs[0, r, q], r, q, K, window, np.asarray(T_cam_obj, np.float64), *sphere)
    unexplained = unexplained.sum(1)
    return np.stack([consistent, violations, occluded, unexplained], 1).astype(np.float64)


def _inside_sphere(z: np.ndarray, r: np.ndarray, q: np.ndarray, K: np.ndarray, window: tuple[int, int, int, int],
                   T_cam_obj: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """(H, n) whether the points observed at depths ``z`` (n,) metres at the (row, column) ``r``, ``q`` (n,) of
    ``window`` lie within ``radius`` of ``centre`` (object frame) at each pose ``T_cam_obj`` (H, 4, 4)."""
    x0, y0 = window[:2]
    X = unproject(K, np.stack([q + x0, r + y0], 1).astype(np.float64), z)  # (n, 3)
    c = T_cam_obj[:, :3, :3] @ centre + T_cam_obj[:, :3, 3]  # (H, 3)
    return ((X[None] - c[:, None]) ** 2).sum(-1) < radius ** 2


def score_counts(counts: np.ndarray, occluded_weight: float) -> np.ndarray:
    """(H,) scores in [0, 1] of the (H, 4) evidence of :func:`verify_counts`: consistent / (consistent +
    violations + unexplained + ``occluded_weight`` x occluded)."""
    consistent, violations, occluded, unexplained = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    denom = consistent + violations + unexplained + occluded_weight * occluded
    return np.where(denom > 0, consistent / np.maximum(denom, 1e-9), 0.0)


def verify_poses(mesh: RenderMesh, T_cam_obj: np.ndarray, depth: np.ndarray, K: np.ndarray, mask: np.ndarray,
                 window: tuple[int, int, int, int], cfg: VerifyConfig,
                 sphere: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """(H,) scores in [0, 1] of the poses ``T_cam_obj`` (H, 4, 4): :func:`score_counts` of :func:`verify_counts`."""
    return score_counts(verify_counts(mesh, T_cam_obj, depth, K, mask, window, cfg, sphere), cfg.occluded_weight)
