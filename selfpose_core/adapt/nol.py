"""NOL at run time: source selection, source-pose refinement (Eq. 3) and rendering of the estimator's training set.

Flow for one object (docs/nol.md): frames of the robot's loop with object poses (multiview consensus, or ground
truth from a BOP dataset) -> :func:`prepare_sources` crops the object from each frame and drops unusable ones
(object outside the image, fully occluded, pose that disagrees with the mask) -> :func:`select_by_new_points`
(SMOT rule) or :func:`select_by_pose` (LINEMOD rule) keeps a few -> :class:`NolRenderer` refines the kept poses
once (:func:`refine_source_poses`) and renders any target pose, picking 6 of them per target by the SMOT rule
restricted to the target's visible surface -> :func:`render_nol_bank` renders the upper hemisphere every 5 deg with
in-plane rotations -> :class:`NolCrops` / :class:`NolScenes` turn the bank into training samples with the same keys
as :class:`selfpose_core.data.synthetic.SyntheticCrops` / ``SyntheticScenes``.

Difference from the paper (documented): the paper refines the source poses for every target (3.6 s per image on a
GTX 1080, 25 iterations); we refine each source set once, against NOL's own first prediction at every source
viewpoint, and reuse the refined poses for all targets, so the per-image cost is one forward pass.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.finetune import PseudoLabelledFrames
from selfpose_core.adapt.stage import StageResult
from selfpose_core.config_io import require_at_least
from selfpose_core.data.backgrounds import occlude_object, photometric_augment, random_background
from selfpose_core.data.crops import ObjectGeometry, amodal_box, crop_image, crop_sample, square_box
from selfpose_core.data.nol_training_set import look_at_rotation
from selfpose_core.data.real_crops import RealCrops, RealScenes
from selfpose_core.data.synthetic import SyntheticConfig, SyntheticCrops, SyntheticScenes
from selfpose_core.errors import ConfigError, DatasetError, ShapeError
from selfpose_core.geometry.se3 import rotation_angle, so3_exp
from selfpose_core.mesh.measures import sample_surface
from selfpose_core.models.harness import LossWeights, StepBatches, TrainingJob, joint_losses, step_batches
from selfpose_core.models.nol import (NolMesh, NolNet, TargetRaster, depth_tolerance, load_nol, project_sources,
                                      rasterize_targets, render_source_depth)
from selfpose_core.render import render
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.types import CameraIntrinsics, ObjectModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class NolSourceSet:
    """Source crops of one object: ``images`` (K, 3, S, S) float in [0, 1], ``masks`` (K, S, S) bool, crop
    intrinsics ``K`` (K, 3, 3) float64, poses ``T_cam_obj`` (K, 4, 4) float64, ``frame_ids`` (K,) of the caller's
    frames, and ``dropped``: (frame id, reason) of every frame that was not usable."""

    images: torch.Tensor
    masks: torch.Tensor
    K: np.ndarray
    T_cam_obj: np.ndarray
    frame_ids: list[int]
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def subset(self, index: Sequence[int]) -> NolSourceSet:
        """The sources at positions ``index`` (the drop report is kept)."""
        idx = list(index)
        return NolSourceSet(self.images[idx], self.masks[idx], self.K[idx], self.T_cam_obj[idx],
                            [self.frame_ids[i] for i in idx], list(self.dropped))

    def with_poses(self, T_cam_obj: np.ndarray) -> NolSourceSet:
        return NolSourceSet(self.images, self.masks, self.K, np.asarray(T_cam_obj, np.float64), self.frame_ids,
                            list(self.dropped))


def crop_view(image: np.ndarray, K: CameraIntrinsics, model: ObjectModel, T_cam_obj: np.ndarray, size: int,
              padding: float = 1.15) -> tuple[np.ndarray, CameraIntrinsics, np.ndarray]:
    """The ``size`` x ``size`` crop of ``image`` (H, W[, C]) around ``model`` projected at ``T_cam_obj``.

    Returns (crop, crop intrinsics, box (4,) x0, y0, x1, y1 in pixel edges)."""
    box = square_box(amodal_box(K.K, T_cam_obj, np.asarray(model.vertices, np.float64)), padding)
    interp = cv2.INTER_NEAREST if image.dtype == bool or image.ndim == 2 else cv2.INTER_AREA
    src = image.astype(np.uint8) if image.dtype == bool else image
    crop = crop_image(src, box, size, interp)
    return (crop > 0 if image.dtype == bool else crop), K.crop_resize(tuple(box), size), box


def _silhouettes(mesh: NolMesh, T: np.ndarray, K: np.ndarray, size: int) -> torch.Tensor:
    depth = render_source_depth(mesh, torch.as_tensor(T[:, :3, :3], dtype=torch.float32),
                                torch.as_tensor(T[:, :3, 3], dtype=torch.float32),
                                torch.as_tensor(K, dtype=torch.float32), (size, size))
    return depth > 0


def prepare_sources(model: ObjectModel, images: Sequence[np.ndarray], T_cam_obj: np.ndarray,
                    K: CameraIntrinsics | Sequence[CameraIntrinsics], masks: Sequence[np.ndarray | None] | None = None,
                    *, crop_size: int = 64, frame_ids: Sequence[int] | None = None, min_pixels: int = 20,
                    min_visible: float = 0.05, min_agreement: float = 0.5) -> NolSourceSet:
    """Crop the object from every frame and keep the usable ones.

    Args:
        model: the object (untextured mesh). images: N RGB uint8 frames (H, W, 3). T_cam_obj: (N, 4, 4) poses.
        K: the camera (one for all frames, or one per frame). masks: N visible-object masks (H, W) bool or None
            (None: the silhouette rendered at the pose is used, which cannot catch occluders or wrong poses).
        crop_size: S. frame_ids: the caller's ids for the report (default 0..N-1).
        min_pixels / min_visible: a frame whose mask has fewer pixels, or covers less than this fraction of the
            rendered silhouette, is dropped as occluded.
        min_agreement: a frame whose mask lies less than this fraction inside the rendered silhouette is dropped
            (the pose disagrees with the image: wildly wrong pose or wrong mask).

    Returns: :class:`NolSourceSet`; ``dropped`` names every rejected frame and why (also logged).
    Raises ShapeError for inconsistent inputs.
    """
    T_cam_obj = np.asarray(T_cam_obj, np.float64)
    n = len(images)
    if T_cam_obj.shape != (n, 4, 4):
        raise ShapeError(f"T_cam_obj must be ({n}, 4, 4) for {n} images, got {T_cam_obj.shape}")
    cams = [K] * n if isinstance(K, CameraIntrinsics) else list(K)
    masks = [None] * n if masks is None else list(masks)
    ids = list(range(n)) if frame_ids is None else [int(i) for i in frame_ids]
    if len(cams) != n or len(masks) != n or len(ids) != n:
        raise ShapeError(f"prepare_sources: {n} images but {len(cams)} cameras, {len(masks)} masks, {len(ids)} ids")
    mesh = NolMesh.from_object_model(model)
    crops, mcrops, Ks, keep, dropped = [], [], [], [], []
    for i in range(n):
        T = T_cam_obj[i]
        if T[2, 3] <= 0 or not np.isfinite(T).all():
            dropped.append((ids[i], f"object behind the camera or non-finite pose (z = {T[2, 3]:.3f} m)"))
            continue
        img = np.asarray(images[i])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ShapeError(f"source image {ids[i]} must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        crop, Kc, box = crop_view(img, cams[i], model, T, crop_size)
        x0, y0, x1, y1 = box
        inter = max(0.0, min(x1, img.shape[1]) - max(x0, 0)) * max(0.0, min(y1, img.shape[0]) - max(y0, 0))
        if inter < 0.25 * (x1 - x0) * (y1 - y0):
            dropped.append((ids[i], "object mostly outside the image at this pose"))
            continue
        sil = _silhouettes(mesh, T[None], Kc.K[None], crop_size)[0].numpy()
        if masks[i] is None:
            m = sil
        else:
            mask = np.asarray(masks[i], bool)
            if mask.shape != img.shape[:2]:
                raise ShapeError(f"mask of source {ids[i]} must be {img.shape[:2]}, got {mask.shape}")
            m = crop_view(mask, cams[i], model, T, crop_size)[0]
            if m.sum() < min_pixels:
                dropped.append((ids[i], f"object occluded: {int(m.sum())} mask pixels in the crop at this pose "
                                        "(or the pose is far off)"))
                continue
            if (m & sil).sum() < min_agreement * m.sum():
                dropped.append((ids[i], f"pose disagrees with the mask: only {(m & sil).sum() / m.sum():.0%} of the "
                                        "mask lies inside the silhouette at this pose"))
                continue
            if (m & sil).sum() < min_visible * max(sil.sum(), 1):
                dropped.append((ids[i], f"object occluded: {(m & sil).sum() / max(sil.sum(), 1):.0%} of it visible"))
                continue
        crops.append(crop)
        mcrops.append(m)
        Ks.append(Kc.K)
        keep.append(i)
    for fid, why in dropped:
        log.warning("NOL source frame %d of %s dropped: %s", fid, model.name, why)
    S = crop_size
    imgs = torch.from_numpy(np.stack(crops).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous() \
        if crops else torch.zeros((0, 3, S, S))
    return NolSourceSet(imgs, torch.from_numpy(np.stack(mcrops)) if mcrops else torch.zeros((0, S, S), dtype=bool),
                        np.stack(Ks) if Ks else np.zeros((0, 3, 3)), T_cam_obj[keep], [ids[i] for i in keep], dropped)


def point_visibility(points: np.ndarray, T_cam_obj: np.ndarray, K: np.ndarray, depth: torch.Tensor,
                     masks: torch.Tensor | None, depth_tol: float) -> np.ndarray:
    """(N, P) bool: object ``points`` (P, 3) seen in view n (pose ``T_cam_obj`` (N, 4, 4), intrinsics ``K``
    (N, 3, 3), object depth ``depth`` (N, H, W)) -- in front, inside the image and mask, not self-occluded."""
    N, H, W = depth.shape
    X = points[None] @ np.swapaxes(T_cam_obj[:, :3, :3], 1, 2) + T_cam_obj[:, None, :3, 3]
    z = X[..., 2]
    zs = np.where(z > 1e-3, z, 1.0)
    u = K[:, None, 0, 0] * X[..., 0] / zs + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * X[..., 1] / zs + K[:, None, 1, 2]
    inside = (z > 1e-3) & (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5)
    ui = np.clip(np.round(u), 0, W - 1).astype(np.int64)
    vi = np.clip(np.round(v), 0, H - 1).astype(np.int64)
    k = np.arange(N)[:, None]
    d = depth.numpy()[k, vi, ui]
    ok = inside & (d > 0) & (np.abs(z - d) <= depth_tol)
    if masks is not None:
        ok &= masks.numpy()[k, vi, ui]
    return ok


def select_by_new_points(visible: np.ndarray, *, max_sources: int | None = None,
                         points: np.ndarray | None = None) -> list[int]:
    """SMOT rule (paper Sec. 4.2): repeatedly take the view that sees the most surface points not seen by the views
    taken so far; stop when no view adds a point (or at ``max_sources``).

    ``visible`` (N, P) bool; ``points`` (P,) bool restricts the count to those points (a target's visible surface).
    Returns indices in the order taken."""
    vis = np.asarray(visible, bool)
    if vis.ndim != 2:
        raise ShapeError(f"visible must be (N, P) bool, got {vis.shape}")
    if points is not None:
        vis = vis[:, np.asarray(points, bool)]
    seen = np.zeros(vis.shape[1], bool)
    chosen: list[int] = []
    limit = len(vis) if max_sources is None else min(max_sources, len(vis))
    while len(chosen) < limit:
        gain = (vis & ~seen).sum(1)
        gain[chosen] = -1
        best = int(np.argmax(gain)) if len(gain) else 0
        if len(gain) == 0 or gain[best] <= 0:
            break
        chosen.append(best)
        seen |= vis[best]
    return chosen


def choose_sources(model: ObjectModel, sources: NolSourceSet, *, max_sources: int = 16, n_points: int = 2000,
                   seed: int = 0) -> NolSourceSet:
    """The subset of ``sources`` picked by :func:`select_by_new_points` (SMOT rule) on ``n_points`` surface
    samples, at most ``max_sources`` (paper: up to 16 per object)."""
    if len(sources) == 0:
        return sources
    mesh = NolMesh.from_object_model(model)
    R, t, K = _tensors(sources)
    depth = render_source_depth(mesh, R, t, K, tuple(sources.images.shape[-2:]))
    vis = point_visibility(sample_surface(model.vertices, model.faces, n_points, np.random.default_rng(seed))[0], sources.T_cam_obj,
                           sources.K, depth, sources.masks, depth_tolerance(model.diameter))
    chosen = select_by_new_points(vis, max_sources=max_sources)
    log.info("NOL: %s: %d of %d source frames chosen (SMOT rule), seeing %.0f%% of the surface", model.name,
             len(chosen), len(sources), 100 * vis[chosen].any(0).mean() if chosen else 0.0)
    return sources.subset(chosen)


def select_by_pose(T_cam_obj: np.ndarray, rng: np.random.Generator, *, min_translation: float = 0.3,
                   min_rotation_deg: float = 45.0, max_sources: int = 16) -> list[int]:
    """LINEMOD rule (paper Sec. 4.2): pick a random remaining view, remove every view closer than
    ``min_translation`` metres AND ``min_rotation_deg`` to it, repeat until none remains (or ``max_sources``)."""
    T = np.asarray(T_cam_obj, np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ShapeError(f"T_cam_obj must be (N, 4, 4), got {T.shape}")
    remaining = list(range(len(T)))
    chosen: list[int] = []
    while remaining and len(chosen) < max_sources:
        pick = remaining[int(rng.integers(len(remaining)))]
        chosen.append(pick)
        rest = np.array(remaining)
        dt = np.linalg.norm(T[rest, :3, 3] - T[pick, :3, 3], axis=1)
        dr = np.degrees(np.asarray(rotation_angle(T[rest, :3, :3], np.broadcast_to(T[pick, :3, :3], (len(rest), 3, 3)))))
        remaining = [int(r) for r, a, b in zip(rest, dt, dr) if not (a < min_translation and b < min_rotation_deg)]
    return chosen


@dataclass(slots=True)
class RefineConfig:
    """Eq. 3 source-pose refinement: steepest-descent steps on a rotation vector (left-multiplied, so R stays in
    SO(3)) and a translation per source, normalised so that the source with the largest gradient moves by
    ``lr_rotation`` / ``lr_translation``; when the error rises the step is undone and halved; stop after
    ``max_iterations`` or after ``patience`` such failures in a row (the error stopped falling)."""

    max_iterations: int = 50
    patience: int = 3
    lr_rotation: float = 0.01  # radians, largest rotation step
    lr_translation: float = 0.003  # metres, largest translation step
    # a source is dropped after refinement when its error is a robust outlier: above median + outlier_z x 1.4826 x
    # MAD (median absolute deviation) and above outlier_ratio x median
    outlier_z: float = 5.0
    outlier_ratio: float = 1.5
    max_anchors: int = 8  # source viewpoints used as desired views (cost grows with anchors x sources)


@dataclass(slots=True)
class RefinementResult:
    T_cam_obj: np.ndarray  # (K, 4, 4) refined poses
    errors: list[float]  # total error per iteration (first = before any update)
    source_errors: np.ndarray  # (K,) final per-source error
    iterations: int
    seconds: float


def _tensors(sources: NolSourceSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = torch.as_tensor(sources.T_cam_obj, dtype=torch.float32)
    return T[:, :3, :3], T[:, :3, 3], torch.as_tensor(sources.K, dtype=torch.float32)


def refine_source_poses(net: NolNet, model: ObjectModel, sources: NolSourceSet,
                        config: RefineConfig | None = None) -> RefinementResult:
    """Refine the source poses by gradient descent on the projection error (paper Eq. 3), once per source set.

    The desired views are the viewpoints of the first ``max_anchors`` sources (fixed at their initial poses):
    NOL's first prediction ``X_S`` there, from all sources, is the reference; the error of source k is the mean absolute difference
    between its projected map ``P_k`` and that reference, over all channels and the pixels it covers, summed over
    the other viewpoints. Gradients reach the source poses through the projection (:func:`project_sources`).
    """
    cfg = config or RefineConfig()
    start = time.monotonic()
    n = len(sources)
    if n < 2:
        return RefinementResult(sources.T_cam_obj.copy(), [], np.zeros(n), 0, 0.0)
    mesh = NolMesh.from_object_model(model)
    tol = depth_tolerance(model.diameter)
    R0, t0, K = _tensors(sources)
    S = tuple(sources.images.shape[-2:])
    anchors = torch.arange(min(n, cfg.max_anchors))  # the first sources: choose_sources orders by coverage
    with torch.no_grad():
        feats = net.encode(sources.images)
        raster = rasterize_targets(mesh, R0[anchors], t0[anchors], K[anchors], S)  # desired views: source viewpoints
        P, valid = project_sources(mesh, feats, R0, t0, K, render_source_depth(mesh, R0, t0, K, S), sources.masks,
                                   raster, tol)
        ref = net.integrate(P, valid)["X_S"]  # (J, C, H, W)
    others = anchors[:, None] != torch.arange(n)[None]  # (J, K): a source is not compared at its own viewpoint
    omega = torch.zeros((n, 3), requires_grad=True)
    tau = torch.zeros((n, 3), requires_grad=True)

    def error(R: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        depth = render_source_depth(mesh, R, t, K, S)
        P, valid = project_sources(mesh, feats, R, t, K, depth, sources.masks, raster, tol)
        v = (valid & others[:, :, None, None]).to(P.dtype)  # (J, K, H, W)
        diff = (P - ref[:, None]).abs().mean(2)  # (J, K, H, W)
        per_src = (diff * v).sum((0, 2, 3)) / v.sum((0, 2, 3)).clamp_min(1.0)  # (K,)
        return per_src.sum(), per_src.detach()

    best = (float("inf"), sources.T_cam_obj.copy(), np.zeros(n))
    history: list[float] = []
    scale, failures, it = 1.0, 0, 0
    for it in range(cfg.max_iterations + 1):
        R = so3_exp(omega) @ R0
        t = t0 + tau
        e, per_src = error(R, t)
        history.append(float(e.detach()))
        if history[-1] < best[0] - 1e-6:
            T = np.tile(np.eye(4), (n, 1, 1))
            T[:, :3, :3] = R.detach().double().numpy()
            T[:, :3, 3] = t.detach().double().numpy()
            best, failures = (history[-1], T, per_src.numpy()), 0
            keep = (omega.detach().clone(), tau.detach().clone())
        else:  # the error rose: go back to the best poses and take half the step
            failures += 1
            scale *= 0.5
            with torch.no_grad():
                omega.copy_(keep[0])
                tau.copy_(keep[1])
            if failures >= cfg.patience:
                break
            R = so3_exp(omega) @ R0
            t = t0 + tau
            e, _ = error(R, t)
        if it == cfg.max_iterations:
            break
        omega.grad = tau.grad = None
        e.backward()
        with torch.no_grad():  # steepest descent, the largest step of all sources = lr x scale
            omega -= cfg.lr_rotation * scale * omega.grad / omega.grad.norm(dim=1).max().clamp_min(1e-12)
            tau -= cfg.lr_translation * scale * tau.grad / tau.grad.norm(dim=1).max().clamp_min(1e-12)
    best_T = best[1]
    best_src = best[2]
    return RefinementResult(best_T, history, best_src, it, time.monotonic() - start)


@dataclass(slots=True)
class NolRendering:
    """Rendered target crops: ``images`` (N, S, S, 3) float in [0, 1], ``masks`` (N, S, S) bool (pixels with at
    least one valid source, M_D), ``silhouettes`` (N, S, S) bool (object at the target pose), ``sources`` the
    source positions used per target."""

    images: np.ndarray
    masks: np.ndarray
    silhouettes: np.ndarray
    sources: list[list[int]]

    @property
    def coverage(self) -> np.ndarray:
        """(N,) fraction of the target silhouette that some source covers."""
        return self.masks.sum((1, 2)) / np.maximum(self.silhouettes.sum((1, 2)), 1)


class NolRenderer:
    """Renders one object in new poses from its source set (refined once, see :func:`refine_source_poses`).

    ``n_sources``: sources per target (paper: 6 at inference), chosen per target by the SMOT rule on the target's
    visible surface. ``refine``: run the refinement (else the given poses are used as they are). Sources whose
    error after refinement is a robust outlier (see :class:`RefineConfig`) are dropped and reported.
    """

    def __init__(self, net: NolNet, model: ObjectModel, sources: NolSourceSet, *, n_sources: int | None = None,
                 refine: bool = True, refine_config: RefineConfig | None = None, n_points: int = 2000,
                 seed: int = 0) -> None:
        if len(sources) == 0:
            raise DatasetError(f"NOL: no usable source image of {model.name} "
                               f"(dropped: {'; '.join(f'frame {i}: {w}' for i, w in sources.dropped) or 'none given'})")
        self.net = net.eval()
        self.model = model
        self.mesh = NolMesh.from_object_model(model)
        self.n_sources = int(n_sources or net.config.infer_sources)
        if len(sources) < self.n_sources:
            log.warning("NOL: only %d usable source image(s) of %s (%d wanted per target); rendering with fewer",
                        len(sources), model.name, self.n_sources)
        self.refinement: RefinementResult | None = None
        if refine:
            cfg = refine_config or RefineConfig()
            self.refinement = refine_source_poses(net, model, sources, cfg)
            sources = sources.with_poses(self.refinement.T_cam_obj)
            err = self.refinement.source_errors
            if len(err) >= 3:
                med = float(np.median(err))
                mad = float(np.median(np.abs(err - med)))
                bad = (err > med + cfg.outlier_z * 1.4826 * mad) & (err > cfg.outlier_ratio * med)
                if bad.any() and not bad.all():
                    for i in np.nonzero(bad)[0]:
                        sources.dropped.append((sources.frame_ids[i], f"outlier after refinement (error {err[i]:.3f}, "
                                                                      f"median {np.median(err):.3f})"))
                        log.warning("NOL source frame %d of %s dropped: outlier after pose refinement",
                                    sources.frame_ids[i], model.name)
                    sources = sources.subset(np.nonzero(~bad)[0])
        self.sources = sources
        self.tol = depth_tolerance(model.diameter)
        R, t, K = _tensors(sources)
        self._R, self._t, self._K = R, t, K
        S = tuple(sources.images.shape[-2:])
        with torch.no_grad():
            self._features = net.encode(sources.images)
            self._depth = render_source_depth(self.mesh, R, t, K, S)
        self._points = sample_surface(model.vertices, model.faces, n_points, np.random.default_rng(seed))[0]
        self._visible = point_visibility(self._points, sources.T_cam_obj, sources.K, self._depth, sources.masks,
                                         self.tol)

    def _choose(self, target_points: np.ndarray) -> list[int]:
        chosen = select_by_new_points(self._visible, max_sources=self.n_sources, points=target_points)
        if len(chosen) < min(self.n_sources, len(self.sources)):  # fill up with the views seeing most of the target
            score = self._visible[:, target_points].sum(1)
            chosen += [int(i) for i in np.argsort(-score) if int(i) not in chosen][:self.n_sources - len(chosen)]
        return sorted(chosen)

    @torch.no_grad()
    def render(self, T_cam_obj: np.ndarray, K: np.ndarray, size: int, *, use_lstm: bool = True,
               decode: bool = False) -> NolRendering:
        """Render targets at poses ``T_cam_obj`` (N, 4, 4) through crop intrinsics ``K`` (N, 3, 3), ``size`` px.

        ``use_lstm=False``: plain average of the valid projections (the paper's "w/o LSTM" baseline);
        ``decode``: return the decoder's output X_phi instead of the weighted rendering X_D (paper: training only).
        """
        T_cam_obj = np.asarray(T_cam_obj, np.float64).reshape(-1, 4, 4)
        K = np.asarray(K, np.float64).reshape(-1, 3, 3)
        if len(K) != len(T_cam_obj):
            raise ShapeError(f"render: {len(T_cam_obj)} poses but {len(K)} intrinsics")
        N = len(T_cam_obj)
        Tt = torch.as_tensor(T_cam_obj, dtype=torch.float32)
        tgt = render(self.mesh.render_mesh, Tt[:, :3, :3], Tt[:, :3, 3], torch.as_tensor(K, dtype=torch.float32),
                     (size, size), coords=False, attributes=False, silhouette=False, visibility=False)
        target_points = point_visibility(self._points, T_cam_obj, K, tgt.depth, None, self.tol)
        images = np.zeros((N, size, size, 3), np.float32)
        masks = np.zeros((N, size, size), bool)
        used = []
        for i in range(N):
            idx = self._choose(target_points[i])
            used.append(idx)
            if not idx:
                continue
            raster = TargetRaster(tgt.face_ids[i:i + 1], tgt.barycentrics[i:i + 1])
            P, valid = project_sources(self.mesh, self._features[idx], self._R[idx], self._t[idx], self._K[idx],
                                       self._depth[idx], self.sources.masks[idx], raster, self.tol)
            out = self.net.integrate(P, valid, use_lstm=use_lstm)
            img = self.net.decode(out["X_S"]).clamp(0, 1) if decode else out["X_D"]
            images[i] = img[0].permute(1, 2, 0).numpy()
            masks[i] = out["mask"][0].numpy()
        return NolRendering(images, masks, tgt.mask.numpy(), used)


def hemisphere_poses(distance: float, *, step_deg: float = 5.0, elevation_deg: tuple[float, float] = (0.0, 85.0),
                     ) -> np.ndarray:
    """(N, 4, 4) ``T_cam_obj`` on the upper hemisphere (object frame z up) every ``step_deg`` in azimuth and
    elevation, object centred on the optical axis at ``distance`` metres, upright in the image (paper: 5 deg,
    1296 poses for 0..85 deg)."""
    az = np.deg2rad(np.arange(0.0, 360.0, step_deg))
    el = np.deg2rad(np.arange(elevation_deg[0], elevation_deg[1] + 1e-9, step_deg))
    out = []
    for e in el:
        for a in az:
            d = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
            T = np.eye(4)
            T[:3, :3] = look_at_rotation(d, 0.0)
            T[2, 3] = distance
            out.append(T)
    return np.stack(out)


def centred_crop_intrinsics(diameter: float, distance: float, size: int, fill: float = 0.8) -> np.ndarray:
    """(3, 3) crop camera in which an object of ``diameter`` at ``distance`` on the axis spans ``fill`` x size."""
    f = fill * size * distance / diameter
    return np.array([[f, 0.0, (size - 1) / 2], [0.0, f, (size - 1) / 2], [0.0, 0.0, 1.0]])


@dataclass(slots=True)
class NolImageBank:
    """Rendered training images of several objects: ``images`` (N, S, S, 3) uint8, ``masks`` (N, S, S) bool
    (object rendered, M_D), ``T_cam_obj`` (N, 4, 4), ``K`` (N, 3, 3) crop cameras, ``obj_index`` (N,)."""

    images: np.ndarray
    masks: np.ndarray
    T_cam_obj: np.ndarray
    K: np.ndarray
    obj_index: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def save(self, path: str) -> None:
        np.savez_compressed(path, images=self.images, masks=self.masks, T_cam_obj=self.T_cam_obj, K=self.K,
                            obj_index=self.obj_index)

    @classmethod
    def load(cls, path: str) -> NolImageBank:
        try:
            with np.load(path) as z:
                return cls(z["images"], z["masks"], z["T_cam_obj"], z["K"], z["obj_index"])
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"cannot read NOL image bank {path}: {exc}") from exc


def rotate_in_plane(image: np.ndarray, mask: np.ndarray, T_cam_obj: np.ndarray, K: np.ndarray,
                    angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotate a crop (principal point at its centre, fx = fy) by ``angle_deg`` about the optical axis: the image
    and mask are rotated, the pose becomes ``Rz(angle) T`` (exact for a camera roll)."""
    S = image.shape[0]
    c = ((S - 1) / 2, (S - 1) / 2)
    if not np.allclose([K[0, 2], K[1, 2]], c) or not np.isclose(K[0, 0], K[1, 1]):
        raise ShapeError("rotate_in_plane needs a crop camera centred on the image with fx = fy")
    M = cv2.getRotationMatrix2D(c, -angle_deg, 1.0)  # OpenCV: positive = counter-clockwise on screen
    img = cv2.warpAffine(image, M, (S, S), flags=cv2.INTER_LINEAR, borderValue=0)
    m = cv2.warpAffine(mask.astype(np.uint8), M, (S, S), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    a = np.deg2rad(angle_deg)
    Rz = np.eye(4)
    Rz[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return img, m, Rz @ T_cam_obj


def render_nol_bank(renderers: Sequence[NolRenderer], *, size: int = 64, step_deg: float = 5.0,
                    elevation_deg: tuple[float, float] = (0.0, 85.0),
                    in_plane_deg: Sequence[float] = (-45, -30, -15, 0, 15, 30, 45),
                    min_coverage: float = 0.5) -> NolImageBank:
    """Render every object on the upper hemisphere (:func:`hemisphere_poses`, at the median source distance) and
    add the in-plane rotations; views whose silhouette is less than ``min_coverage`` covered by sources are
    skipped (they would teach the estimator blank surfaces)."""
    imgs, masks, Ts, Ks, objs = [], [], [], [], []
    for k, r in enumerate(renderers):
        dist = float(np.median(np.linalg.norm(r.sources.T_cam_obj[:, :3, 3], axis=1)))
        poses = hemisphere_poses(dist, step_deg=step_deg, elevation_deg=elevation_deg)
        Kc = centred_crop_intrinsics(r.model.diameter, dist, size)
        out = r.render(poses, np.repeat(Kc[None], len(poses), 0), size)
        ok = out.coverage >= min_coverage
        log.info("NOL bank: %s: %d of %d hemisphere views rendered with >= %.0f%% coverage", r.model.name,
                 int(ok.sum()), len(poses), 100 * min_coverage)
        for i in np.nonzero(ok)[0]:
            img = (out.images[i] * 255).round().astype(np.uint8)
            for a in in_plane_deg:
                ri, rm, rT = rotate_in_plane(img, out.masks[i], poses[i], Kc, float(a))
                imgs.append(ri)
                masks.append(rm)
                Ts.append(rT)
                Ks.append(Kc)
                objs.append(k)
    if not imgs:
        raise DatasetError("NOL bank: no view could be rendered (sources cover too little of the objects)")
    return NolImageBank(np.stack(imgs), np.stack(masks), np.stack(Ts), np.stack(Ks), np.asarray(objs, np.int64))


class NolCrops(Dataset):
    """Pose-network crops from a :class:`NolImageBank`, with the keys and shapes of
    :class:`selfpose_core.data.synthetic.SyntheticCrops` (``image``, ``obj_index``, ``silhouette``, ``visible``,
    ``coords``, ``keypoints``, ``scale``, ``K``, ``T``).

    The NOL object is pasted on a procedural background with occluders and photometric augmentation; the crop
    is jittered in scale and centre by an affine map A of the bank image, which is exact for the pinhole camera
    (K' = A K). ``objects`` are the estimator's :class:`ObjectGeometry` in the bank's object order.
    """

    def __init__(self, bank: NolImageBank, objects: Sequence[ObjectGeometry], length: int, seed: int = 0,
                 crop_size: int = 64, stride: int = 2, config: SyntheticConfig | None = None) -> None:
        if len(bank) == 0:
            raise DatasetError("NolCrops: the NOL image bank is empty")
        if int(bank.obj_index.max()) >= len(objects):
            raise ConfigError(f"NolCrops: the bank has object index {int(bank.obj_index.max())} but only "
                              f"{len(objects)} objects were given")
        self.bank, self.objects = bank, list(objects)
        self.length, self.seed = int(length), int(seed)
        self.crop_size, self.stride = int(crop_size), int(stride)
        self.config = config or SyntheticConfig()
        self.n_sym = max(len(o.symmetries) for o in self.objects)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index), 7])
        j = int(rng.integers(len(self.bank)))
        k = int(self.bank.obj_index[j])
        obj = self.objects[k]
        S_in, s = self.bank.images.shape[1], self.crop_size
        scale = s / S_in * rng.uniform(*c.crop_scale_jitter) ** -1
        shift = rng.normal(0, c.crop_shift_std, 2) * s
        A = np.array([[scale, 0.0, (s - 1) / 2 - scale * (S_in - 1) / 2 + shift[0]],
                      [0.0, scale, (s - 1) / 2 - scale * (S_in - 1) / 2 + shift[1]]])
        obj_img = cv2.warpAffine(self.bank.images[j].astype(np.float32) / 255.0, A, (s, s), flags=cv2.INTER_LINEAR)
        m = cv2.warpAffine(self.bank.masks[j].astype(np.uint8), A, (s, s), flags=cv2.INTER_NEAREST) > 0
        K = np.vstack([A, [0.0, 0.0, 1.0]]) @ self.bank.K[j]
        T = self.bank.T_cam_obj[j]
        img = random_background(s, s, rng)
        img[m] = obj_img[m]
        visible = m.copy()
        if rng.random() < c.occlusion_prob:
            visible = occlude_object(img, visible, rng, c.max_occluders)
        img = photometric_augment(img, rng, jitter=c.jitter, blur_prob=c.blur_prob, noise_std=c.noise_std)
        Kc = CameraIntrinsics(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), s, s)
        return crop_sample(obj, img, Kc, T, k, self.stride, self.n_sym, visible)


