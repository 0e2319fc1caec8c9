"""Odometry drift corrected from the recording's depth: a pose graph of pairwise depth registrations.

Wheel odometry drifts (centimetres over a loop around a table), and a world pose averaged over the loop inherits
half of it; every per-frame pseudo label inherits all of it. With depth the drift is observable: the table, the
objects and the room are rigid. :func:`track_depth` builds each frame's cloud (every ``stride``-th depth pixel up to
``max_depth``, voxel ``voxel``, normals facing the camera), registers every pair of frames whose optical axes are
within ``max_angle_deg`` and whose cameras are within ``max_baseline`` (Tukey-robust point-to-plane ICP from the
recorded relative pose, coarse to fine over three scales, Open3D; pairs that register weakly or implausibly far
from the odometry are left out), and optimises the camera poses of a pose graph whose edges are those registrations
(Open3D ``global_optimization``, Levenberg-Marquardt, inconsistent edges pruned), with the odometry between
consecutive frames as weak edges that keep the graph connected where the depth registers nothing. Pairs across the
loop's closure tie its end to its start. The first frame fixes the gauge: its correction is the identity, so the
world frame stays the odometry frame at the start. Frame-to-model tracking, simpler, accumulates drift of its own:
pairs across the closure are what tie the loop together (``selfpose bench adapt`` prints the camera error left).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from selfpose_core.estimate.tabletop import depth_points
from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import invert, rotation_angle
from selfpose_core.types import CameraIntrinsics

log = logging.getLogger(__name__)

SCALES = (4, 2, 1)  # multiples of the voxel, correspondence distance and robust scale, coarse to fine
ODOMETRY_INFORMATION = 1.0  # weight of an odometry edge; a depth registration's is about its point count


@dataclass(slots=True)
class DepthOdometryConfig:
    """``multiview_consensus.depth_odometry`` in config/adapt.yaml."""

    stride: int = 4  # every stride-th depth pixel
    max_depth: float = 1.5  # metres: the table and what is on it (far depth is noisier)
    voxel: float = 0.005  # metres, cloud resolution
    min_points: int = 2000  # frames with fewer points (after the voxel grid) are not registered: too little to hold
    max_angle_deg: float = 20.0  # frames are paired when their optical axes are this close ...
    max_baseline: float = 0.5  # ... and their cameras this close (metres)
    max_distance: float = 0.03  # metres, ICP correspondence distance at the finest of three scales (x4, x2, x1)
    robust_scale: float = 0.01  # metres, Tukey kernel of the point-to-plane residual (finest scale)
    edge_jump: float = 0.02  # metres: pixels next to a depth step larger than this are left out (mixed pixels)
    iterations: int = 30
    min_fitness: float = 0.3  # pairs with fewer corresponding points (share of the source) are not edges ...
    max_disagreement: float = 0.1  # ... nor pairs whose registration moves a camera this far from the odometry (m)
    max_disagreement_deg: float = 5.0  # ... or turns it this much (degrees)
    max_correction: float = 0.25  # metres: a larger correction of any camera means the graph failed -> odometry

    def validate(self, where: str = "depth_odometry") -> None:
        require_at_least(self, ("stride", "iterations", "min_points"), 1, where)
        for key in ("max_depth", "voxel", "max_angle_deg", "max_baseline", "max_distance", "robust_scale", "edge_jump",
                    "max_disagreement", "max_disagreement_deg", "max_correction"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.min_fitness <= 1:
            raise ConfigError(f"{where}.min_fitness must be in [0, 1], got {self.min_fitness}")


@dataclass(slots=True)
class DepthOdometry:
    """Result of :func:`track_depth`."""

    corrections: np.ndarray  # (F_all, 4, 4) T_world_world' to left-multiply the recorded camera poses
    edges: int  # pairwise registrations in the pose graph
    weak_pairs: int  # candidate pairs left out (fitness below min_fitness, or too far from the odometry)
    failed: bool = False  # the optimised graph moved a camera beyond max_correction: corrections are the identity


def without_edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """``depth`` with 0 (invalid) at the pixels whose depth differs from a 4-neighbour's by more than ``jump``:
    sensors mix foreground and background there, and such points bias a registration."""
    d = np.nan_to_num(depth.astype(np.float32), nan=0.0)
    step = np.zeros(d.shape, bool)
    dy = np.abs(np.diff(d, axis=0)) > jump
    dx = np.abs(np.diff(d, axis=1)) > jump
    step[1:] |= dy
    step[:-1] |= dy
    step[:, 1:] |= dx
    step[:, :-1] |= dx
    return np.where(step, 0.0, d)


def track_depth(depth_of: Callable[[int], np.ndarray | None], frames: Sequence[int], T_world_cam: np.ndarray,
                intrinsics_of: Callable[[int], CameraIntrinsics], cfg: DepthOdometryConfig,
                progress: Callable[[int, int], None] | None = None) -> DepthOdometry:
    """Per-frame corrections of the recorded poses ``T_world_cam`` (F_all, 4, 4) from the depth of ``frames``
    (module docstring). Frames not in ``frames``, or without enough depth (``min_points``), keep the correction of
    the frame before them. ``progress(done, total)`` is called after each pairwise registration."""
    import open3d as o3d

    reg = o3d.pipelines.registration
    cfg.validate()
    n = len(T_world_cam)
    clouds: dict[int, list] = {}  # per frame, coarsest scale first
    for i in sorted(int(f) for f in frames):
        depth = depth_of(i)
        pts = depth_points(without_edges(depth, cfg.edge_jump), intrinsics_of(i).K, cfg.stride, cfg.max_depth) \
            if depth is not None else None
        if pts is None or len(pts) < cfg.min_points:
            continue
        full = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        levels = [full.voxel_down_sample(cfg.voxel * scale) for scale in SCALES]
        if len(levels[-1].points) < cfg.min_points:
            continue
        for scale, cloud in zip(SCALES, levels):
            cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * cfg.voxel * scale, max_nn=20))
            cloud.orient_normals_towards_camera_location(np.zeros(3))
        clouds[i] = levels
    ids = list(clouds)
    corrections = np.tile(np.eye(4), (n, 1, 1))
    if len(ids) < 2:
        return DepthOdometry(corrections, 0, 0)
    T = T_world_cam[ids]
    axes = T[:, :3, 2]
    close = (axes @ axes.T >= np.cos(np.radians(cfg.max_angle_deg))) & \
        (np.linalg.norm(T[:, None, :3, 3] - T[None, :, :3, 3], axis=-1) <= cfg.max_baseline)
    pairs = [(a, b) for a in range(len(ids)) for b in range(a + 1, len(ids)) if close[a, b]]
    graph = reg.PoseGraph()
    for pose in T:
        graph.nodes.append(reg.PoseGraphNode(pose))
    for a in range(len(ids) - 1):  # the odometry itself, weakly: keeps the graph connected where depth fails
        graph.edges.append(reg.PoseGraphEdge(a, a + 1, invert(T[a + 1]) @ T[a], ODOMETRY_INFORMATION * np.eye(6),
                                             uncertain=False))
    criteria = reg.ICPConvergenceCriteria(max_iteration=cfg.iterations)
    weak = 0
    for done, (a, b) in enumerate(pairs):
        odometry = invert(T[b]) @ T[a]
        guess = odometry
        for level, scale in enumerate(SCALES):  # coarse to fine: the loop's closure may be centimetres off
            estimation = reg.TransformationEstimationPointToPlane(reg.TukeyLoss(k=cfg.robust_scale * scale))
            res = reg.registration_icp(clouds[ids[a]][level], clouds[ids[b]][level], cfg.max_distance * scale, guess,
                                       estimation, criteria)
            guess = np.asarray(res.transformation)
        src, dst = clouds[ids[a]][-1], clouds[ids[b]][-1]
        change = guess @ invert(odometry)
        if res.fitness < cfg.min_fitness or np.linalg.norm(change[:3, 3]) > cfg.max_disagreement or \
                rotation_angle(change[:3, :3], np.eye(3)) > np.radians(cfg.max_disagreement_deg):
            weak += 1
        else:
            info = reg.get_information_matrix_from_point_clouds(src, dst, cfg.robust_scale, guess)
            graph.edges.append(reg.PoseGraphEdge(a, b, guess, info, uncertain=b != a + 1))
        if progress is not None:
            progress(done + 1, len(pairs))
    option = reg.GlobalOptimizationOption(max_correspondence_distance=cfg.robust_scale, edge_prune_threshold=0.25,
                                          reference_node=0)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(graph, reg.GlobalOptimizationLevenbergMarquardt(),
                                reg.GlobalOptimizationConvergenceCriteria(), option)
    optimised = np.stack([np.asarray(node.pose) for node in graph.nodes])
    gauge = T[0] @ invert(optimised[0])  # the first frame keeps its recorded pose
    for k, i in enumerate(ids):
        end = ids[k + 1] if k + 1 < len(ids) else n
        corrections[i:end] = gauge @ optimised[k] @ invert(T[k])
    if weak:
        log.info("depth odometry: %d of %d frame pairs registered too weakly to be used", weak, len(pairs))
    edges = len(graph.edges) - (len(ids) - 1)
    moved = float(np.linalg.norm((corrections @ T_world_cam)[:, :3, 3] - T_world_cam[:, :3, 3], axis=1).max())
    if moved > cfg.max_correction:
        log.warning("depth odometry: the pose graph moved a camera by %.2f m (more than max_correction %.2f m); the "
                    "depth does not register reliably (too few points or too little structure?), so the recorded "
                    "odometry is kept", moved, cfg.max_correction)
        return DepthOdometry(np.tile(np.eye(4), (n, 1, 1)), edges, weak, failed=True)
    return DepthOdometry(corrections, edges, weak)
