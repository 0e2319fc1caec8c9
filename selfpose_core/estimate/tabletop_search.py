"""Objects on a table from one RGB-D frame: proposals from depth, identity from appearance, poses by
hypothesise, refine and verify.

1. :func:`~selfpose_core.estimate.proposals.find_proposals`: the support plane and the clusters standing on it.
2. Candidates per proposal: objects whose size fits the cluster; with an appearance model (learned from the
   robot's drive) the ``candidates`` most similar in colour.
3. Per proposal and candidate: the mesh's resting poses x ``yaw_steps`` yaws on the footprint
   (:mod:`~selfpose_core.estimate.hypotheses`) plus any given hypotheses (e.g. the pose network's), refined by
   ICP over the plane's 4 degrees of freedom (:func:`~selfpose_core.estimate.tabletop.upright_icp`), ranked by
   the F-score of the fit to the cluster (visible model points vs cluster points), the best ``keep`` verified by
   render-and-compare (:mod:`~selfpose_core.estimate.verification`).
4. One-to-one assignment of proposals to objects (Hungarian) on ``fit x colour similarity``, times the
   agreement of the object's learned surface pattern at the found pose when the appearance model has one
   (:class:`~selfpose_core.models.surface_colours.SurfaceColours`); pairs whose ``fit x colour similarity`` is
   below ``min_confidence`` are dropped (clutter). That product is the estimate's confidence.

Deterministic: the same frame gives the same poses whatever was searched before.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.depth_align import align_resting, face_normals
from selfpose_core.estimate.hypotheses import footprint_parts, resting_rotations, tabletop_hypotheses
from selfpose_core.estimate.proposals import (Proposal, ProposalConfig, camera_up, cluster_proposals,
                                               find_proposals)
from selfpose_core.estimate.tabletop import VoxelNearest, upright_basis, upright_icp, without_flying_pixels
from selfpose_core.estimate.verification import VerifyConfig, render_window, verify_counts, verify_poses
from selfpose_core.geometry.projection import Z_MIN, project, unproject
from selfpose_core.geometry.se3 import make_T, so3_exp
from selfpose_core.mesh.measures import mesh_diameter, sample_surface
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.types import Frame, ObjectModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SearchConfig:
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    resting_poses: int = 4  # distinct stable poses per object (upright first)
    yaw_steps: int = 8  # yaws per resting pose
    model_points: int = 600  # surface samples per object for ICP and the F-score
    coarse_points: int = 150  # cluster points for the coarse ICP of every hypothesis (evenly subsampled) ...
    max_cluster_points: int = 500  # ... and for the F-score and the fine ICP of the best ones
    icp_tau: float = 0.01  # metres: final ICP gate and F-score distance
    icp_iterations: int = 8  # per gate (coarse: 3 tau, 1.5 tau; fine: tau)
    lookup_voxel: float = 0.003  # metres: voxel of the coarse ICP's nearest-point grid
    keep: int = 8  # hypotheses per proposal and object verified by rendering
    polish_rounds: int = 4  # local search of the verification score around the best (0 = none) ...
    polish_step: tuple[float, float] = (8.0, 0.01)  # ... starting with these yaw (deg) and shift (m) steps
    align_iterations: int = 6  # projective point-to-plane steps at the end (depth_align.py; 0 = none)
    candidates: int = 3  # objects per proposal tried, by colour similarity (with an appearance model) ...
    candidate_ratio: float = 0.7  # ... those at least this fraction as similar as the most similar one
    size_margin: float = 0.03  # metres of slack in the size test of a cluster against an object
    min_confidence: float = 0.3  # fit x similarity below this: not the object
    polish_floor: float = 0.5  # no polish or alignment for a pair whose fit x similarity before them is below
                               # this fraction of min_confidence (clutter)
    explain_rounds: int = 1  # re-cluster what the found objects leave unexplained (touching objects; 0 = none)
    use_appearance: bool = True  # tell objects apart by the bundle's appearance model when it has one

    def validate(self, where: str = "search") -> SearchConfig:
        self.proposals.validate(f"{where}.proposals")
        require_at_least(self, ("resting_poses", "yaw_steps", "model_points", "coarse_points", "max_cluster_points",
                                "icp_iterations", "keep", "candidates"), 1, where)
        if min(self.polish_rounds, self.align_iterations, self.explain_rounds) < 0:
            raise ConfigError(f"{where}.polish_rounds, align_iterations and explain_rounds must be >= 0, got "
                              f"{self.polish_rounds}, {self.align_iterations}, {self.explain_rounds}")
        for key in ("icp_tau", "size_margin", "lookup_voxel"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        if not self.verify.tau > 0 or not 0 <= self.verify.occluded_weight <= 1:
            raise ConfigError(f"{where}.verify: need tau > 0 and occluded_weight in [0, 1], got "
                              f"{self.verify.tau}, {self.verify.occluded_weight}")
        for key in ("min_confidence", "candidate_ratio", "polish_floor"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        return self


@dataclass(slots=True)
class Found:
    """One object found on the table: its index, pose, confidence (= fit x similarity) and where it is."""

    obj_index: int
    T_cam_obj: np.ndarray  # (4, 4)
    confidence: float
    fit: float  # render-and-compare score in [0, 1]
    similarity: float  # colour similarity in [0, 1] (1 without an appearance model)
    box: tuple[float, float, float, float]  # the proposal's box, pixels
    mask: np.ndarray  # (H, W) bool, the proposal's pixels


@dataclass(slots=True)
class _ObjectData:
    points: np.ndarray  # (M, 3) surface samples, object frame
    normals: np.ndarray  # (M, 3)
    tree: cKDTree  # of points
    lookup: VoxelNearest  # of points, for the coarse ICP
    rests: np.ndarray  # (P, 3, 3)
    mesh: RenderMesh
    face_normals: np.ndarray  # (F, 3)
    diameter: float
    rest_heights: np.ndarray  # (P,) height of the object in each resting pose
    sphere: tuple[np.ndarray, float]  # bounding sphere (centre in the object frame, radius + size_margin)


class TabletopSearch:
    """``TabletopSearch(models, appearance).search(frame) -> list[Found]`` (see the module docstring)."""

    def __init__(self, models: list[ObjectModel], appearance: AppearanceModel | None = None,
                 config: SearchConfig | None = None) -> None:
        self.config = (config or SearchConfig()).validate()
        self.models = models
        self.appearance = appearance
        self.data = []
        for m in models:
            pts, nrm = sample_surface(m.vertices, m.faces, self.config.model_points, np.random.default_rng(0))
            rests = resting_rotations(m, self.config.resting_poses)
            v = np.asarray(m.vertices, np.float64)
            heights = np.array([np.ptp(v @ R[2]) for R in rests])
            lookup = VoxelNearest(pts, self.config.lookup_voxel, 3.5 * self.config.icp_tau)
            mesh = RenderMesh(m.vertices, m.faces)
            centre = 0.5 * (v.min(0) + v.max(0))
            radius = float(np.linalg.norm(v - centre, axis=1).max()) + self.config.size_margin
            self.data.append(_ObjectData(pts, nrm, cKDTree(pts), lookup, rests, mesh, face_normals(mesh),
                                         float(m.diameter), heights, (centre, radius)))

    def search(self, frame: Frame, extra_hypotheses: dict[int, np.ndarray] | None = None) -> list[Found]:
        """Objects found in ``frame`` (needs ``frame.depth``); ``extra_hypotheses`` {object index: (E, 4, 4)
        T_cam_obj} join the resting-pose hypotheses of the proposals they project into.

        Objects that touch or hide each other can form one cluster: after the assignment, the points of a
        proposal that its object's rendering does not cover are clustered again, and those clusters are proposals
        for the objects not found yet (``explain_rounds`` times)."""
        if frame.depth is None:
            return []
        c = self.config
        depth_grid, K_grid = self._grid(frame)
        plane, proposals = find_proposals(frame.depth, frame.K.K, c.proposals, T_world_cam=frame.T_world_cam,
                                          grid=depth_grid)
        found: list[tuple[Found, Proposal]] = []
        objects = list(range(len(self.models)))
        parent: dict[int, int] = {}  # id of a leftover proposal -> index in `found` of the object it was left by
        for _ in range(1 + c.explain_rounds):
            if not proposals or not objects:
                break
            new = self._assign(frame, proposals, objects, plane, depth_grid, K_grid, extra_hypotheses or {})
            start = len(found)
            found += new
            objects = [k for k in objects if k not in {f.obj_index for f, _ in new}]
            proposals = []
            for j, (f, p) in enumerate(new):
                for q in self._leftover(f, p, frame, K_grid, depth_grid.shape):
                    parent[id(q)] = start + j
                    proposals.append(q)
        for g, q in found:  # objects found in what another left unexplained: fit that one again
            if id(q) in parent:  # without the points the newcomer explains
                j = parent[id(q)]
                found[j] = self._refit(frame, found[j], g, plane, depth_grid, K_grid)
        return sorted((f for f, _ in found), key=lambda f: -f.confidence)

    def _refit(self, frame: Frame, first: tuple[Found, Proposal], other: Found, plane: np.ndarray,
               depth_grid: np.ndarray, K_grid: np.ndarray) -> tuple[Found, Proposal]:
        """``first`` = (object, its proposal) fitted again to the proposal's points that ``other`` (found in what
        ``first`` left unexplained) does not explain: an object chosen on a cluster it shared with a touching one
        was posed with the other's points in its way. The new pose replaces the old when it verifies better on
        those points; the confidence is the fit to them of the pose kept."""
        f, p = first
        s = self.config.proposals.stride
        rest = ~self._explained(other, p, K_grid, depth_grid.shape)
        if rest.sum() < self.config.proposals.min_points or rest.all():
            return first
        H, W = frame.depth.shape
        px = p.pixels[rest]
        box = np.array([px[:, 1].min(), px[:, 0].min(), min(W, px[:, 1].max() + s), min(H, px[:, 0].max() + s)],
                       np.float64)
        q = Proposal(p.points[rest], px, box)
        grid_mask = q.mask((H, W), s)
        T, fit = self._fit(f.obj_index, q, plane, depth_grid, K_grid, grid_mask, f.T_cam_obj[None])
        d = self.data[f.obj_index]
        window = self._proposal_window(d, q, K_grid, depth_grid.shape)
        kept = self._whole_fit(d, f.T_cam_obj, depth_grid, K_grid, grid_mask, window)
        if fit <= kept:
            T, fit = f.T_cam_obj, kept
        return replace(f, T_cam_obj=T, confidence=fit * f.similarity, fit=fit), p

    def _assign(self, frame: Frame, proposals: list[Proposal], objects: list[int], plane: np.ndarray,
                depth_grid: np.ndarray, K_grid: np.ndarray, extra_hypotheses: dict[int, np.ndarray]
                ) -> list[tuple[Found, Proposal]]:
        """Every candidate of ``objects`` (:meth:`_candidates`) fitted to every proposal; proposals assigned to
        objects one-to-one on fit x colour similarity x surface pattern; a pair is kept when its fit x
        similarity reaches ``min_confidence`` (that product is its confidence): the pattern, weaker in views under
        other light than the drive's, decides which proposal an object is on, not whether it is there."""
        c = self.config
        s = c.proposals.stride
        H, W = frame.depth.shape
        O = len(self.models)
        conf = np.zeros((len(proposals), O))
        pattern = np.ones((len(proposals), O))  # surface pattern factors: which proposal, not whether
        poses = np.zeros((len(proposals), O, 4, 4))
        fits = np.zeros((len(proposals), O))
        sims = np.ones((len(proposals), O))
        grid_masks = [p.mask((H, W), s) for p in proposals]
        appearance = self.appearance if c.use_appearance else None
        surface = appearance.surface if appearance is not None else None
        for i, p in enumerate(proposals):
            cands = [k for k in self._candidates(p, plane) if k in objects] \
                or [k for k in self._candidates(p, plane, whole=False) if k in objects]
            if appearance is not None and cands:
                sims[i] = appearance.similarity(frame.rgb, _upsample(grid_masks[i], s, (H, W)))
                if appearance.known.any():  # no colours from the drive: as likely as the segment is unlike
                    sims[i, ~appearance.known] = 1.0 - sims[i, appearance.known].max()  # every known object
                best = max(sims[i, k] for k in cands)
                cands = [k for k in sorted(cands, key=lambda k: -sims[i, k])[:c.candidates]
                         if sims[i, k] >= c.candidate_ratio * best and sims[i, k] >= c.min_confidence]
            for k in cands:
                extra = self._extra_for(p, frame.K.K, extra_hypotheses.get(k))
                T, fit = self._fit(k, p, plane, depth_grid, K_grid, grid_masks[i], extra,
                                   c.polish_floor * c.min_confidence / max(sims[i, k], 1e-6))
                poses[i, k], fits[i, k] = T, fit
                if surface is not None:  # where on the object which colour is: look-alikes apart
                    pattern[i, k] = surface.pattern(k, frame.rgb, frame.depth, frame.K.K, T[None])[0]
                conf[i, k] = fit * sims[i, k]
        out = []
        for i, k in zip(*linear_sum_assignment(-conf * pattern)):
            if conf[i, k] >= c.min_confidence:
                out.append((Found(int(k), poses[i, k], float(conf[i, k]), float(fits[i, k]), float(sims[i, k]),
                                  tuple(float(v) for v in proposals[i].box), _upsample(grid_masks[i], s, (H, W))),
                            proposals[i]))
        return out

    def _leftover(self, f: Found, p: Proposal, frame: Frame, K_grid: np.ndarray, shape: tuple[int, int]
                  ) -> list[Proposal]:
        """Proposals from the points of ``p`` that the rendering of ``f``'s object at its pose does not explain:
        outside its silhouette (dilated by one grid cell) or more than twice ``icp_tau`` off its depth (an object
        in front of it)."""
        rest = ~self._explained(f, p, K_grid, shape)
        return cluster_proposals(p.points[rest], p.pixels[rest], frame.K.K, frame.depth.shape,
                                 self.config.proposals)

    def _explained(self, f: Found, p: Proposal, K_grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """(N,) whether each point of ``p`` is explained by ``f``'s object at its pose: inside its rendered
        silhouette (dilated by one grid cell) and within twice ``icp_tau`` of its depth."""
        c = self.config
        s = c.proposals.stride
        rows, cols = p.pixels[:, 0] // s, p.pixels[:, 1] // s
        x0, y0 = int(cols.min()), int(rows.min())
        window = (x0, y0, min(shape[1], int(cols.max()) + 1), min(shape[0], int(rows.max()) + 1))
        rendered, faces = render_window(self.data[f.obj_index].mesh, f.T_cam_obj[None], K_grid, window)
        sil = faces[0] >= 0
        ring = (cv2.dilate(sil.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~sil
        r, q = rows - y0, cols - x0
        return ring[r, q] | (sil[r, q] & (np.abs(p.points[:, 2] - rendered[0][r, q]) < 2 * c.icp_tau))

    def verify(self, frame: Frame, poses: Sequence[tuple[int, np.ndarray, np.ndarray | None]]) -> list[float]:
        """Render-and-compare scores in [0, 1] of ``poses`` = [(object index, T_cam_obj (4, 4), its visible mask
        (H, W) bool or None)] in ``frame`` (with depth); without a mask the silhouette alone is compared."""
        if frame.depth is None:
            return [0.0] * len(poses)
        depth_grid, K_grid = self._grid(frame)
        h, w = depth_grid.shape
        s = self.config.proposals.stride
        out = []
        for k, T, mask in poses:
            X = self.data[k].points @ T[:3, :3].T + T[:3, 3]
            X = X[X[:, 2] > Z_MIN]
            if not len(X):
                out.append(0.0)
                continue
            uv = project(K_grid, X)
            window = (max(0, int(uv[:, 0].min()) - 2), max(0, int(uv[:, 1].min()) - 2),
                      min(w, int(np.ceil(uv[:, 0].max())) + 3), min(h, int(np.ceil(uv[:, 1].max())) + 3))
            grid_mask = mask[::s, ::s] if mask is not None else np.zeros((h, w), bool)
            out.append(float(verify_poses(self.data[k].mesh, T[None], depth_grid, K_grid, grid_mask, window,
                                          self.config.verify)[0]))
        return out

    def refine(self, frame: Frame, hypotheses: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{object index k: (poses (H, 4, 4), evidence (H, 4))} for ``hypotheses`` {k: T_cam_obj (H, 4, 4)}, e.g.
        tracked objects moved by the camera motion: each pose aligned to ``frame``'s depth over the 4 DOF of a
        resting object (about the world's up from ``frame.T_world_cam``) and scored by render-and-compare
        (:func:`~selfpose_core.estimate.verification.verify_counts`; zero out of view). No plane or clusters are
        needed: an object's segment is the depth inside its bounding sphere above its lowest point."""
        hypotheses = {k: np.asarray(T, np.float64).reshape(-1, 4, 4) for k, T in hypotheses.items()}
        if frame.depth is None:
            return {k: (T, np.zeros((len(T), 4))) for k, T in hypotheses.items()}
        c = self.config
        depth_grid, K_grid = self._grid(frame)  # once per frame, for every object
        up, _ = camera_up(frame.T_world_cam)
        out = {}
        for k, T_cam_obj in hypotheses.items():
            d = self.data[k]
            aligned, counts = T_cam_obj.copy(), np.zeros((len(T_cam_obj), 4))
            window = self._window(d, T_cam_obj, K_grid, depth_grid.shape) if len(T_cam_obj) else None
            for j, T in enumerate(T_cam_obj if window is not None else ()):
                if c.align_iterations:
                    aligned[j] = align_resting(d.mesh, d.face_normals, T, up, depth_grid, K_grid, window,
                                               gate=c.icp_tau, iterations=c.align_iterations)
                mask = self._segment(d, aligned[j], up, depth_grid, K_grid, window)
                counts[j] = verify_counts(d.mesh, aligned[j][None], depth_grid, K_grid, mask, window, c.verify)[0]
            out[k] = (aligned, counts)
        return out

    def _window(self, d: _ObjectData, T_cam_obj: np.ndarray, K_grid: np.ndarray, shape: tuple[int, int]
                ) -> tuple[int, int, int, int] | None:
        """The grid window (x0, y0, x1, y1) covering the object at all poses ``T_cam_obj`` (H, 4, 4) plus a
        quarter diameter; None when it lies behind the camera or outside the image."""
        X = np.einsum("hij,mj->hmi", T_cam_obj[:, :3, :3], d.points) + T_cam_obj[:, None, :3, 3]
        X = X.reshape(-1, 3)
        X = X[X[:, 2] > Z_MIN]
        if not len(X):
            return None
        uv = project(K_grid, X)
        margin = 0.25 * d.diameter * K_grid[0, 0] / max(float(X[:, 2].min()), 0.05)
        h, w = shape
        x0, y0 = max(0, int(uv[:, 0].min() - margin)), max(0, int(uv[:, 1].min() - margin))
        x1, y1 = min(w, int(np.ceil(uv[:, 0].max() + margin))), min(h, int(np.ceil(uv[:, 1].max() + margin)))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def _segment(self, d: _ObjectData, T: np.ndarray, up: np.ndarray, depth_grid: np.ndarray, K_grid: np.ndarray,
                 window: tuple[int, int, int, int]) -> np.ndarray:
        """Grid mask of the observed points inside ``window`` that lie within the object's bounding sphere at
        ``T`` (plus ``size_margin``) and above its lowest point by ``proposals.min_height`` (not the table)."""
        x0, y0, x1, y1 = window
        v, u = np.mgrid[y0:y1, x0:x1]
        z = depth_grid[y0:y1, x0:x1]
        X = unproject(K_grid, np.stack([u, v], -1).reshape(-1, 2).astype(np.float64), z.reshape(-1))
        bottom = float((d.points @ T[:3, :3].T + T[:3, 3]).dot(up).min())
        near = np.linalg.norm(X - T[:3, 3], axis=1) < 0.5 * d.diameter + self.config.size_margin
        above = X @ up - bottom > self.config.proposals.min_height
        mask = np.zeros(depth_grid.shape, bool)
        mask[y0:y1, x0:x1] = (near & above & (z.reshape(-1) > 0)).reshape(z.shape)
        return mask

    def _grid(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """The frame's depth on the proposals' grid without flying pixels (:func:`without_flying_pixels`; float64,
        0 = invalid) and the grid's camera matrix."""
        p = self.config.proposals
        grid = without_flying_pixels(frame.depth, p.edge_tolerance, p.edge_support, p.stride)
        return grid.astype(np.float64), np.diag([1.0 / p.stride, 1.0 / p.stride, 1.0]) @ frame.K.K

    def _candidates(self, p: Proposal, plane: np.ndarray, whole: bool = True) -> list[int]:
        """Objects the cluster may hold: not those it is far too flat for (its height above the plane below 0.3 x
        the object's lowest resting height, minus ``size_margin``); with ``whole``, only those whose size admits
        the whole cluster (its height at most the object's height in some resting pose, its diameter at most the
        object's, each plus ``size_margin``). A cluster that admits no object whole holds touching objects (or an
        object against clutter): the caller then tries every object without ``whole``, on the cluster's parts
        (:func:`footprint_parts`)."""
        m = self.config.size_margin
        height = float((p.points @ plane[:3] + plane[3]).max())
        width = mesh_diameter(_subsample(p.points, 1000)) if whole else 0.0
        return [k for k, d in enumerate(self.data) if height >= 0.3 * d.rest_heights.min() - m
                and (not whole or (width <= d.diameter + m and height <= d.rest_heights.max() + m))]

    def _extra_for(self, p: Proposal, K: np.ndarray, hyps: np.ndarray | None) -> np.ndarray | None:
        """The given hypotheses whose object origin projects into the proposal's box."""
        if hyps is None or not len(hyps):
            return None
        t = np.asarray(hyps)[:, :3, 3]
        uv = project(K, t)
        x0, y0, x1, y1 = p.box
        inside = (t[:, 2] > Z_MIN) & (uv[:, 0] >= x0) & (uv[:, 0] < x1) & (uv[:, 1] >= y0) & (uv[:, 1] < y1)
        return np.asarray(hyps)[inside] if inside.any() else None

    def _fit(self, k: int, p: Proposal, plane: np.ndarray, depth_grid: np.ndarray, K_grid: np.ndarray,
             grid_mask: np.ndarray, extra: np.ndarray | None, floor: float = 0.0) -> tuple[np.ndarray, float]:
        """The best verified pose of object ``k`` on proposal ``p`` and its render-and-compare score against the
        whole proposal (:meth:`_whole_fit`); polish and alignment are skipped when the best hypothesis verifies
        below ``floor`` (not this object)."""
        c = self.config
        d = self.data[k]
        cluster = _subsample(p.points, c.max_cluster_points)
        T0 = np.concatenate([tabletop_hypotheses(d.points, d.rests, part, plane, c.yaw_steps)
                             for part in footprint_parts(cluster, plane, d.diameter)])
        if extra is not None:
            T0 = np.concatenate([T0, extra])
        tau = c.icp_tau
        T = upright_icp(d.points, _subsample(cluster, c.coarse_points), T0, plane[:3], (3 * tau, 1.5 * tau),
                        c.icp_iterations, d.lookup)
        f = self._fscores(d, T, cluster, cKDTree(cluster), plane)
        T = upright_icp(d.points, cluster, T[np.argsort(-f, kind="stable")[:c.keep]], plane[:3], (tau,),
                        c.icp_iterations)
        window = self._proposal_window(d, p, K_grid, depth_grid.shape)
        scores = verify_poses(d.mesh, T, depth_grid, K_grid, grid_mask, window, c.verify, d.sphere)
        j = int(np.argmax(scores))
        if scores[j] < floor:
            return T[j], self._whole_fit(d, T[j], depth_grid, K_grid, grid_mask, window)
        T, score = self._polish(d, T[j], float(scores[j]), plane[:3], depth_grid, K_grid, grid_mask, window)
        if c.align_iterations:
            aligned = align_resting(d.mesh, d.face_normals, T, plane[:3], depth_grid, K_grid, window,
                                    gate=c.icp_tau, iterations=c.align_iterations)
            s_aligned = float(verify_poses(d.mesh, aligned[None], depth_grid, K_grid, grid_mask, window, c.verify,
                                           d.sphere)[0])
            if s_aligned >= score:
                T, score = aligned, s_aligned
        return T, self._whole_fit(d, T, depth_grid, K_grid, grid_mask, window)

    def _proposal_window(self, d: _ObjectData, p: Proposal, K_grid: np.ndarray, shape: tuple[int, int]
                         ) -> tuple[int, int, int, int]:
        """The grid window (x0, y0, x1, y1) of the proposal's box grown by half the object's diameter."""
        x0, y0, x1, y1 = p.box / self.config.proposals.stride
        z = float(np.median(_subsample(p.points, self.config.max_cluster_points)[:, 2]))
        margin = 0.5 * d.diameter * K_grid[0, 0] / max(z, 0.05)
        return (max(0, int(x0 - margin)), max(0, int(y0 - margin)), min(shape[1], int(np.ceil(x1 + margin))),
                min(shape[0], int(np.ceil(y1 + margin))))

    def _whole_fit(self, d: _ObjectData, T: np.ndarray, depth_grid: np.ndarray, K_grid: np.ndarray,
                   grid_mask: np.ndarray, window: tuple[int, int, int, int]) -> float:
        """The score of ``T`` against the whole proposal: the pose is chosen on the object's own part of a cluster
        (bounding sphere), but an object is only as confident as it explains the cluster, so a small object fitted
        to a part of a larger one does not win that cluster; what it leaves unexplained is a proposal of its own in
        the next round (``explain_rounds``)."""
        return float(verify_poses(d.mesh, T[None], depth_grid, K_grid, grid_mask, window, self.config.verify)[0])

    def _polish(self, d: _ObjectData, T: np.ndarray, score: float, up: np.ndarray, depth_grid: np.ndarray,
                K_grid: np.ndarray, grid_mask: np.ndarray, window: tuple[int, int, int, int]
                ) -> tuple[np.ndarray, float]:
        """Coordinate search of the verification score over yaw and the two in-plane shifts around ``T``: the
        best of T and its six neighbours each round, the steps halved when none is better."""
        c = self.config
        B = upright_basis(up)
        yaw_step, shift_step = np.radians(c.polish_step[0]), c.polish_step[1]
        for _ in range(c.polish_rounds):
            moves = []
            for sign in (-1.0, 1.0):
                M = make_T(so3_exp(sign * yaw_step * up), np.zeros(3))
                M[:3, 3] = T[:3, 3] - M[:3, :3] @ T[:3, 3]  # turn about the object's origin
                moves.append(M @ T)
                for axis in (0, 1):
                    S = T.copy()
                    S[:3, 3] += sign * shift_step * B[:, axis]
                    moves.append(S)
            moves = np.stack(moves)
            scores = verify_poses(d.mesh, moves, depth_grid, K_grid, grid_mask, window, c.verify, d.sphere)
            j = int(np.argmax(scores))
            if scores[j] > score:
                T, score = moves[j], float(scores[j])
            else:
                yaw_step, shift_step = yaw_step / 2, shift_step / 2
        return T, score

    def _fscores(self, d: _ObjectData, T: np.ndarray, cluster: np.ndarray, cluster_tree: cKDTree,
                 plane: np.ndarray) -> np.ndarray:
        """(H,) F-score of each pose: precision = cluster points inside the object's bounding sphere that lie within
        tau of the model; recall = model points facing the camera (and above the plane) within tau of the cluster."""
        tau = self.config.icp_tau
        R, t = T[:, :3, :3], T[:, :3, 3]
        Rt = R.transpose(0, 2, 1)
        X = d.points @ Rt + t[:, None]
        N = d.normals @ Rt
        facing = ((N * X).sum(-1) < 0) & (X @ plane[:3] + plane[3] > tau)
        near_cluster = cluster_tree.query(X.reshape(-1, 3), distance_upper_bound=tau)[0].reshape(X.shape[:2]) < tau
        recall = (facing & near_cluster).sum(1) / np.maximum(facing.sum(1), 1)
        local = (cluster[None] - t[:, None]) @ R
        near_model = (d.tree.query(local.reshape(-1, 3), distance_upper_bound=tau)[0] < tau).reshape(len(T), -1)
        centre, radius = d.sphere
        inside = ((local - centre) ** 2).sum(-1) < radius ** 2
        precision = (near_model & inside).sum(1) / np.maximum(inside.sum(1), 1)
        return np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-9), 0.0)


def _subsample(points: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``points`` (N, 3), evenly spread over their order."""
    if len(points) <= n:
        return points
    return points[np.linspace(0, len(points) - 1, n).round().astype(int)]


def _upsample(grid_mask: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """A mask on the ``stride`` grid as a full-resolution (H, W) bool mask (each grid cell fills its pixels)."""
    return np.repeat(np.repeat(grid_mask, stride, 0), stride, 1)[:shape[0], :shape[1]]