class NolScenes(Dataset):
    """Detector images from a :class:`NolImageBank` with the keys of
    :class:`selfpose_core.data.synthetic.SyntheticScenes` (``image`` (3, h, w), ``boxes`` (C, 4), ``present`` (C,),
    ``masks`` (C, h / stride, w / stride), ``T`` (C, 4, 4)): masked NOL renders pasted onto procedural backgrounds
    at random positions and sizes (the paper's detector training images), later pastes occluding earlier ones.
    ``camera``: the robot's camera; images are it downscaled to (width, height). ``T`` keeps the rendered rotation
    and puts the object on the ray through the pasted centre (exact up to the off-axis perspective change)."""

    def __init__(self, bank: NolImageBank, objects: Sequence[ObjectGeometry], camera: CameraIntrinsics, width: int,
                 height: int, length: int, seed: int = 0, stride: int = 4,
                 config: SyntheticConfig | None = None) -> None:
        if len(bank) == 0:
            raise DatasetError("NolScenes: the NOL image bank is empty")
        self.bank, self.objects = bank, list(objects)
        self.K_full = camera
        self.K = camera.scaled(width / camera.width, height / camera.height)
        self.length, self.seed, self.stride = int(length), int(seed), int(stride)
        self.config = config or SyntheticConfig()
        self.by_object = {int(k): np.nonzero(bank.obj_index == k)[0] for k in np.unique(bank.obj_index)}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index), 8])
        n_obj, w, h = len(self.objects), self.K.width, self.K.height
        avail = list(self.by_object)
        chosen = rng.permutation(avail)[:int(rng.integers(1, min(len(avail), c.max_objects_per_scene) + 1))]
        img = random_background(h, w, rng)
        poses = np.tile(np.eye(4), (n_obj, 1, 1))
        boxes = np.zeros((n_obj, 4), np.float32)
        label = np.full((h, w), -1, np.int64)
        f_det = self.K.fx
        for k in chosen:
            j = int(rng.choice(self.by_object[int(k)]))
            Kb, T = self.bank.K[j], self.bank.T_cam_obj[j]
            obj_px = Kb[0, 0] * self.objects[k].diameter / T[2, 3]  # projected diameter in the bank crop
            scale = rng.uniform(*c.size_px) * w / self.K_full.width / obj_px
            u, v = rng.uniform(0, w), rng.uniform(0, h)
            A = np.array([[scale, 0.0, u - scale * Kb[0, 2]], [0.0, scale, v - scale * Kb[1, 2]]])
            obj_img = cv2.warpAffine(self.bank.images[j].astype(np.float32) / 255.0, A, (w, h), flags=cv2.INTER_LINEAR)
            m = cv2.warpAffine(self.bank.masks[j].astype(np.uint8), A, (w, h), flags=cv2.INTER_NEAREST) > 0
            img[m] = obj_img[m]
            label[m] = k
            z = f_det * T[2, 3] / (Kb[0, 0] * scale)
            poses[k, :3, :3] = T[:3, :3]
            poses[k, :3, 3] = z * np.linalg.solve(self.K.K, [u, v, 1.0])
            boxes[k] = amodal_box(self.K.K, poses[k], self.objects[k].vertices.numpy().astype(np.float64))
        img = photometric_augment(img, rng, jitter=c.jitter, blur_prob=c.blur_prob, noise_std=c.noise_std)
        present = np.zeros(n_obj, bool)
        hs, ws = -(-h // self.stride), -(-w // self.stride)
        masks = np.zeros((n_obj, hs, ws), np.float32)
        for k in chosen:
            vis = label == k
            b = boxes[k]
            area = max((b[2] - b[0]) * (b[3] - b[1]), 1.0)
            present[k] = vis.sum() >= 0.1 * area * 0.5 and 0 <= (b[0] + b[2]) / 2 < w and 0 <= (b[1] + b[3]) / 2 < h
            pad = np.zeros((hs * self.stride, ws * self.stride), np.float32)
            pad[:h, :w] = vis
            masks[k] = pad.reshape(hs, self.stride, ws, self.stride).mean(axis=(1, 3)) >= 0.25
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1).astype(np.float32))),
                "boxes": torch.from_numpy(boxes), "present": torch.from_numpy(present),
                "masks": torch.from_numpy(masks), "T": torch.as_tensor(poses, dtype=torch.float32)}


