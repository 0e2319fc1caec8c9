"""Depth-based pose refinement: point-to-point ICP of the masked depth points onto the object model (Umeyama steps).

Scene points (the object's masked, valid depth pixels back-projected) are matched to their nearest model surface
point in the object frame, so a partial view aligns to the full model; pairs farther than a shrinking gate are
rejected. Reference: Besl & McKay, "A Method for Registration of 3-D Shapes", TPAMI 1992.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.geometry.umeyama import umeyama
from selfpose_core.mesh.measures import sample_surface
from selfpose_core.types import ObjectModel


@dataclass(slots=True)
class DepthRefineConfig:
    iterations: int = 15
    max_points: int = 1500
    start_gate: float = 0.3  # initial inlier distance, fraction of the object diameter
    end_gate: float = 0.03
    min_points: int = 30
    min_fitness: float = 0.3  # fraction of scene points within end_gate at the end, else keep the RGB pose


class DepthRefiner:
    """Refine T_cam_obj of one object with a depth image; built once per object (KD-tree of its surface)."""

    def __init__(self, model: ObjectModel, config: DepthRefineConfig | None = None) -> None:
        self.config = config or DepthRefineConfig()
        self.diameter = float(model.diameter)
        self.tree = cKDTree(sample_surface(model.vertices, model.faces, 4000, np.random.default_rng(0))[0])

    def refine(self, T_cam_obj: np.ndarray, depth: np.ndarray, K: np.ndarray,
               mask: np.ndarray) -> tuple[np.ndarray, float]:
        """(refined T (4, 4), fitness in [0, 1]) from ``depth`` (H, W) metres inside ``mask`` (H, W) bool.

        Returns the input pose and fitness 0 when there are too few valid points or the fit is poor.
        """
        c = self.config
        ys, xs = np.nonzero(mask & np.isfinite(depth) & (depth > 0))
        if len(xs) < c.min_points:
            return T_cam_obj, 0.0
        if len(xs) > c.max_points:
            # a fixed draw per call: the same frame refines alike whatever was refined before
            keep = np.random.default_rng(0).choice(len(xs), c.max_points, replace=False)
            ys, xs = ys[keep], xs[keep]
        z = depth[ys, xs].astype(np.float64)
        P = np.stack([(xs - K[0, 2]) * z / K[0, 0], (ys - K[1, 2]) * z / K[1, 1], z], -1)
        # discard depth far from the predicted object (background seen through the mask)
        near = np.abs(z - T_cam_obj[2, 3]) < self.diameter
        if near.sum() < c.min_points:
            return T_cam_obj, 0.0
        P = P[near]
        T = T_cam_obj.copy()
        for i in range(c.iterations):
            gate = self.diameter * (c.start_gate + (c.end_gate - c.start_gate) * i / max(1, c.iterations - 1))
            P_obj = (P - T[:3, 3]) @ T[:3, :3]  # scene points in the object frame
            d, idx = self.tree.query(P_obj)
            ok = d < gate
            if ok.sum() < c.min_points:
                return T_cam_obj, 0.0
            s, R, t = umeyama(self.tree.data[idx[ok]], P[ok], with_scale=False)
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, t
        d, _ = self.tree.query((P - T[:3, 3]) @ T[:3, :3])
        fitness = float(np.mean(d < self.diameter * c.end_gate))
        if fitness < c.min_fitness:
            return T_cam_obj, fitness
        return T, fitness
