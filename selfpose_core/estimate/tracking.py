"""Tracking static objects while the robot moves: the previous pose, moved by the camera motion, instead of a search.

The robot knows its camera pose in the world from TF (``Frame.T_world_cam``) and the objects do not move, so an
object found once has a pose in the world. Per frame, each object's world-pose hypotheses are brought into the
camera (``T_cam_obj = inv(T_world_cam) @ T_world_obj``), aligned to the depth over a resting object's 4 DOF and
verified by render-and-compare (:meth:`TabletopSearch.refine`, one depth grid for all objects): a few renders per object instead of the full
search. The full search (:meth:`PoseEstimator.estimate`) runs on the first frame, every ``redetect_every``
frames (objects that came into view) and right after an object in view failed verification.

Fusion in time: each object keeps up to ``max_hypotheses`` world poses (from the searches of different frames),
each with a running average of its verification score over the frames since it was found. The published pose is
the hypothesis with the best average: a pose that only one view could tell apart (a mug whose handle is visible
from one side) stays chosen after the view that showed it. Causal: only past and present frames are used.

Without depth or without a camera pose the tracker is the plain estimator.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.estimator import PoseEstimator
from selfpose_core.estimate.verification import score_counts
from selfpose_core.geometry.projection import Z_MIN, project
from selfpose_core.geometry.se3 import invert, rotation_angle
from selfpose_core.geometry.symmetry import closest_symmetric_pose
from selfpose_core.types import Frame, PoseEstimate


@dataclass(slots=True)
class TrackingConfig:
    redetect_every: int = 5  # frames between full searches (objects that came into view)
    min_fit: float = 0.5  # an object in sight whose best hypothesis verifies below this is lost: search again
    min_pixels: int = 20  # depth-grid pixels of a hypothesis in sight (not hidden) needed to re-score it
    min_in_image: float = 0.1  # share of an object's surface inside the image for it to be published
    max_hypotheses: int = 3  # world poses kept per object
    smoothing: float = 0.5  # weight of the newest frame in a hypothesis' running verification score
    same_translation: float = 0.1  # a new pose this close (fraction of the diameter) ...
    same_rotation_deg: float = 15.0  # ... and turned less (up to symmetry) is a hypothesis already kept

    def validate(self, where: str = "tracking") -> TrackingConfig:
        require_at_least(self, ("redetect_every", "max_hypotheses", "min_pixels"), 1, where)
        if not 0 < self.smoothing <= 1 or not 0 <= self.min_fit <= 1 or not 0 <= self.min_in_image <= 1:
            raise ConfigError(f"{where}: smoothing must be in (0, 1], min_fit and min_in_image in [0, 1], got "
                              f"{self.smoothing}, {self.min_fit}, {self.min_in_image}")
        if not self.same_translation > 0 or not self.same_rotation_deg > 0:
            raise ConfigError(f"{where}: same_translation and same_rotation_deg must be > 0")
        return self


@dataclass(slots=True)
class _Hypothesis:
    T_world_obj: np.ndarray  # (4, 4)
    found_score: float  # the search's confidence (fit x colour similarity) in the frame that found it
    score: float = -1.0  # running verification score (-1: not seen yet)
    similarity: float = 1.0  # found_score / fit in that frame: the colour similarity


@dataclass(slots=True)
class _Track:
    hypotheses: list[_Hypothesis] = field(default_factory=list)
    template: PoseEstimate | None = None  # the latest search's estimate (name, id)


class PoseTracker:
    """``PoseTracker(estimator).estimate(frame)``: the estimator's poses, tracked over a sequence of frames of one
    static scene (module docstring). ``reset()`` before another scene."""

    def __init__(self, estimator: PoseEstimator, config: TrackingConfig | None = None) -> None:
        if estimator.search is None:
            raise ConfigError("tracking needs the estimator's table-top search (use_depth and depth_search on)")
        self.estimator = estimator
        self.config = (config or TrackingConfig()).validate()
        self.names = estimator.object_names
        self.searches = 0  # full searches run so far (all scenes)
        self.reset()

    def reset(self) -> None:
        """Forget every tracked object (a new scene)."""
        self.tracks: dict[int, _Track] = {}
        self.since_search = 0
        self.lost = False

    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        """Poses of the objects in ``frame``, best score first (see the module docstring)."""
        if frame.depth is None or frame.T_world_cam is None or not self.estimator.config.use_depth:
            return self.estimator.estimate(frame)
        T_world_cam = np.asarray(frame.T_world_cam, np.float64)
        self.since_search += 1
        if not self.tracks or self.lost or self.since_search >= self.config.redetect_every:
            self._add(self.estimator.estimate(frame), T_world_cam)
            self.since_search = 0
            self.searches += 1
        return self._update(frame, T_world_cam)

    def _add(self, found: list[PoseEstimate], T_world_cam: np.ndarray) -> None:
        """The search's poses join their objects' hypotheses (a pose already kept is not added twice)."""
        for est in found:
            k = self.names.index(est.object_name)
            track = self.tracks.setdefault(k, _Track())
            track.template = replace(est, mask=None)
            T_w = T_world_cam @ est.T_cam_obj
            if not any(self._same(k, T_w, h.T_world_obj) for h in track.hypotheses):
                track.hypotheses.append(_Hypothesis(T_w, float(est.score)))

    def _same(self, k: int, T_a: np.ndarray, T_b: np.ndarray) -> bool:
        model = self.estimator.models[k]
        T_b = closest_symmetric_pose(T_a, T_b, model.symmetry)
        return (np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]) < self.config.same_translation * model.diameter
                and np.degrees(float(rotation_angle(T_a[:3, :3], T_b[:3, :3]))) < self.config.same_rotation_deg)

    def _update(self, frame: Frame, T_world_cam: np.ndarray) -> list[PoseEstimate]:
        """Align and verify every hypothesis in ``frame``; publish each object's best; flag a lost object.

        A hypothesis is re-scored only where enough of it is in sight (``min_pixels`` of the depth grid that its
        rendering or its segment should show); hidden behind something nearer, it keeps its pose and score. The
        best one is lost when what is in sight contradicts it (consistent share of the unoccluded pixels below
        ``min_fit``: the object moved)."""
        c = self.config
        occluded_weight = self.estimator.search.config.verify.occluded_weight
        T_cam_world = invert(T_world_cam)
        self.lost = False
        out = []
        moved = {k: np.stack([T_cam_world @ h.T_world_obj for h in track.hypotheses])
                 for k, track in self.tracks.items()}
        refined = self.estimator.search.refine(frame, moved)
        for k, track in self.tracks.items():
            T_cam = moved[k]
            aligned, counts = refined[k]
            fits = score_counts(counts, occluded_weight)
            in_sight = counts[:, 0] + counts[:, 1] + counts[:, 3]
            support = counts[:, 0] / np.maximum(in_sight, 1e-9)
            seen = (in_sight >= c.min_pixels) & np.array([self._in_view(k, T, frame) for T in T_cam])
            for h, T, fit, ok in zip(track.hypotheses, aligned, fits, seen):
                if not ok:
                    continue
                if h.score < 0:
                    h.similarity = float(np.clip(h.found_score / max(fit, 1e-6), 0.0, 1.0))
                h.score = fit if h.score < 0 else (1 - c.smoothing) * h.score + c.smoothing * fit
                h.T_world_obj = T_world_cam @ T
            best = max(range(len(track.hypotheses)), key=lambda j: track.hypotheses[j].score)
            if seen[best] and support[best] < c.min_fit:
                self.lost = True
            elif self._in_view(k, T_cam[best], frame) and track.hypotheses[best].score >= 0:
                h = track.hypotheses[best]
                out.append(replace(track.template, T_cam_obj=T_cam_world @ h.T_world_obj,
                                   score=float(h.score * h.similarity), box=None, mask=None))
            order = sorted(range(len(track.hypotheses)), key=lambda j: -track.hypotheses[j].score)
            track.hypotheses = [track.hypotheses[j] for j in order[:c.max_hypotheses]]
        return sorted(out, key=lambda e: -e.score)

    def _in_view(self, k: int, T_cam_obj: np.ndarray, frame: Frame) -> bool:
        """Whether at least ``min_in_image`` of object ``k``'s surface samples at ``T_cam_obj`` project into the
        image, in front of the camera."""
        X = self.estimator.search.data[k].points @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
        front = X[:, 2] > Z_MIN
        if not front.any():
            return False
        uv = project(frame.K.K, X[front])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < frame.K.width) & (uv[:, 1] >= 0) & (uv[:, 1] < frame.K.height)
        return inside.sum() >= self.config.min_in_image * len(X)
