"""World poses of the objects from the recording's depth alone: fuse, find the objects on the table, register CAD.

A robot that drove around a table once has, besides images, depth and its own camera poses. Fused in the world
frame they give the table and what stands on it, whatever the pre-trained estimator sees:

1. :func:`fuse_depth`: every frame's depth (every ``stride``-th pixel) back-projected through the recorded camera
   pose, voxel-downsampled (Open3D). Odometry drift blurs the cloud by its size (a few cm over a loop).
2. :func:`tabletop_clusters`: the point the cameras look at (``optical_axes_center``), the dominant
   horizontal plane near it (RANSAC, :func:`~selfpose_core.estimate.tabletop.ransac_plane`), the points above it, Euclidean clusters (DBSCAN).
3. :func:`register_model`: each CAD model against each cluster: resting hypotheses (each of the mesh's stable
   resting poses on the table, upright first, as the estimator's search uses them (``estimate/hypotheses.py``);
   yaw every 30 deg; objects.yaml meshes are z up) and, with ``upright: false``, a FPFH-RANSAC
   global registration (any orientation), each refined by ICP (upright: over translation and yaw only,
   :func:`upright_icp`; otherwise Open3D's point-to-plane ICP); a hypothesis scores the F-score of "cluster points
   within ``tau`` of the model" and "model points the cameras could see (not on the table, not facing down) within
   ``tau`` of the cluster", where model points inside the table count as unexplained.
4. :func:`register_objects`: the objects x clusters F-scores, assigned greedily by decreasing F-score, each
   object once, a cluster possibly to several objects (touching objects fuse into one cluster; hypotheses are
   also centred on the parts of a cluster wider than the object, ``estimate.hypotheses.footprint_parts``) as long
   as each explains points the others do not; pairs below ``min_fscore`` stay unassigned (clutter, objects not
   in view).

Used by the ``multiview_consensus`` stage for objects the per-frame estimates do not agree on
(``scene_registration`` in its config). Poses are defined up to the object's symmetries like any other.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.hypotheses import footprint_parts, resting_rotations, tabletop_hypotheses
from selfpose_core.estimate.tabletop import (depth_points, euclidean_clusters, o3d_module, support_plane,
                                              upright_icp)
from selfpose_core.geometry.projection import optical_axes_center
from selfpose_core.mesh.measures import sample_surface
from selfpose_core.types import CameraIntrinsics, ObjectModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RegistrationConfig:
    """Parameters of the depth-based registration (``multiview_consensus.registration`` in config/adapt.yaml)."""

    stride: int = 4  # use every stride-th pixel of each depth image
    max_depth: float = 2.5  # metres; farther depth is ignored
    voxel: float = 0.004  # metres, fused cloud resolution
    registration_voxel: float = 0.006  # metres, cluster resolution for the registration
    table_radius: float = 0.8  # metres around the looked-at point considered for the table and objects
    plane_distance: float = 0.008  # RANSAC inlier distance of the table plane
    min_height: float = 0.008  # object points lie at least this far above the plane ...
    max_height: float = 0.6  # ... and at most this far
    cluster_eps: float = 0.01  # DBSCAN neighbourhood (metres)
    min_cluster_points: int = 60
    tau: float = 0.01  # metres: a point is explained within this distance
    yaw_steps: int = 12  # hypotheses per resting pose and cluster
    resting_poses: int = 4  # the mesh's distinct stable resting poses tried (upright first; 1 = upright only)
    upright: bool = True  # objects rest on the table (in one of their resting poses): 4-DOF hypotheses and ICP
    icp_iterations: int = 20
    min_fscore: float = 0.5  # weaker matches are not assigned

    def validate(self, where: str = "registration") -> None:
        require_at_least(self, ("stride", "min_cluster_points", "yaw_steps", "resting_poses", "icp_iterations"), 1,
                         where)
        for key in ("max_depth", "voxel", "registration_voxel", "table_radius", "plane_distance", "max_height",
                    "cluster_eps", "tau"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        if not 0 <= self.min_height < self.max_height or not 0 <= self.min_fscore <= 1:
            raise ConfigError(f"{where}: need 0 <= min_height < max_height and min_fscore in [0, 1], got "
                              f"{self.min_height}, {self.max_height}, {self.min_fscore}")


@dataclass(slots=True)
class RegisteredObject:
    """An object found in the fused cloud: world pose, F-score of the fit and the cluster it was matched to."""

    T_world_obj: np.ndarray  # (4, 4)
    fscore: float
    cluster: int
    cluster_points: int


def fuse_depth(depth_of: Callable[[int], np.ndarray | None], frames: Sequence[int], T_world_cam: np.ndarray,
               intrinsics_of: Callable[[int], CameraIntrinsics], cfg: RegistrationConfig) -> np.ndarray:
    """(N, 3) world points: the depth of ``frames`` back-projected through the poses ``T_world_cam`` (F_all, 4, 4),
    voxel-downsampled. Invalid depth (0, NaN, beyond ``cfg.max_depth``) is skipped."""
    o3d = o3d_module()
    chunks = []
    for i in frames:
        depth = depth_of(int(i))
        if depth is None:
            continue
        pts = depth_points(depth, intrinsics_of(int(i)).K, cfg.stride, cfg.max_depth)
        T = T_world_cam[int(i)]
        chunks.append(pts @ T[:3, :3].T + T[:3, 3])
    if not chunks:
        return np.zeros((0, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate(chunks)))
    return np.asarray(pcd.voxel_down_sample(cfg.voxel).points)


def tabletop_clusters(points: np.ndarray, centre: np.ndarray, cfg: RegistrationConfig, up: np.ndarray | None = None
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The table plane (4,) = (n, d) with n . x + d = 0, n pointing up, and the clusters of points above it.

    ``up``: the world's up direction (default +z, REP-103). Only points within ``cfg.table_radius`` (horizontally)
    of ``centre`` and from 0.3 m below it to ``cfg.max_height`` above it are used. Returns
    ``(plane, [cluster points (N_i, 3), ...])``, largest cluster first; the plane is NaN and the list empty when no
    horizontal plane is found.
    """
    up = np.array([0.0, 0.0, 1.0]) if up is None else np.asarray(up, np.float64) / np.linalg.norm(up)
    rel = points - centre
    horiz = rel - np.outer(rel @ up, up)
    rise = rel @ up
    # the cameras look at the table top: the floor (about a table height below) is left out
    near = points[(np.linalg.norm(horiz, axis=1) < cfg.table_radius) & (rise > -0.3) & (rise < cfg.max_height)]
    # the dominant plane may be a wall or the floor: take the first horizontal one
    plane = support_plane(near, up, cfg.plane_distance, 3 * cfg.min_cluster_points)
    if not np.isfinite(plane).all():
        return plane, []
    height = near @ plane[:3] + plane[3]
    above = near[(height > cfg.min_height) & (height < cfg.max_height)]
    return plane, [above[i] for i in euclidean_clusters(above, cfg.cluster_eps, cfg.min_cluster_points)]


