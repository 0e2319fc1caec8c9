"""Multiview consensus: per-frame estimates + the robot's camera poses -> one world pose per object -> pseudo labels.

1. Estimate: the current bundle's :class:`~selfpose_core.estimate.estimator.PoseEstimator` on every frame (split
   over ranks under DDP); each estimate ``T_cam_obj`` becomes a world-pose candidate ``T_world_cam @ T_cam_obj``.
2. With depth (``drift: depth``): the recorded camera poses corrected by a pose graph of pairwise depth
   registrations (:mod:`selfpose_core.adapt.depth_odometry`); every later step uses the corrected cameras.
   With depth (``scene_registration``): the recording's depth fused in the world frame, the objects on the table
   found and their CAD models registered (:mod:`selfpose_core.adapt.scene_registration`); a registered object
   takes that pose (held in step 3), and the estimates agreeing with it (gates below) are its inliers. The others:
   robust averaging (:func:`robust_world_pose`): RANSAC over frames, each candidate a hypothesis; a candidate
   agrees with a hypothesis when, after aligning it to the hypothesis with the object's closest symmetry
   transform, its translation is within ``inlier_translation * diameter`` and its rotation within
   ``inlier_rotation_deg``. The hypothesis with the largest weighted inlier set is refined (weighted mean
   translation, Weiszfeld L1 rotation median) and the inliers re-gated a few times.
3. Joint refinement (:func:`refine_consensus`): the world poses of the objects not registered and (``drift:
   correct``, the fallback without depth) a per-frame camera correction are optimised together over all frames.
   The correction models odometry drift as a planar (x, y, yaw about the
   world z axis, REP-103) transform, piecewise linear over time with ``drift_knots`` knots and zero at the first
   frame (which fixes the gauge: the world frame is the odometry frame at the start). Terms: (a) a robust
   (Cauchy) keypoint distance between each inlier estimate and the consensus seen through the corrected camera,
   (b) render-and-compare: the rendered soft silhouette against the segmenter's mask in a crop (pixels of other
   objects' masks ignored, they may occlude) and (c) rendered vs measured depth (truncated, so occluders do not
   pull), (d) a random-walk smoothness prior on the drift knots. Frames are then weighted by their residual
   (``1 / (1 + (r / tau)^2)``): a frame whose estimates disagree with the corrected consensus counts less in the
   pseudo labels.
4. Pseudo labels: every object rendered in every frame at the consensus pose through the corrected camera: pose,
   amodal box, visible mask (front-most among the objects and, with depth, where the measured depth agrees),
   confidence = object confidence (``1 - exp(-inliers / confidence_inliers)``: an average over more agreeing
   frames is better) x frame weight.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import yaml

from selfpose_core.adapt.appearance_learning import learn_appearance
from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.depth_odometry import DepthOdometryConfig, track_depth
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.adapt.scene_registration import RegistrationConfig, fuse_depth, register_objects
from selfpose_core.adapt.stage import StageResult
from selfpose_core.config_io import require_at_least
from selfpose_core.data.crops import amodal_box, crop_affine, square_box
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.geometry.se3 import average_rotations_robust, invert, rotation_angle, se3_exp
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.geometry.symmetry import closest_symmetric_pose
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render
from selfpose_core.saved_state import fail, load_npz, load_state_yaml
from selfpose_core.types import ObjectModel, Symmetry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ConsensusConfig:
    """``multiview_consensus`` section of config/adapt.yaml."""

    detection_threshold: float = 0.2  # detector score for the per-frame estimates (low: RANSAC rejects outliers)
    min_score: float = 0.0  # per-frame estimates below this score are not candidates
    score_floor: float = 0.1  # candidate weight = score_floor + score (estimators may score 0)
    inlier_translation: float = 0.15  # fraction of the diameter
    inlier_rotation_deg: float = 20.0
    min_inliers: int = 3  # fewer agreeing frames -> the object gets no world pose
    min_inlier_fraction: float = 0.2  # ... or fewer than this share of the frames that estimated it
    confidence_inliers: float = 5.0  # object confidence = 1 - exp(-inliers / confidence_inliers)
    refit_iterations: int = 3
    drift: str = "depth"  # depth: pose graph of the depth (depth_odometry.py), else correct; correct: planar
    # per-frame camera correction in the refinement; weight: only down-weight frames
    depth_odometry: DepthOdometryConfig = field(default_factory=DepthOdometryConfig)
    drift_knots: int = 6
    drift_smoothness: float = 1.0  # weight of the random-walk prior on the knots (per metre / radian squared)
    refine_iterations: int = 80
    refine_lr: float = 2e-3
    refine_batch: int = 48  # (frame, object) pairs rendered per iteration
    crop_size: int = 48
    keypoint_weight: float = 1.0
    silhouette_weight: float = 1.0
    depth_weight: float = 1.0
    depth_truncation: float = 0.03  # metres
    residual_tau: float = 0.1  # fraction of the diameter at which a frame's weight halves
    mask_depth_tolerance: float = 0.03  # metres: visible where |measured - rendered depth| is below this
    min_visible_fraction: float = 0.15
    symmetry_samples: int = 36
    max_frames: int = 0  # estimate on at most this many frames, evenly spread (0 = all)
    scene_registration: bool = True  # with depth: world poses from the fused depth (scene_registration.py)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)

    def validate(self, where: str = "multiview_consensus") -> None:
        if not 0 <= self.min_inlier_fraction <= 1:
            raise ConfigError(f"{where}.min_inlier_fraction must be in [0, 1], got {self.min_inlier_fraction}")
        if not 0 < self.detection_threshold < 1:
            raise ConfigError(f"{where}.detection_threshold must be in (0, 1), got {self.detection_threshold}")
        if self.drift not in ("depth", "correct", "weight"):
            raise ConfigError(f"{where}.drift must be 'depth', 'correct' or 'weight', got {self.drift!r}")
        for key in ("inlier_translation", "inlier_rotation_deg", "refine_lr", "residual_tau", "depth_truncation",
                    "mask_depth_tolerance", "confidence_inliers"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key} must be > 0, got {getattr(self, key)}")
        require_at_least(self, ("min_inliers", "refit_iterations", "drift_knots", "refine_batch", "crop_size"), 1,
                         where)
        if self.refine_iterations < 0 or self.max_frames < 0 or self.score_floor < 0 or self.min_score < 0:
            raise ConfigError(f"{where}.refine_iterations, max_frames, score_floor and min_score must be >= 0")
        self.registration.validate(f"{where}.registration")
        self.depth_odometry.validate(f"{where}.depth_odometry")


# ---------------------------------------------------------------------------------------------- per-frame estimates
@dataclass(slots=True)
class FrameEstimates:
    """Per-frame estimates of the pre-trained model, flattened: P estimates over the recording."""

    frame: np.ndarray  # (P,) recording frame index
    obj_index: np.ndarray  # (P,) index into the objects
    T_cam_obj: np.ndarray  # (P, 4, 4)
    score: np.ndarray  # (P,)
    box: np.ndarray  # (P, 4) amodal box from the detector
    masks: list[np.ndarray | None] = field(default_factory=list)  # P visible masks (H, W) bool

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, keep: np.ndarray) -> FrameEstimates:
        """The estimates where the (P,) bool ``keep`` is set."""
        return FrameEstimates(self.frame[keep], self.obj_index[keep], self.T_cam_obj[keep], self.score[keep],
                              self.box[keep], [m for m, k in zip(self.masks, keep) if k])

    def save(self, path: Path) -> None:
        has = np.array([m is not None for m in self.masks], bool)
        shape = next((m.shape for m in self.masks if m is not None), (0, 0))
        bits = np.stack([np.packbits(m.reshape(-1)) for m in self.masks if m is not None]) if has.any() else \
            np.zeros((0, 0), np.uint8)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, frame=self.frame, obj_index=self.obj_index, T_cam_obj=self.T_cam_obj,
                            score=self.score, box=self.box, has_mask=has, mask_shape=np.array(shape), bits=bits)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FrameEstimates:
        what = "per-frame estimates"
        d = load_npz(path, what, {"frame": ("i", 1), "obj_index": ("i", 1), "T_cam_obj": ("f", 3), "score": ("f", 1),
                                  "box": ("f", 2), "mask_shape": ("i", 1), "has_mask": ("b", 1), "bits": ("u8", 2)})
        n = len(d["frame"])
        for key, shape in (("obj_index", (n,)), ("T_cam_obj", (n, 4, 4)), ("score", (n,)), ("box", (n, 4)),
                           ("mask_shape", (2,)), ("has_mask", (n,))):
            if d[key].shape != shape:
                raise fail(path, what, f"array '{key}'", f"has shape {d[key].shape}, expected {shape}")
        h, w = (int(v) for v in d["mask_shape"])
        if not (0 <= h <= 1 << 13 and 0 <= w <= 1 << 13) or len(d["bits"]) != int(d["has_mask"].sum()) \
                or d["bits"].shape[1] * 8 < h * w:
            raise fail(path, what, "arrays 'bits', 'mask_shape'", "do not match the masks flagged in 'has_mask'")
        if (d["frame"] < 0).any() or (d["obj_index"] < 0).any():
            raise fail(path, what, "arrays 'frame', 'obj_index'", "hold negative indices")
        it = iter(d["bits"])
        masks = [np.unpackbits(next(it), count=h * w).reshape(h, w).astype(bool) if has else None
                 for has in d["has_mask"]]
        return cls(d["frame"], d["obj_index"], d["T_cam_obj"], d["score"], d["box"], masks)

    @classmethod
    def concatenate(cls, parts: list[FrameEstimates]) -> FrameEstimates:
        order = np.argsort(np.concatenate([p.frame for p in parts]), kind="stable")
        cat = [np.concatenate([getattr(p, k) for p in parts]) for k in ("frame", "obj_index", "T_cam_obj", "score",
                                                                         "box")]
        masks = [m for p in parts for m in p.masks]
        return cls(*(c[order] for c in cat), [masks[i] for i in order])


def estimate_frames(ctx: AdaptContext, frames: np.ndarray, estimator: PoseEstimator, min_score: float,
                    progress: bool = False) -> FrameEstimates:
    """Run ``estimator`` on recording frames ``frames`` (F,) and keep estimates scoring at least ``min_score``."""
    from tqdm import tqdm

    names = {m.name: k for k, m in enumerate(ctx.objects)}
    rows: list[tuple[int, int, np.ndarray, float, np.ndarray, np.ndarray | None]] = []
    for i in tqdm(frames.tolist(), desc="consensus: estimate", unit="frame", disable=not progress):
        frame = ctx.recording[i]
        for e in estimator.estimate(frame):
            if e.score < min_score or e.object_name not in names:
                continue
            box = np.asarray(e.box if e.box is not None else (0, 0, 0, 0), np.float64)
            rows.append((i, names[e.object_name], e.T_cam_obj, float(e.score), box, e.mask))
    if not rows:
        return FrameEstimates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4, 4)), np.zeros(0),
                              np.zeros((0, 4)), [])
    return FrameEstimates(np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
                          np.stack([r[2] for r in rows]), np.array([r[3] for r in rows]),
                          np.stack([r[4] for r in rows]), [r[5] for r in rows])


# ---------------------------------------------------------------------------------------------- robust averaging
@dataclass(slots=True)
class WorldPoseFit:
    """Result of :func:`robust_world_pose`."""

    T_world_obj: np.ndarray  # (4, 4), NaN when no consensus
    inliers: np.ndarray  # (M,) bool
    aligned: np.ndarray  # (M, 4, 4) candidates moved to their symmetry closest to the consensus
    translation_residual: np.ndarray  # (M,) metres
    rotation_residual: np.ndarray  # (M,) radians

    @property
    def success(self) -> bool:
        return bool(np.isfinite(self.T_world_obj).all())


def _fit(aligned: np.ndarray, weights: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    w = weights / weights.sum()
    T[:3, 3] = (w[:, None] * aligned[:, :3, 3]).sum(0)
    T[:3, :3] = average_rotations_robust(aligned[:, :3, :3], w)
    return T


def robust_world_pose(candidates: np.ndarray, weights: np.ndarray, symmetry: Symmetry, diameter: float,
                      inlier_translation: float = 0.15, inlier_rotation_deg: float = 20.0, min_inliers: int = 3,
                      refit_iterations: int = 3) -> WorldPoseFit:
    """Symmetry-aware RANSAC average of world-pose candidates.

    Args:
        candidates: (M, 4, 4) ``T_world_obj`` candidates (one per frame the object was estimated in).
        weights: (M,) non-negative candidate weights (estimate scores).
        symmetry: the object's symmetries; candidates are compared modulo them.
        diameter: object diameter (m); the translation gate is ``inlier_translation * diameter``.
        inlier_rotation_deg: rotation gate.
        min_inliers: fewer agreeing candidates -> no consensus (NaN pose).
        refit_iterations: re-gating rounds against the refined pose.

    Every candidate is tried as a hypothesis (exhaustive RANSAC; M is the number of frames). Rotations of
    continuously symmetric objects are aligned exactly about the axis (see ``closest_symmetric_pose``).
    """
    check_shape(candidates, ("M", 4, 4), "candidates")
    M = len(candidates)
    weights = np.asarray(weights, np.float64).reshape(-1)
    if weights.shape != (M,):
        raise ConfigError(f"robust_world_pose: weights has {weights.shape[0]} values for {M} candidates")
    nan = np.full((4, 4), np.nan)
    empty = WorldPoseFit(nan, np.zeros(M, bool), candidates.copy(), np.full(M, np.inf), np.full(M, np.inf))
    if M < min_inliers or M == 0:
        return empty
    t_gate, r_gate = inlier_translation * diameter, math.radians(inlier_rotation_deg)
    # aligned[h, j] = candidate j at the symmetry closest to hypothesis h
    aligned = closest_symmetric_pose(np.broadcast_to(candidates[:, None], (M, M, 4, 4)),
                                     np.broadcast_to(candidates[None], (M, M, 4, 4)), symmetry)
    dt = np.linalg.norm(aligned[..., :3, 3] - candidates[:, None, :3, 3], axis=-1)
    dr = rotation_angle(candidates[:, None, :3, :3], aligned[..., :3, :3])
    inl = (dt < t_gate) & (dr < r_gate)
    support = (inl * weights[None]).sum(1) + 1e-9 * inl.sum(1)
    h = int(np.argmax(support))
    if inl[h].sum() < min_inliers:
        return empty
    T = _fit(aligned[h][inl[h]], weights[inl[h]] + 1e-12)
    for _ in range(refit_iterations):
        fit = gate_candidates(T, candidates, symmetry, t_gate, r_gate)
        if fit.inliers.sum() < min_inliers:
            break
        T = _fit(fit.aligned[fit.inliers], weights[fit.inliers] + 1e-12)
    fit = gate_candidates(T, candidates, symmetry, t_gate, r_gate)
    return fit if fit.inliers.sum() >= min_inliers else empty


def gate_candidates(T_world_obj: np.ndarray, candidates: np.ndarray, symmetry: Symmetry, t_gate: float,
                    r_gate: float) -> WorldPoseFit:
    """The candidates (M, 4, 4) that agree with ``T_world_obj`` (4, 4) modulo ``symmetry``: translation within
    ``t_gate`` metres and rotation within ``r_gate`` radians."""
    M = len(candidates)
    al = closest_symmetric_pose(np.broadcast_to(T_world_obj, (M, 4, 4)), candidates, symmetry)
    dt = np.linalg.norm(al[:, :3, 3] - T_world_obj[:3, 3], axis=-1)
    dr = rotation_angle(np.broadcast_to(T_world_obj[:3, :3], (M, 3, 3)), al[:, :3, :3])
    return WorldPoseFit(T_world_obj, (dt < t_gate) & (dr < r_gate), al, dt, dr)


# ---------------------------------------------------------------------------------------------- drift model
def planar_transforms(xyyaw: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4) transforms of planar poses ``xyyaw`` (N, 3) = (x, y, yaw about z), differentiable."""
    check_shape(xyyaw, ("N", 3), "xyyaw")
    c, s = torch.cos(xyyaw[:, 2]), torch.sin(xyyaw[:, 2])
    z, o = torch.zeros_like(c), torch.ones_like(c)
    rows = [torch.stack([c, -s, z, xyyaw[:, 0]], -1), torch.stack([s, c, z, xyyaw[:, 1]], -1),
            torch.stack([z, z, o, z], -1), torch.stack([z, z, z, o], -1)]
    return torch.stack(rows, -2)