@dataclass(slots=True)
class NolStageConfig:
    """``nol`` section of config/adapt.yaml. ``weights``: nol.pt from ``selfpose nol-train`` (required)."""

    weights: str = ""
    min_confidence: float = 0.3
    min_visible: float = 0.1  # pseudo instances less visible than this are not used as sources
    render_size: int = 64
    max_sources: int = 16
    n_sources: int = 6
    refine: bool = True
    step_deg: float = 15.0  # hemisphere every 15 deg (the paper: 5) and 3 in-plane turns: fits a CPU budget
    elevation_deg: tuple[float, float] = (0.0, 85.0)
    in_plane_deg: tuple[float, ...] = (-30.0, 0.0, 30.0)
    nol_fraction: float = 0.5  # share of NOL crops per batch; the rest synthetic CAD renders
    recording_share: float = 0.5  # of that share, the part taken from the recording's pseudo-labelled frames
    crop_batch: int = 32
    scene_batch: int = 8
    keypoint_sigma: float = 0.1
    symmetry_samples: int = 36
    losses: LossWeights = field(default_factory=LossWeights)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig.tabletop)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=2000, lr=1e-3, warmup_steps=20,
                                                                         checkpoint_every=100, log_every=10))

    def validate(self, where: str = "nol") -> None:
        if not self.weights:
            raise ConfigError(f"{where}.weights: give the NOL network (make it with `selfpose nol-train --out DIR`, "
                              "then set nol.weights: DIR/nol.pt)")
        if not 0.0 < self.nol_fraction <= 1.0:
            raise ConfigError(f"{where}.nol_fraction must be in (0, 1], got {self.nol_fraction}")
        if not 0.0 <= self.recording_share < 1.0:
            raise ConfigError(f"{where}.recording_share must be in [0, 1), got {self.recording_share}")
        require_at_least(self, ("render_size", "max_sources", "n_sources", "crop_batch", "scene_batch"), 1, where)
        self.trainer.validate(f"{where}.trainer")