def _fscore(T: np.ndarray, model_pts: np.ndarray, model_nrm: np.ndarray, cluster_tree: cKDTree, cluster: np.ndarray,
            plane: np.ndarray, tau: float) -> float:
    """F-score of the model at pose T against the cluster (see the module docstring); precision counts the
    cluster points inside the model's bounding sphere only (a cluster may hold touching objects)."""
    X = model_pts @ T[:3, :3].T + T[:3, 3]
    N = model_nrm @ T[:3, :3].T
    height = X @ plane[:3] + plane[3]
    seen = (height > tau) & (N @ plane[:3] > -0.5)
    below = int((height < -2 * tau).sum())  # inside the table: impossible, counted as unexplained
    if not seen.any():
        return 0.0
    recall = float((cluster_tree.query(X[seen], distance_upper_bound=tau)[0] < tau).sum()) / (seen.sum() + below)
    centre = X.mean(0)
    near = cluster[np.linalg.norm(cluster - centre, axis=1) < np.linalg.norm(X - centre, axis=1).max() + tau]
    if not len(near):
        return 0.0
    precision = float((cKDTree(X).query(near, distance_upper_bound=tau)[0] < tau).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _any_orientation(pts: np.ndarray, nrm: np.ndarray, cluster: np.ndarray, hyps: list[np.ndarray],
                     cfg: RegistrationConfig) -> list[np.ndarray]:
    """``hyps`` plus a FPFH-RANSAC global registration, each refined by Open3D point-to-plane ICP (any orientation)."""
    o3d = o3d_module()
    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    src.normals = o3d.utility.Vector3dVector(nrm)
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cluster))
    tgt.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * cfg.cluster_eps, max_nn=30))
    tgt.orient_normals_towards_camera_location(cluster.mean(0))  # inwards ...
    tgt.normals = o3d.utility.Vector3dVector(-np.asarray(tgt.normals))  # ... flipped outwards, as the model's
    search = o3d.geometry.KDTreeSearchParamHybrid(radius=5 * cfg.registration_voxel, max_nn=100)
    glob = reg.registration_ransac_based_on_feature_matching(
        src, tgt, reg.compute_fpfh_feature(src, search), reg.compute_fpfh_feature(tgt, search), True, 3 * cfg.tau,
        reg.TransformationEstimationPointToPoint(False), 3, [reg.CorrespondenceCheckerBasedOnDistance(3 * cfg.tau)],
        reg.RANSACConvergenceCriteria(20000, 0.999))
    out = []
    for T in hyps + [np.asarray(glob.transformation)]:
        for dist in (4 * cfg.tau, 2 * cfg.tau, cfg.tau):  # coarse-to-fine ICP gates
            T = np.asarray(reg.registration_icp(src, tgt, dist, T, reg.TransformationEstimationPointToPlane(),
                                                reg.ICPConvergenceCriteria(max_iteration=cfg.icp_iterations)
                                                ).transformation)
        out.append(T)
    return out


