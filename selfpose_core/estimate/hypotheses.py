"""Pose hypotheses for an object standing on a support plane: its stable resting poses x yaws.

An object on a table rests on one of a few faces (its stable poses: Goldberg et al., "Part pose statistics",
ICRA 1999, as computed by trimesh's ``compute_stable_poses``); what is left free is the rotation about the plane's
normal and the position on the plane. :func:`resting_rotations` lists the distinct resting rotations of a mesh
(the upright one, objects.yaml's z up, always first); :func:`tabletop_hypotheses` places each, at every yaw, on a
proposal's footprint, pushed back from the camera by the part of the object the camera cannot see;
:func:`footprint_parts` splits a cluster wider than the object (touching objects, an object against clutter)
into parts that each centre hypotheses of their own.
"""
from __future__ import annotations

import numpy as np

from selfpose_core.estimate.tabletop import upright_basis
from selfpose_core.geometry.symmetry import symmetry_transforms
from selfpose_core.types import ObjectModel


def resting_rotations(model: ObjectModel, max_poses: int = 4, min_probability: float = 0.05,
                      min_angle_deg: float = 10.0) -> np.ndarray:
    """(P, 3, 3) rotations ``R_rest_obj`` (model frame -> a frame whose z is the support plane's normal) of the
    mesh's distinct stable poses, the upright one (identity) first, then by probability, at most ``max_poses``.

    Two stable poses are the same rest when they turn the same model direction up (within ``min_angle_deg``) up to
    the object's symmetries; a rest's probability is the sum over its stable poses. This matters for revolved
    objects: the hull of a can lying on its side has one stable facet per side of its polygon, each unlikely,
    while together they are the can's most likely rest."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(model.vertices, np.float64), np.asarray(model.faces, np.int64), process=False)
    try:
        transforms, probs = mesh.compute_stable_poses(threshold=0.0)
    except (ValueError, IndexError, np.linalg.LinAlgError):  # degenerate hull: only the upright pose
        transforms, probs = np.zeros((0, 4, 4)), np.zeros(0)
    syms = symmetry_transforms(model.symmetry, n_continuous=36)[:, :3, :3]
    cos_min = np.cos(np.radians(min_angle_deg))
    rests, mass = [np.eye(3)], [0.0]
    for k in np.argsort(-np.asarray(probs), kind="stable"):
        R = np.asarray(transforms[k])[:3, :3]
        same = [i for i, r in enumerate(rests) if max(float(R[2] @ (S @ r[2])) for S in syms) >= cos_min]
        if same:
            mass[same[0]] += float(probs[k])
        else:
            rests.append(R)
            mass.append(float(probs[k]))
    order = [0] + [i for i in np.argsort(-np.asarray(mass[1:]), kind="stable") + 1 if mass[i] >= min_probability]
    return np.stack([rests[i] for i in order[:max_poses]])


def tabletop_hypotheses(model_points: np.ndarray, rests: np.ndarray, cluster: np.ndarray, plane: np.ndarray,
                        yaw_steps: int, push_back: float = 0.5) -> np.ndarray:
    """(P * yaw_steps, 4, 4) camera-frame poses ``T_cam_obj`` of the object (surface samples ``model_points``
    (M, 3)) resting on ``plane`` (4,) in each of ``rests`` (P, 3, 3) at ``yaw_steps`` yaws, centred on the
    footprint of ``cluster`` (N, 3, camera frame) moved away from the camera by ``push_back`` x the object's radius
    (one camera's cluster holds only the side facing it; 0 for a cloud fused from all around, in any frame)."""
    n = plane[:3]
    B = upright_basis(n)
    centre = cluster.mean(0)
    foot = centre - (centre @ n + plane[3]) * n
    away = foot - (foot @ n) * n  # horizontal direction from the camera (at the origin) to the object
    away /= max(np.linalg.norm(away), 1e-9)
    out = []
    for R_rest in rests:
        P = model_points @ R_rest.T
        c = np.array([P[:, 0].mean(), P[:, 1].mean(), P[:, 2].min()])
        radius = float(np.mean(np.linalg.norm(P[:, :2] - c[:2], axis=1)))
        pos = foot + push_back * radius * away
        for yaw in np.arange(yaw_steps) * 2 * np.pi / yaw_steps:
            cz, sz = np.cos(yaw), np.sin(yaw)
            Rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
            T = np.eye(4)
            T[:3, :3] = B @ Rz @ R_rest
            T[:3, 3] = pos - B @ Rz @ c
            out.append(T)
    return np.stack(out)


def footprint_parts(cluster: np.ndarray, plane: np.ndarray, width: float, max_parts: int = 6,
                    iterations: int = 5) -> list[np.ndarray]:
    """``cluster`` (N, 3) as it is and, when its extent along ``plane`` (4,) is wider than ``width`` (the object's
    diameter), also split into k = ceil(2 extent / width) parts (at most ``max_parts``: about one per object
    radius, so that one part's centre lies within ICP's reach of the object) by k-means on the plane (seeded by
    farthest points from the centroid: deterministic), each at least 10 points."""
    B = upright_basis(plane[:3])
    xy = cluster @ B[:, :2]
    extent = float(np.ptp(xy, axis=0).max()) if len(xy) else 0.0
    if extent <= width:
        return [cluster]
    k = min(max_parts, int(np.ceil(2 * extent / max(width, 1e-6))))
    if k < 2:
        return [cluster]
    seeds = [xy[np.argmax(((xy - xy.mean(0)) ** 2).sum(1))]]
    while len(seeds) < k:
        d = np.min([((xy - q) ** 2).sum(1) for q in seeds], axis=0)
        seeds.append(xy[np.argmax(d)])
    centres = np.stack(seeds)
    for _ in range(iterations):
        label = np.argmin(((xy[:, None] - centres[None]) ** 2).sum(-1), 1)
        centres = np.stack([xy[label == j].mean(0) if (label == j).any() else centres[j] for j in range(k)])
    return [cluster] + [cluster[label == j] for j in range(k) if (label == j).sum() >= 10]