def nol_bank_from_pseudo_labels(ctx: AdaptContext, cfg: NolStageConfig) -> tuple[NolImageBank, dict[str, Any]]:
    """Render the NOL training images of every object of ``ctx`` from the recording frames and their pseudo labels
    (poses and visible masks of multiview consensus). Returns the bank and a per-object report."""
    net = load_nol(cfg.weights)  # NOL renders on the CPU
    renderers, report = [], {}
    for o, model in enumerate(ctx.objects):
        inst = [i for i in ctx.pseudo.instances if i.obj_index == o and i.confidence >= cfg.min_confidence
                and i.visib_fract >= cfg.min_visible]
        if not inst:
            report[model.name] = {"sources": 0, "skipped": "no confident pseudo label"}
            log.warning("nol: %s has no pseudo label with confidence >= %.2f; no NOL images", model.name,
                        cfg.min_confidence)
            continue
        frames = [ctx.recording[i.frame] for i in inst]
        src = prepare_sources(model, [f.rgb for f in frames], np.stack([i.T_cam_obj for i in inst]),
                              [f.K for f in frames], [i.mask for i in inst], crop_size=cfg.render_size,
                              frame_ids=[i.frame for i in inst])
        src = choose_sources(model, src, max_sources=cfg.max_sources, seed=ctx.seed)
        if len(src) == 0:
            report[model.name] = {"sources": 0, "dropped": [f"{i}: {w}" for i, w in src.dropped]}
            continue
        r = NolRenderer(net, model, src, n_sources=cfg.n_sources, refine=cfg.refine, seed=ctx.seed)
        renderers.append((o, r))
        report[model.name] = {"sources": len(r.sources), "dropped": [f"{i}: {w}" for i, w in r.sources.dropped],
                              "refinement_s": round(r.refinement.seconds, 2) if r.refinement else 0.0}
    if not renderers:
        raise DatasetError("nol: no object has usable source frames (see the warnings above)")
    bank = render_nol_bank([r for _, r in renderers], size=cfg.render_size, step_deg=cfg.step_deg,
                           elevation_deg=cfg.elevation_deg, in_plane_deg=cfg.in_plane_deg)
    bank.obj_index = np.asarray([renderers[k][0] for k in bank.obj_index], np.int64)
    return bank, report


