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

from selfpose_core.estimate.verification import render_window
from selfpose_core.geometry.projection import unproject
from selfpose_core.geometry.se3 import make_T, so3_exp
from selfpose_core.render.mesh import RenderMesh


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
    obs = np.nan_to_num(np.asarray(depth[y0:y1, x0:x1], np.float64), nan=0.0)
    v, u = np.mgrid[y0:y1, x0:x1]
    uv = np.stack([u, v], -1).reshape(-1, 2).astype(np.float64)
    rays = unproject(K, uv, np.ones(len(uv))).reshape(y1 - y0, x1 - x0, 3)  # pixel rays at depth 1
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    T = np.array(T_cam_obj, np.float64, copy=True)
    for _ in range(iterations):
        rendered, faces = render_window(mesh, T[None], K, window)
        rd, fid = rendered[0], faces[0]
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
        step = make_T(so3_exp(x[0] * up), np.zeros(3))
        step[:3, 3] = T[:3, 3] - step[:3, :3] @ T[:3, 3] + x[1:]  # turn about the object's origin, then shift
        T = step @ T
        if abs(x[0]) < 1e-6 and np.linalg.norm(x[1:]) < 1e-6:
            break
    return T