def register_model(model: ObjectModel, cluster: np.ndarray, plane: np.ndarray, cfg: RegistrationConfig,
                   seed: int = 0, rests: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Best pose (4, 4) of ``model`` on the world-frame ``cluster`` (N, 3) standing on ``plane`` and its F-score;
    ``rests`` (P, 3, 3): the model's resting rotations (default: :func:`resting_rotations`)."""
    o3d = o3d_module()
    pts, nrm = sample_surface(model.vertices, model.faces, 1500, np.random.default_rng(seed))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cluster))
    cluster = np.asarray(pcd.voxel_down_sample(cfg.registration_voxel).points)
    # resting hypotheses: each stable resting pose of the mesh (upright first) on the plane, every yaw
    up = plane[:3]
    rests = resting_rotations(model, cfg.resting_poses) if rests is None else rests
    hyps = [T for part in footprint_parts(cluster, plane, model.diameter)
            for T in tabletop_hypotheses(pts, rests, part, plane, cfg.yaw_steps, push_back=0.0)]
    if cfg.upright:
        poses = upright_icp(pts, cluster, np.stack(hyps), up, (4 * cfg.tau, 2 * cfg.tau, cfg.tau),
                            cfg.icp_iterations)
        # resting: the lowest point on the table (ICP leaves the height free; a touching object can lift it)
        lowest = (np.einsum("hij,mj->hmi", poses[:, :3, :3], pts) + poses[:, None, :3, 3]) @ up
        poses[:, :3, 3] -= (lowest.min(1) + plane[3])[:, None] * up
        poses = list(poses)
    else:
        poses = _any_orientation(pts, nrm, cluster, hyps, cfg)
    tree = cKDTree(cluster)
    scores = [_fscore(T, pts, nrm, tree, cluster, plane, cfg.tau) for T in poses]
    k = int(np.argmax(scores))
    return poses[k], float(scores[k])


def register_objects(objects: Sequence[ObjectModel], points: np.ndarray, T_world_cam: np.ndarray,
                     cfg: RegistrationConfig) -> dict[int, RegisteredObject]:
    """Objects found in the fused world cloud ``points`` (N, 3): {object index: RegisteredObject}."""
    plane, clusters = tabletop_clusters(points, optical_axes_center(T_world_cam), cfg)
    if not clusters:
        log.warning("scene registration: no table plane or no objects on it in the fused depth (%d points)",
                    len(points))
        return {}
    F = np.zeros((len(objects), len(clusters)))
    poses = np.zeros((len(objects), len(clusters), 4, 4))
    rests = [resting_rotations(m, cfg.resting_poses) for m in objects]
    for k, m in enumerate(objects):
        v = np.asarray(m.vertices, np.float64)
        lowest = min(np.ptp(v @ R[2]) for R in rests[k])
        for c, cl in enumerate(clusters):
            if np.ptp(cl, axis=0).max() < 0.2 * m.diameter:  # far too small (larger: touching objects)
                continue
            if cfg.upright and float((cl @ plane[:3] + plane[3]).max()) < 0.3 * lowest - 0.03:
                continue  # far too flat for the object in any resting pose
            poses[k, c], F[k, c] = register_model(m, cl, plane, cfg, seed=k, rests=rests[k])
    log.debug("scene registration F-scores (objects x clusters):\n%s", np.array2string(F, precision=2))
    return _assign(objects, clusters, F, poses, cfg)


def _assign(objects: Sequence[ObjectModel], clusters: list[np.ndarray], F: np.ndarray, poses: np.ndarray,
            cfg: RegistrationConfig) -> dict[int, RegisteredObject]:
    """Objects to clusters by decreasing F-score, each object once; a cluster takes further objects (touching
    objects fuse into one cluster) as long as each explains points that the objects before it left unexplained
    (at most half of its points within ``tau`` of an earlier object's)."""
    explained = [np.zeros(len(cl), bool) for cl in clusters]
    trees = [cKDTree(cl) for cl in clusters]
    found = {}
    for flat in np.argsort(-F, axis=None, kind="stable"):
        k, c = np.unravel_index(flat, F.shape)
        if F[k, c] < cfg.min_fscore:
            break
        if k in found:
            continue
        X = sample_surface(objects[k].vertices, objects[k].faces, 1500, np.random.default_rng(0))[0]
        X = X @ poses[k, c, :3, :3].T + poses[k, c, :3, 3]
        mine = np.zeros(len(clusters[c]), bool)
        for idx in trees[c].query_ball_point(X, cfg.tau):
            mine[idx] = True
        if not mine.any() or (mine & explained[c]).sum() > 0.5 * mine.sum():
            continue
        explained[c] |= mine
        log.info("scene registration: %s -> cluster %d (%d points), F-score %.2f", objects[k].name, c,
                 len(clusters[c]), F[k, c])
        found[int(k)] = RegisteredObject(poses[k, c], float(F[k, c]), int(c), len(clusters[c]))
    return found