class EitherSource(Dataset):
    """Item ``i`` of ``b`` with probability ``share_b`` (seeded by ``i``), else item ``i`` of ``a``: two sources of
    training samples with the same keys as one."""

    def __init__(self, a: Dataset, b: Dataset, share_b: float, seed: int) -> None:
        self.a, self.b, self.share_b, self.seed = a, b, share_b, seed

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        use_b = np.random.default_rng([self.seed, int(index), 31]).random() < self.share_b
        return self.b[index] if use_b else self.a[index]


class NolStage:
    """Stage ``nol``: NOL images of every object (from the recording and the consensus pseudo labels) train the pose
    network (:class:`NolCrops`) and the detector (:class:`NolScenes`), mixed with synthetic CAD renders
    (``nol_fraction`` of the samples are NOL) like ``pseudo_label_finetune`` mixes real frames. With
    ``recording_share`` > 0 that part of the non-synthetic samples are the recording's own pseudo-labelled frames
    (as in ``pseudo_label_finetune``): three sources in every batch. Needs ``ctx.pseudo``."""

    name: ClassVar[str] = "nol"
    Config: ClassVar[type] = NolStageConfig

    def run(self, ctx: AdaptContext, cfg: NolStageConfig) -> StageResult:
        cfg.validate()
        if ctx.pseudo is None:
            raise ConfigError("nol needs pseudo labels: list multiview_consensus before it in the adapt config")
        bank, report = nol_bank_from_pseudo_labels(ctx, cfg)
        out_dir = ctx.stage_dir(self.name)
        bank.save(str(out_dir / "nol_bank.npz"))
        spec = ctx.bundle.spec
        tcfg = ctx.trainer_config(self.name, cfg.trainer)
        geoms = ctx.geometries(cfg.symmetry_samples)
        camera = ctx.camera
        crop, stride = spec.pose_net.crop_size, spec.pose_net.backbone.out_stride
        steps = tcfg.steps * tcfg.grad_accum
        seed = ctx.data_seed(self.name)
        syn = SyntheticCrops(geoms, camera, steps * cfg.crop_batch, seed, crop, stride, cfg.synthetic)
        nol = NolCrops(bank, geoms, steps * cfg.crop_batch, seed, crop, stride, cfg.synthetic)
        dw = spec.detector.input_width
        dh = int(round(camera.height * dw / camera.width))
        det_stride = spec.detector.backbone.out_stride
        n_scenes = steps * cfg.scene_batch
        scenes = SyntheticScenes(geoms, camera, dw, dh, n_scenes, seed, det_stride, cfg.synthetic)
        nol_scenes = NolScenes(bank, geoms, camera, dw, dh, n_scenes, seed, det_stride, cfg.synthetic)
        if cfg.recording_share > 0:
            frames = PseudoLabelledFrames(ctx.recording, ctx.pseudo, [o.obj_id for o in spec.objects],
                                          cfg.min_confidence)
            real = RealCrops(frames, frames.instances(), geoms, steps * cfg.crop_batch, seed, crop, stride,
                             cfg.synthetic, n_sym=syn.n_sym)
            real_scenes = RealScenes(frames, [o.obj_id for o in spec.objects], geoms, dw, dh, n_scenes, seed,
                                     det_stride, cfg.synthetic)
            nol = EitherSource(nol, real, cfg.recording_share, seed)
            nol_scenes = EitherSource(nol_scenes, real_scenes, cfg.recording_share, seed)
        data = StepBatches(syn, scenes, cfg.crop_batch, cfg.scene_batch, steps, seed, nol, nol_scenes,
                           cfg.nol_fraction)
        net, det = ctx.bundle.pose_net.to(ctx.device), ctx.bundle.detector.to(ctx.device)
        net_f, det_f = ctx.wrap(net), ctx.wrap(det)

        def losses(batch: dict[str, dict[str, torch.Tensor]], step: int) -> dict[str, torch.Tensor]:
            return joint_losses(net_f, det_f, batch, cfg.losses, cfg.keypoint_sigma, det_stride, ctx.device)

        record, _ = ctx.train(TrainingJob(self.name, cfg, {"pose_net": net, "detector": det},
                                          step_batches(data, tcfg.grad_accum), losses, {"nol_images": len(bank)}), tcfg)
        return StageResult(losses={k: round(v, 6) for k, v in record.final_losses.items()},
                           artefacts={"nol_bank": out_dir / "nol_bank.npz"},
                           details={"nol_images": len(bank), "objects": report})
