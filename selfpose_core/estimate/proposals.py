"""Object proposals from one depth image: the support plane and the clusters of points standing on it.

The depth of a table-top view holds, besides the table, everything that stands on it. Every ``stride``-th pixel
is back-projected; the support plane is the highest RANSAC plane facing ``up`` (the world's up direction in the
camera frame, from TF; without it the image's up, -y, with a wide tolerance); points between ``min_height`` and
``max_height`` above it are clustered (DBSCAN; the neighbourhood grows with the pixel footprint at the cluster's
distance). Each cluster is a proposal: its camera-frame points, its pixels, its box and a mask on the
``stride`` grid. Clutter and objects of the model alike become proposals: telling them apart is the caller's job.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.tabletop import depth_points, euclidean_clusters, support_plane, without_flying_pixels


@dataclass(slots=True)
class ProposalConfig:
    stride: int = 2  # pixel step of the depth grid
    max_depth: float = 3.0  # metres; farther depth is ignored
    plane_distance: float = 0.01  # RANSAC inlier distance of the support plane (metres)
    min_plane_fraction: float = 0.1  # a support plane holds at least this share of the valid points ...
    min_plane_extent: float = 0.3  # ... spread over at least this many metres (a table, not an object's face)
    min_height: float = 0.008  # object points lie at least this far above the plane ...
    max_height: float = 0.5  # ... and at most this far (metres)
    cluster_eps: float = 0.012  # DBSCAN neighbourhood at least (metres) ...
    eps_pixels: float = 2.5  # ... and at least this many grid steps at the cluster's distance
    min_points: int = 30  # smaller clusters are noise
    max_fit_points: int = 8000  # RANSAC and DBSCAN run on at most this many points (evenly spread)
    max_extent: float = 0.6  # metres: a larger cluster is furniture, not an object
    edge_support: int = 3  # a pixel needs this many of its 8 neighbours on its surface (0 = keep every pixel) ...
    edge_tolerance: float = 0.02  # ... within this fraction of its depth (flying pixels at depth edges dropped)

    def validate(self, where: str = "proposals") -> ProposalConfig:
        require_at_least(self, ("stride", "min_points", "max_fit_points"), 1, where)
        if not 0 <= self.edge_support <= 8 or not self.edge_tolerance > 0:
            raise ConfigError(f"{where}: need edge_support in [0, 8] and edge_tolerance > 0, got "
                              f"{self.edge_support}, {self.edge_tolerance}")
        for key in ("max_depth", "plane_distance", "max_height", "cluster_eps", "eps_pixels", "max_extent",
                    "min_plane_extent"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.min_height < self.max_height or not 0 < self.min_plane_fraction < 1:
            raise ConfigError(f"{where}: need 0 <= min_height < max_height and min_plane_fraction in (0, 1), got "
                              f"{self.min_height}, {self.max_height}, {self.min_plane_fraction}")
        return self


@dataclass(slots=True)
class Proposal:
    """One cluster above the support plane."""

    points: np.ndarray  # (N, 3) camera frame, metres
    pixels: np.ndarray  # (N, 2) full-resolution (row, column) of the points
    box: np.ndarray  # (4,) x0, y0, x1, y1 in pixels (edges), full resolution

    def mask(self, shape: tuple[int, int], stride: int) -> np.ndarray:
        """(ceil(H / stride), ceil(W / stride)) bool mask of the proposal on the ``stride`` grid of an
        image of ``shape`` (H, W)."""
        h, w = -(-shape[0] // stride), -(-shape[1] // stride)
        m = np.zeros((h, w), bool)
        m[self.pixels[:, 0] // stride, self.pixels[:, 1] // stride] = True
        return m


def camera_up(T_world_cam: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The world's up direction (+z, REP-103) in the camera frame and the tolerance (cosine) on the support plane's
    normal: tight with a camera pose, wide around the image's up (-y) without one."""
    if T_world_cam is None:
        return np.array([0.0, -1.0, 0.0]), 0.4
    return np.asarray(T_world_cam, np.float64)[2, :3].copy(), 0.95


def find_proposals(depth: np.ndarray, K: np.ndarray, cfg: ProposalConfig, *,
                   T_world_cam: np.ndarray | None = None, grid: np.ndarray | None = None
                   ) -> tuple[np.ndarray, list[Proposal]]:
    """(support plane (4,) in the camera frame, NaN when none; proposals, largest first) of ``depth`` (H, W)
    metres with intrinsics ``K`` (3, 3); its flying pixels are left out (``edge_support``, ``edge_tolerance``).
    ``grid``: that filtered depth on the ``stride`` grid when the caller has it already."""
    if grid is None:
        grid = without_flying_pixels(depth, cfg.edge_tolerance, cfg.edge_support, cfg.stride)
    pts, pix = depth_points(grid, K, cfg.stride, cfg.max_depth, return_pixels=True, sampled=True)
    up, min_cos = camera_up(T_world_cam)
    min_support = max(3 * cfg.min_points, int(cfg.min_plane_fraction * len(pts)))
    plane = support_plane(pts, up, cfg.plane_distance, min_support, min_cos=min_cos, tries=4, pick="highest",
                          max_points=cfg.max_fit_points, min_extent=cfg.min_plane_extent)
    if not np.isfinite(plane).all():
        return plane, []
    height = pts @ plane[:3] + plane[3]
    sel = (height > cfg.min_height) & (height < cfg.max_height)
    return plane, cluster_proposals(pts[sel], pix[sel], K, depth.shape, cfg)


def cluster_proposals(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, shape: tuple[int, int],
                      cfg: ProposalConfig) -> list[Proposal]:
    """Proposals, largest first, from the Euclidean clusters of ``points`` (N, 3) (camera frame, seen at the
    full-resolution (row, column) ``pixels`` (N, 2) of an image of ``shape`` (H, W) through ``K``); clusters
    larger than ``max_extent`` are left out."""
    if len(points) < cfg.min_points:
        return []
    footprint = cfg.eps_pixels * cfg.stride * float(np.median(points[:, 2])) / float(K[0, 0])
    out = []
    H, W = shape
    for idx in euclidean_clusters(points, max(cfg.cluster_eps, footprint), cfg.min_points, cfg.max_fit_points // 4):
        p, px = points[idx], pixels[idx]
        if np.ptp(p, axis=0).max() > cfg.max_extent:
            continue
        box = np.array([px[:, 1].min(), px[:, 0].min(), min(W, px[:, 1].max() + cfg.stride),
                        min(H, px[:, 0].max() + cfg.stride)], np.float64)
        out.append(Proposal(p, px, box))
    return out
