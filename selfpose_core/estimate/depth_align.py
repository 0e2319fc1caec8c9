"""Final alignment of a resting object to the observed depth: projective point-to-plane ICP over 4 DOF.

The model is rendered at the current pose (the project's renderer: depth and the face seen at every pixel); each
pixel where the rendered and the observed depth are both valid and within ``gate`` pairs the rendered surface
point ``p`` (normal ``n``) with the observed point ``q`` on the same ray (projective data association, as in
KinectFusion: Newcombe et al., ISMAR 2011). Gauss-Newton on the point-to-plane residuals ``n . (q - p)``
(Chen & Medioni 1992), Huber-weighted, over the rotation about the support plane's normal ``up`` (through the
object's origin) and the translation: an object resting on a plane stays resting. On exact depth the true pose
is a fixed point with zero residual, so the result is exact where the data are.
"""
from __future__ import annotations

import numpy as np
import torch

from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render


def face_normals(mesh: RenderMesh) -> np.ndarray:
    """(F, 3) unit normals of the mesh's faces (object frame; zero for degenerate faces)."""
    v = mesh.vertices.detach().double().numpy()
    f = mesh.faces.numpy()
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def align_resting(mesh: RenderMesh, normals: np.ndarray, T_cam_obj: np.ndarray, up: np.ndarray,
                  depth: np.ndarray, K: np.ndarray, window: tuple[int, int, int, int], *, gate: float = 0.01,
                  iterations: int = 6, huber: float = 0.003) -> np.ndarray:
    """The pose (4, 4) after ``iterations`` Gauss-Newton steps (see the module docstring) of ``mesh`` (face
    ``normals`` (F, 3)) from ``T_cam_obj`` against ``depth`` (h, w) metres through ``K`` inside ``window`` =
    (x0, y0, x1, y1) (end exclusive); ``up`` (3,) the support plane's normal in the camera frame. Returns the
    input pose when fewer than 10 pixels pair up."""
    x0, y0, x1, y1 = window
    if x1 <= x0 or y1 <= y0:
        return T_cam_obj
    Kw = np.array(K, np.float64, copy=True)
    Kw[0, 2] -= x0
    Kw[1, 2] -= y0
    obs = np.nan_to_num(np.asarray(depth[y0:y1, x0:x1], np.float64), nan=0.0)
    v, u = np.mgrid[0:y1 - y0, 0:x1 - x0]
    rays = np.stack([(u - Kw[0, 2]) / Kw[0, 0], (v - Kw[1, 2]) / Kw[1, 1], np.ones(u.shape)], -1)
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    T = np.array(T_cam_obj, np.float64, copy=True)
    for _ in range(iterations):
        Tt = torch.as_tensor(T[None], dtype=torch.float64)
        with torch.inference_mode():
            out = render(mesh, Tt[:, :3, :3], Tt[:, :3, 3], torch.as_tensor(Kw[None]), (y1 - y0, x1 - x0),
                         coords=False, attributes=False, silhouette=False, visibility=False)
        rd = out.depth[0].numpy()
        fid = out.face_ids[0].numpy()
        ok = (fid >= 0) & (obs > 0) & (np.abs(obs - rd) < gate)
        if ok.sum() < 10:
            return T_cam_obj
        p = rays[ok] * rd[ok, None]
        q = rays[ok] * obs[ok, None]
        n = normals[fid[ok]] @ T[:3, :3].T
        r = np.einsum("ij,ij->i", n, q - p)
        J = np.column_stack([np.einsum("ij,ij->i", n, np.cross(up, p - T[:3, 3])), n])
        w = np.minimum(1.0, huber / np.maximum(np.abs(r), 1e-12))
        A = J.T @ (J * w[:, None])
        A += (1e-6 * np.trace(A) + 1e-12) * np.eye(4)  # damped: a symmetric object leaves the yaw free
        x = np.linalg.solve(A, J.T @ (w * r))
        c, s = np.cos(x[0]), np.sin(x[0])
        ux = np.array([[0, -up[2], up[1]], [up[2], 0, -up[0]], [-up[1], up[0], 0]])
        R = np.eye(3) + s * ux + (1 - c) * ux @ ux  # Rodrigues: rotation by x[0] about up
        step = np.eye(4)
        step[:3, :3] = R
        step[:3, 3] = T[:3, 3] - R @ T[:3, 3] + x[1:]
        T = step @ T
        if abs(x[0]) < 1e-6 and np.linalg.norm(x[1:]) < 1e-6:
            break
    return T