def drift_corrections(knots: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """(N, 4, 4) per-frame corrections at ``times`` (N,) in [0, 1] from ``knots`` (K, 3) (x, y, yaw) placed evenly
    over [0, 1] (linear interpolation; one knot = a constant correction)."""
    check_shape(knots, ("K", 3), "knots")
    K = knots.shape[0]
    if K == 1:
        return planar_transforms(knots.expand(times.shape[0], 3))
    pos = times.clamp(0, 1) * (K - 1)
    lo = pos.floor().long().clamp(max=K - 2)
    a = (pos - lo.to(pos.dtype))[:, None]
    return planar_transforms(knots[lo] * (1 - a) + knots[lo + 1] * a)


# ---------------------------------------------------------------------------------------------- joint refinement
@dataclass(slots=True)
class RefineInputs:
    """Observations for :func:`refine_consensus` (P inlier (frame, object) pairs over N frames, O objects)."""

    T_world_obj: np.ndarray  # (O, 4, 4) initial consensus (rows of objects without consensus are ignored)
    T_world_cam: np.ndarray  # (N, 4, 4) recorded (drifting) camera poses
    times: np.ndarray  # (N,) in [0, 1]
    pair_frame: np.ndarray  # (P,)
    pair_obj: np.ndarray  # (P,)
    pair_T_cam_obj: np.ndarray  # (P, 4, 4) estimates aligned to the consensus symmetry
    pair_weight: np.ndarray  # (P,)
    crop_K: np.ndarray  # (P, 3, 3) intrinsics of each pair's crop
    target_mask: np.ndarray  # (P, S, S) float segmenter mask in the crop
    ignore: np.ndarray  # (P, S, S) bool: other objects' masks
    target_depth: np.ndarray | None  # (P, S, S) measured depth in the crop (0 invalid) or None
    fixed: np.ndarray | None = None  # (O,) bool: objects whose world pose is held (registered to the depth)


@dataclass(slots=True)
class RefineOutput:
    T_world_obj: np.ndarray  # (O, 4, 4)
    corrections: np.ndarray  # (N, 4, 4) T_world_world' to left-multiply the recorded camera poses
    knots: np.ndarray  # (K, 3)
    losses: dict[str, float]
    history: list[dict[str, float]]


def _keypoint_residual(T_pred: torch.Tensor, T_obs: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(P,) mean distance of points ``pts`` (P, Q, 3) under predicted vs observed poses (P, 4, 4)."""
    a = pts @ T_pred[:, :3, :3].transpose(1, 2) + T_pred[:, None, :3, 3]
    b = pts @ T_obs[:, :3, :3].transpose(1, 2) + T_obs[:, None, :3, 3]
    return (a - b).norm(dim=-1).mean(-1)


def refine_consensus(objects: list[ObjectModel], inputs: RefineInputs, cfg: ConsensusConfig,
                     generator: torch.Generator, log_fn: Any = None) -> RefineOutput:
    """Jointly refine the world poses of the objects not ``inputs.fixed`` and (``cfg.drift == "correct"``) the
    planar drift knots; see the module docstring for the terms. ``log_fn(step, scalars)`` receives the losses of
    each iteration. Nothing to refine: no iteration runs."""
    dt = torch.float64
    O, P = len(objects), len(inputs.pair_frame)
    W0 = torch.as_tensor(np.nan_to_num(inputs.T_world_obj), dtype=dt)
    rec = torch.as_tensor(inputs.T_world_cam, dtype=dt)
    times = torch.as_tensor(inputs.times, dtype=dt)
    xi = torch.zeros(O, 6, dtype=dt, requires_grad=True)
    n_free = cfg.drift_knots - 1 if cfg.drift == "correct" else 0
    movable = np.isfinite(inputs.T_world_obj).all(axis=(1, 2))
    if inputs.fixed is not None:
        movable &= ~inputs.fixed
    move = torch.as_tensor(movable, dtype=dt)[:, None]
    iterations = cfg.refine_iterations if P and (n_free > 0 or movable.any()) else 0
    free = torch.zeros(max(n_free, 0), 3, dtype=dt, requires_grad=True)
    params = [xi] + ([free] if n_free > 0 else [])
    opt = torch.optim.Adam(params, lr=cfg.refine_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.refine_iterations), eta_min=cfg.refine_lr * 0.05)
    diam = torch.as_tensor([m.diameter for m in objects], dtype=dt)
    kp = torch.as_tensor(np.stack([m.keypoints for m in objects]), dtype=dt)  # (O, 9, 3)
    meshes = [RenderMesh(torch.as_tensor(m.vertices, dtype=torch.float32), torch.as_tensor(m.faces)) for m in objects]
    pf = torch.as_tensor(inputs.pair_frame)
    po = torch.as_tensor(inputs.pair_obj)
    T_obs = torch.as_tensor(inputs.pair_T_cam_obj, dtype=dt)
    pw = torch.as_tensor(inputs.pair_weight, dtype=dt)
    Kc = torch.as_tensor(inputs.crop_K, dtype=torch.float32)
    tmask = torch.as_tensor(inputs.target_mask, dtype=torch.float32)
    ign = torch.as_tensor(inputs.ignore)
    tdepth = None if inputs.target_depth is None else torch.as_tensor(inputs.target_depth, dtype=torch.float32)
    S = tmask.shape[-1] if P else cfg.crop_size

    def knots() -> torch.Tensor:
        zero = torch.zeros(1, 3, dtype=dt)
        return torch.cat([zero, free]) if n_free > 0 else zero

    def cam_obj(idx: torch.Tensor) -> torch.Tensor:
        W = W0 @ se3_exp(xi * move)  # (O, 4, 4), perturbation in the object frame
        C = drift_corrections(knots(), times[pf[idx]])
        T_wc = C @ rec[pf[idx]]
        return torch.linalg.inv(T_wc) @ W[po[idx]]

    history: list[dict[str, float]] = []
    last: dict[str, float] = {}
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        pred = cam_obj(torch.arange(P))
        r = _keypoint_residual(pred, T_obs, kp[po]) / diam[po]
        c = 0.05
        l_kp = (pw * c ** 2 * torch.log1p((r / c) ** 2)).sum() / pw.sum().clamp_min(1e-9) / c ** 2
        loss = cfg.keypoint_weight * l_kp
        scal = {"keypoint": float(l_kp.detach())}
        use_depth = tdepth is not None and cfg.depth_weight > 0
        if cfg.silhouette_weight > 0 or use_depth:
            sel = torch.randperm(P, generator=generator)[:min(cfg.refine_batch, P)]
            sums = torch.zeros(4, dtype=torch.float32)  # silhouette error, its pixels, depth error, its pixels
            for k in po[sel].unique().tolist():  # one render call per object: no padding to the largest mesh
                idx = sel[po[sel] == k]
                ps = pred[idx]
                out = render(meshes[k], ps[:, :3, :3].float(), ps[:, :3, 3].float(), Kc[idx], (S, S), coords=False,
                             attributes=False, visibility=False)
                valid = ~ign[idx]
                part = [(((out.silhouette - tmask[idx]) ** 2) * valid).sum(), valid.sum().float()]
                if use_depth:
                    d_obs = tdepth[idx]
                    m = out.mask & (d_obs > 0) & (tmask[idx] > 0.5)
                    err = (out.depth - d_obs).abs().clamp(max=cfg.depth_truncation) / cfg.depth_truncation
                    part += [(err * m).sum(), m.sum().float()]
                else:
                    part += [torch.zeros(()), torch.zeros(())]
                sums = sums + torch.stack(part)
            l_sil = sums[0] / sums[1].clamp_min(1)
            loss = loss + cfg.silhouette_weight * l_sil.to(dt)
            scal["silhouette"] = float(l_sil.detach())
            if use_depth:
                l_depth = sums[2] / sums[3].clamp_min(1)
                loss = loss + cfg.depth_weight * l_depth.to(dt)
                scal["depth"] = float(l_depth.detach())
        if n_free > 0:
            steps = torch.diff(knots(), dim=0)
            l_smooth = (steps ** 2).sum()
            loss = loss + cfg.drift_smoothness * l_smooth
            scal["drift_smoothness"] = float(l_smooth.detach())
        scal["loss"] = float(loss.detach())
        loss.backward()
        opt.step()
        sched.step()
        history.append(scal)
        if log_fn is not None:
            log_fn(it + 1, scal)
        last = scal
    with torch.no_grad():
        W = (W0 @ se3_exp(xi * move)).numpy()
        corr = drift_corrections(knots(), times).numpy()
        kn = knots().numpy()
    W[~np.isfinite(inputs.T_world_obj).all(axis=(1, 2))] = np.nan
    return RefineOutput(W, corr, kn, last, history)


# ---------------------------------------------------------------------------------------------- the stage
def _crop_targets(est: FrameEstimates, sel: np.ndarray, T_cam_pred: np.ndarray,
                  objects: list[ObjectModel], K_of: Any, depth_of: Any, size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Crop intrinsics (P, 3, 3), target masks (P, S, S), ignore masks (P, S, S) and depth crops for pairs ``sel``."""
    Ks, masks, ignores, depths = [], [], [], []
    any_depth = False
    by_frame: dict[int, list[int]] = {}
    for j in range(len(est)):
        by_frame.setdefault(int(est.frame[j]), []).append(j)
    for p, j in enumerate(sel):
        i = int(est.frame[j])
        K = K_of(i)
        box = square_box(amodal_box(K.K, T_cam_pred[p], objects[int(est.obj_index[j])].vertices), 1.2)
        A = crop_affine(box, size)
        Ks.append(K.crop_resize(tuple(box), size).K)
        own = est.masks[j]
        H, W = K.height, K.width
        own = np.zeros((H, W), bool) if own is None else own
        others = np.zeros((H, W), bool)
        for q in by_frame[i]:
            if q != j and est.masks[q] is not None:
                others |= est.masks[q]
        others &= ~own
        masks.append(cv2.warpAffine(own.astype(np.float32), A, (size, size), flags=cv2.INTER_LINEAR))
        ignores.append(cv2.warpAffine(others.astype(np.uint8), A, (size, size), flags=cv2.INTER_NEAREST) > 0)
        d = depth_of(i)
        if d is not None:
            any_depth = True
            d = np.nan_to_num(d.astype(np.float32), nan=0.0)
            depths.append(cv2.warpAffine(d, A, (size, size), flags=cv2.INTER_NEAREST))
        else:
            depths.append(np.zeros((size, size), np.float32))
    return (np.stack(Ks) if Ks else np.zeros((0, 3, 3)), np.stack(masks) if masks else np.zeros((0, size, size)),
            np.stack(ignores) if ignores else np.zeros((0, size, size), bool),
            np.stack(depths) if any_depth else None)


def render_pseudo_labels(objects: list[ObjectModel], T_world_obj: np.ndarray, object_confidence: np.ndarray,
                         T_world_cam: np.ndarray, frame_weight: np.ndarray, K_of: Any, depth_of: Any,
                         cfg: ConsensusConfig, names: list[str]) -> PseudoLabels:
    """Render every object with a consensus pose into every frame: pose, amodal box, visible mask, confidence."""
    meshes = [RenderMesh(torch.as_tensor(m.vertices, dtype=torch.float32), torch.as_tensor(m.faces)) for m in objects]
    have = [k for k in range(len(objects)) if np.isfinite(T_world_obj[k]).all()]
    instances: list[PseudoInstance] = []
    for i in range(len(T_world_cam)):
        if not have:
            break
        K = K_of(i)
        T = invert(T_world_cam[i])[None] @ T_world_obj[have]  # (A, 4, 4)
        front = T[:, 2, 3] > 0.05
        ks = [k for k, f in zip(have, front) if f]
        if not ks:
            continue
        Tk = T[front]
        with torch.no_grad():
            out = render([meshes[k] for k in ks], torch.as_tensor(Tk[:, :3, :3], dtype=torch.float32),
                         torch.as_tensor(Tk[:, :3, 3], dtype=torch.float32),
                         torch.as_tensor(np.broadcast_to(K.K, (len(ks), 3, 3)).copy(), dtype=torch.float32),
                         (K.height, K.width), coords=False, attributes=False, silhouette=False, visibility=False)
        mask = out.mask.numpy()
        depth = np.where(mask, out.depth.numpy(), np.inf)
        nearest = depth.min(axis=0)
        d_obs = depth_of(i)
        for a, k in enumerate(ks):
            amodal = mask[a].sum()
            if amodal == 0:
                continue
            vis = mask[a] & (depth[a] <= nearest + 1e-4)
            if d_obs is not None:
                valid = np.isfinite(d_obs) & (d_obs > 0)
                vis &= ~valid | (np.abs(d_obs - depth[a]) < cfg.mask_depth_tolerance)
            frac = float(vis.sum() / amodal)
            if frac < cfg.min_visible_fraction:
                continue
            box = amodal_box(K.K, Tk[a], objects[k].vertices)
            instances.append(PseudoInstance(i, k, Tk[a], box, float(object_confidence[k] * frame_weight[i]), vis,
                                            frac))
    return PseudoLabels(names, T_world_obj, object_confidence, T_world_cam, frame_weight, instances)


class MultiviewConsensus:
    """Stage ``multiview_consensus``: pseudo labels from per-frame estimates + camera poses (module docstring)."""

    name: ClassVar[str] = "multiview_consensus"
    Config: ClassVar[type] = ConsensusConfig

    def __init__(self, estimates: FrameEstimates | None = None) -> None:
        """``estimates``: per-frame estimates to use instead of running the bundle's estimator (to study the
        consensus alone, e.g. ``selfpose bench adapt --consensus-noise``); the pipeline never passes any."""
        self.estimates = estimates

    def run(self, ctx: AdaptContext, cfg: ConsensusConfig) -> StageResult:
        cfg.validate()
        d = ctx.stage_dir(self.name)
        rec = ctx.recording
        n = len(rec)
        frames = np.arange(n) if not cfg.max_frames or cfg.max_frames >= n else \
            np.unique(np.linspace(0, n - 1, cfg.max_frames).round().astype(np.int64))
        mine = frames[ctx.dist.rank::ctx.dist.world_size]
        part = d / f"estimates.rank{ctx.dist.rank}of{ctx.dist.world_size}.npz"
        if self.estimates is not None:
            self.estimates.subset(np.isin(self.estimates.frame, mine)).save(part)
        elif not (ctx.resume and part.is_file()):
            # the learned path's per-frame estimates: the registration below already finds the objects in the
            # fused depth, the table-top search per frame would repeat that at seconds per frame
            estimator = PoseEstimator(ctx.bundle.path or d, ctx.device, objects_config=ctx.objects_config,
                                      config=EstimatorConfig(detector_threshold=cfg.detection_threshold,
                                                             return_masks=True, depth_search=False),
                                      bundle=ctx.bundle)
            estimate_frames(ctx, mine, estimator, cfg.min_score, ctx.progress and ctx.dist.is_main).save(part)
        ctx.dist.barrier()
        out_path = d / "pseudo_labels.npz"
        result_path = d / "consensus.yaml"
        if ctx.dist.is_main:
            parts = [FrameEstimates.load(d / f"estimates.rank{r}of{ctx.dist.world_size}.npz")
                     for r in range(ctx.dist.world_size)]
            est = FrameEstimates.concatenate(parts)
            pseudo, details, losses, artefacts = self._consensus(ctx, cfg, est, frames)
            pseudo.save(out_path)
            result_path.write_text(yaml.safe_dump({"details": details, "losses": losses}, sort_keys=False))
        ctx.dist.barrier()
        saved = load_state_yaml(result_path, "consensus result")
        if not isinstance(saved, dict) or not isinstance(saved.get("losses"), dict) \
                or not isinstance(saved.get("details"), dict):
            raise fail(result_path, "consensus result", "keys 'losses', 'details'", "must be mappings")
        ctx.pseudo = PseudoLabels.load(out_path)
        ctx.bundle.appearance = learn_appearance(rec, ctx.pseudo, ctx.objects)
        return StageResult(losses=saved["losses"], details=saved["details"],
                           artefacts={"pseudo_labels": out_path} | ({"drift": d / "drift.png"}
                                                                     if (d / "drift.png").is_file() else {}))

    def _consensus(self, ctx: AdaptContext, cfg: ConsensusConfig, est: FrameEstimates, frames: np.ndarray
                   ) -> tuple[PseudoLabels, dict[str, Any], dict[str, float], dict[str, Path]]:
        rec = ctx.recording
        objects = ctx.objects
        names = [m.name for m in objects]
        n = len(rec)
        details: dict[str, Any] = {}
        T_rec, cfg = self._depth_odometry(ctx, cfg, frames, details)
        stamps = rec.stamps_ns.astype(np.float64)
        times = (stamps - stamps.min()) / max(1.0, stamps.max() - stamps.min())
        O = len(objects)
        cand = T_rec[est.frame] @ est.T_cam_obj if len(est) else np.zeros((0, 4, 4))
        weights = cfg.score_floor + est.score
        T_world = np.full((O, 4, 4), np.nan)
        conf = np.zeros(O)
        aligned = est.T_cam_obj.copy()
        inlier = np.zeros(len(est), bool)
        details |= {"frames_estimated": int(len(frames)), "estimates": int(len(est)), "objects": {}}
        registered = self._register(ctx, cfg, frames, T_rec)
        for k, m in enumerate(objects):
            idx = np.nonzero(est.obj_index == k)[0]
            if k in registered:  # the depth registration's pose; the estimates that agree with it are inliers
                fit = gate_candidates(registered[k].T_world_obj, cand[idx], m.symmetry,
                                      cfg.inlier_translation * m.diameter, math.radians(cfg.inlier_rotation_deg))
                details["objects"][m.name] = {"estimates": int(len(idx)), "inliers": int(fit.inliers.sum()),
                                              "registration_fscore": round(registered[k].fscore, 4)}
                T_world[k] = fit.T_world_obj
                conf[k] = registered[k].fscore
                inlier[idx] = fit.inliers
                aligned[idx] = invert(T_rec[est.frame[idx]]) @ fit.aligned
                continue
            fit = robust_world_pose(cand[idx], weights[idx], m.symmetry, m.diameter, cfg.inlier_translation,
                                    cfg.inlier_rotation_deg, cfg.min_inliers, cfg.refit_iterations)
            details["objects"][m.name] = {"estimates": int(len(idx)), "inliers": int(fit.inliers.sum())}
            if not fit.success or fit.inliers.sum() < cfg.min_inlier_fraction * len(idx):
                log.warning("multiview_consensus: no consensus for %s (%d of %d estimates agree)", m.name,
                            int(fit.inliers.sum()), len(idx))
                continue
            T_world[k] = fit.T_world_obj
            conf[k] = float(1.0 - np.exp(-fit.inliers.sum() / cfg.confidence_inliers))
            inlier[idx] = fit.inliers
            aligned[idx] = invert(T_rec[est.frame[idx]]) @ fit.aligned
        frames_cache: dict[int, Any] = {}

        def frame(i: int) -> Any:
            if i not in frames_cache:
                frames_cache.clear()
                frames_cache[i] = rec[i]
            return frames_cache[i]

        sel = np.nonzero(inlier)[0]
        sel = sel[np.argsort(est.frame[sel], kind="stable")]
        T_pred0 = invert(T_rec[est.frame[sel]]) @ T_world[est.obj_index[sel]] if len(sel) else np.zeros((0, 4, 4))
        Kc, tm, ign, tdep = _crop_targets(est, sel, T_pred0, objects, rec.intrinsics,
                                          lambda i: frame(i).depth, cfg.crop_size)
        inputs = RefineInputs(T_world, T_rec, times, est.frame[sel], est.obj_index[sel], aligned[sel],
                              weights[sel], Kc, tm, ign, tdep, fixed=np.isin(np.arange(O), list(registered)))
        slog = ctx.scalar_log(self.name)
        try:
            ref = refine_consensus(objects, inputs, cfg, ctx.generator(self.name),
                                   lambda step, s: slog.add(step, {f"{self.name}/{k}": v for k, v in s.items()}))
        finally:
            slog.close()
        T_wc = ref.corrections @ T_rec
        # per-frame residual -> weight
        weight = np.ones(n)
        if len(sel):
            pred = invert(T_wc[est.frame[sel]]) @ ref.T_world_obj[est.obj_index[sel]]
            kp = np.stack([objects[k].keypoints for k in est.obj_index[sel]])
            a = kp @ np.swapaxes(pred[:, :3, :3], 1, 2) + pred[:, None, :3, 3]
            b = kp @ np.swapaxes(aligned[sel][:, :3, :3], 1, 2) + aligned[sel][:, None, :3, 3]
            diam = np.array([objects[k].diameter for k in est.obj_index[sel]])
            r = np.linalg.norm(a - b, axis=-1).mean(-1) / diam
            for i in np.unique(est.frame[sel]):
                ri = float(np.median(r[est.frame[sel] == i]))
                weight[i] = 1.0 / (1.0 + (ri / cfg.residual_tau) ** 2)
            for k, m in enumerate(objects):
                rk = r[est.obj_index[sel] == k]
                if len(rk):
                    details["objects"][m.name]["median_residual_diameters"] = round(float(np.median(rk)), 5)
        for k, m in enumerate(objects):
            details["objects"][m.name]["confidence"] = round(float(conf[k]), 4)
            if np.isfinite(ref.T_world_obj[k]).all():
                details["objects"][m.name]["T_world_obj"] = np.round(ref.T_world_obj[k], 6).tolist()
        total = T_wc @ invert(rec.poses)  # depth odometry and refinement together
        corr_t = total[:, :2, 3]
        corr_yaw = np.arctan2(total[:, 1, 0], total[:, 0, 0])
        details["drift_correction"] = {"max_translation_m": round(float(np.linalg.norm(corr_t, axis=1).max()), 5),
                                       "max_yaw_deg": round(float(np.degrees(np.abs(corr_yaw)).max()), 4),
                                       "knots": np.round(ref.knots, 6).tolist()}
        details["frames_down_weighted"] = int((weight < 0.5).sum())
        pseudo = render_pseudo_labels(objects, ref.T_world_obj, conf, T_wc, weight, rec.intrinsics,
                                      lambda i: frame(i).depth, cfg, names)
        details["pseudo_instances"] = len(pseudo.instances)
        self._plot_drift(ctx.stage_dir(self.name) / "drift.png", times, corr_t, corr_yaw, weight)
        return pseudo, details, {k: round(v, 6) for k, v in ref.losses.items()}, {}

    @staticmethod
    def _depth_odometry(ctx: AdaptContext, cfg: ConsensusConfig, frames: np.ndarray, details: dict[str, Any]
                        ) -> tuple[np.ndarray, ConsensusConfig]:
        """The camera poses to use (recorded, or corrected by the depth pose graph with ``drift: depth``) and the
        config to go on with (``drift: depth`` without depth falls back to ``correct``)."""
        rec = ctx.recording
        if cfg.drift != "depth":
            return rec.poses, cfg
        if not rec.summary().has_depth:
            log.warning("multiview_consensus: drift: depth needs depth images; the recording has none, so the drift "
                        "is estimated in the refinement (drift: correct)")
            return rec.poses, replace(cfg, drift="correct")
        bar = None
        if ctx.progress and ctx.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(desc="depth odometry (frame pairs)", unit="pair")

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            odo = track_depth(lambda i: rec[i].depth, frames.tolist(), rec.poses, rec.intrinsics, cfg.depth_odometry,
                              progress)
        finally:
            if bar is not None:
                bar.close()
        corrected = odo.corrections @ rec.poses
        shift = np.linalg.norm(corrected[:, :3, 3] - rec.poses[:, :3, 3], axis=1)
        details["depth_odometry"] = {"edges": odo.edges, "weak_pairs": odo.weak_pairs, "failed": odo.failed,
                                     "max_camera_shift_m": round(float(shift.max()), 5)}
        if odo.failed or odo.edges == 0:
            if odo.edges == 0:
                log.warning("multiview_consensus: no two frames of the recording overlap enough for the depth "
                            "odometry (depth_odometry.max_angle_deg, max_baseline); the drift is estimated in the "
                            "refinement (drift: correct)")
            return rec.poses, replace(cfg, drift="correct")
        log.info("multiview_consensus: depth odometry from %d frame pairs moved the cameras by up to %.1f cm",
                 odo.edges, 100 * shift.max())
        return corrected, cfg

    @staticmethod
    def _register(ctx: AdaptContext, cfg: ConsensusConfig, frames: np.ndarray, T_world_cam: np.ndarray
                  ) -> dict[int, Any]:
        """Depth-based world poses {object index: RegisteredObject} (empty without depth or when switched off)."""
        rec = ctx.recording
        if not cfg.scene_registration or not rec.summary().has_depth:
            return {}
        points = fuse_depth(lambda i: rec[i].depth, frames.tolist(), T_world_cam, rec.intrinsics, cfg.registration)
        found = register_objects(ctx.objects, points, T_world_cam[frames], cfg.registration)
        log.info("multiview_consensus: scene registration found %d of %d objects in %d fused points", len(found),
                 len(ctx.objects), len(points))
        return found

    @staticmethod
    def _plot_drift(path: Path, times: np.ndarray, corr_t: np.ndarray, corr_yaw: np.ndarray,
                    weight: np.ndarray) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3))
        ax[0].plot(times, 100 * corr_t[:, 0], label="x [cm]")
        ax[0].plot(times, 100 * corr_t[:, 1], label="y [cm]")
        ax[0].plot(times, np.degrees(corr_yaw), label="yaw [deg]")
        ax[0].set_xlabel("time (fraction of the recording)")
        ax[0].set_title("estimated odometry correction")
        ax[0].legend(fontsize=7)
        ax[1].plot(times, weight, ".")
        ax[1].set_ylim(0, 1.05)
        ax[1].set_title("frame weight")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
