"""Reference images by Open3D ray casting (``open3d.t.geometry.RaycastingScene``), in the renderer's convention.

Used by the renderer's tests and by ``selfpose bench render``. One ray per pixel centre (u, v) (integer
coordinates), direction ``R^T K^-1 (u, v, 1)`` from the camera centre ``-R^T t`` in the object frame, so the hit
distance is the depth along the optical axis.
"""
from __future__ import annotations

import numpy as np

from selfpose_core.errors import ShapeError


class Open3DRaycaster:
    """Ray-cast one mesh (``vertices`` (V, 3), ``faces`` (F, 3), object frame, metres) into pinhole views."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        import open3d as o3d

        vertices = np.asarray(vertices, dtype=np.float32)
        faces = np.asarray(faces, dtype=np.uint32)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
            raise ShapeError(f"vertices must be (V, 3) and faces (F, 3), got {vertices.shape} and {faces.shape}")
        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(vertices), o3d.core.Tensor(faces))
        self._pix: dict[tuple[int, int], np.ndarray] = {}

    def rays(self, R: np.ndarray, t: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(B, H, W, 6) float32 rays (origin, direction) in the object frame for ``R`` (B, 3, 3), ``t`` (B, 3),
        ``K`` (B, 3, 3)."""
        H, W = size
        if (H, W) not in self._pix:
            v, u = np.mgrid[0:H, 0:W]
            self._pix[(H, W)] = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3).astype(np.float64)
        pix = self._pix[(H, W)]
        R, t, K = np.asarray(R, np.float64), np.asarray(t, np.float64), np.asarray(K, np.float64)
        M = np.swapaxes(R, -1, -2) @ np.linalg.inv(K)  # (B, 3, 3): R^T K^-1
        dirs = pix[None] @ np.swapaxes(M, -1, -2)
        origin = -(np.swapaxes(R, -1, -2) @ t[..., None])[..., 0]
        rays = np.empty((len(R), H * W, 6), dtype=np.float32)
        rays[..., :3] = origin[:, None, :]
        rays[..., 3:] = dirs
        return rays.reshape(len(R), H, W, 6)

    def cast(self, rays, nthreads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cast rays (B, H, W, 6) (numpy or an ``open3d.core.Tensor``) on ``nthreads`` threads (0 = all) ->
        mask (B, H, W) bool, depth (B, H, W) (0 = miss), object coordinates (B, H, W, 3) (0 = miss), face ids
        (B, H, W) int64 (-1 = miss)."""
        rays_t = rays if isinstance(rays, self._o3d.core.Tensor) else self._o3d.core.Tensor(rays)
        ans = self.scene.cast_rays(rays_t, nthreads=nthreads)
        rays = rays_t.numpy()
        t_hit = ans["t_hit"].numpy()
        mask = np.isfinite(t_hit)
        depth = np.where(mask, t_hit, 0.0).astype(np.float32)
        coords = np.where(mask[..., None], rays[..., :3] + depth[..., None] * rays[..., 3:], 0.0)
        ids = ans["primitive_ids"].numpy().astype(np.int64)
        return mask, depth, coords.astype(np.float32), np.where(mask, ids, -1)

    def render(self, R: np.ndarray, t: np.ndarray, K: np.ndarray,
               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rays for the views, then :meth:`cast`."""
        return self.cast(self.rays(R, t, K, size))
