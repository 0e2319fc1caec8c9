"""Where on each object which colour is, learned from the robot's drive: colours at surface points of the CAD mesh.

The learner gets untextured meshes, so nothing in them tells an object from a look-alike of the same shape and
colours (a plain pink box beside the printed cereal box). The drive does: the consensus gives every recording frame
each object's pseudo pose, so every surface point seen in a frame (facing the camera, and where depth exists, at
the observed depth) has a colour there. Pooled over the drive, the points carry the object's texture in its own
frame (the texture half of what Neural Object Learning reconstructs, reduced to what verification needs).

Colours are kept as log chromaticity (log RGB minus its mean over the three channels: shading falls out) with each
view's mean removed per channel (exposure and white balance differ between the drive and later views). A pose is
scored by the normalised cross-correlation (NCC) of the colours it predicts at the visible points with those
observed there (1 = the same pattern, 0 = unrelated). How much that says depends on the object: a printed box
correlates with itself from view to view, a plain mug does not (its chromaticity is flat). The drive measures it:
the mean NCC of each view with the pooled colours is the object's ``agreement``, and :meth:`SurfaceColours.pattern`
weighs the evidence by it. That agreement is measured on the drive's own views under the drive's light: at the
true poses of held-out views under other light the NCC reaches about half of it, at wrong poses about 0
(`selfpose bench surface_colours`; docs/estimator.md has the figures), so the evidence saturates at half. Reference: the colour term of render-and-compare verification, e.g. Aldoma et al., "A
global hypotheses verification method for 3D object recognition", ECCV 2012.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from selfpose_core.errors import ModelError
from selfpose_core.geometry.projection import project

DEPTH_TOLERANCE = 0.01  # metres: a point is seen when the observed depth is within this of it
MIN_POINTS = 30  # fewer visible points with a known colour: no score
COLOUR_NOISE = 0.05  # log-chromaticity differences below this are noise (about 5 % in a colour ratio)
HELD_OUT_SHARE = 0.5  # share of the drive's agreement that views under other light reach at the true pose


def _visible(points: np.ndarray, normals: np.ndarray, T_cam_obj: np.ndarray, K: np.ndarray,
             shape: tuple[int, int], depth: np.ndarray | None, mask: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(visible (M,) bool, pixel (M, 2) int column, row) of the object's surface ``points`` at ``T_cam_obj``."""
    X = points @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    N = normals @ T_cam_obj[:3, :3].T
    uv = np.round(project(K, X)).astype(np.int64)
    h, w = shape
    ok = (X[:, 2] > 0.05) & ((N * X).sum(1) < 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) \
        & (uv[:, 1] < h)
    u, v = np.where(ok, uv[:, 0], 0), np.where(ok, uv[:, 1], 0)
    if depth is not None:
        z = np.nan_to_num(np.asarray(depth, np.float64)[v, u], nan=0.0)
        ok &= (z > 0) & (np.abs(z - X[:, 2]) < DEPTH_TOLERANCE)
    if mask is not None:
        ok &= mask[v, u]
    return ok, np.stack([u, v], 1)


def _log_colours(rgb: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(n, 3) log RGB of ``rgb`` (H, W, 3) uint8 at ``pixels`` (n, 2) column, row, minus their mean per channel."""
    c = np.log(rgb[pixels[:, 1], pixels[:, 0]].astype(np.float64) + 1.0)
    c = c - c.mean(1, keepdims=True)
    return c - c.mean(0) if len(c) else c


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two (n, 3) colour sets, each centred per channel first, with a noise floor
    of :data:`COLOUR_NOISE` per value: colours that vary less than that (a plain object, where only rounding and
    shading remain) correlate to about 0, not to +-1."""
    a = (a - a.mean(0)).ravel()
    b = (b - b.mean(0)).ravel()
    floor = a.size * COLOUR_NOISE ** 2
    return float(a @ b / np.sqrt((a @ a + floor) * (b @ b + floor)))


class SurfaceColours:
    """Per object: surface points and normals (O, M, 3) in the object frame, the mean normalised log colour seen at
    each (O, M, 3), how often it was seen (O, M) and the object's self-agreement over the drive (O,) in [0, 1]."""

    def __init__(self, points: np.ndarray, normals: np.ndarray, colours: np.ndarray, counts: np.ndarray,
                 agreement: np.ndarray) -> None:
        arrays = [np.asarray(a, np.float64) for a in (points, normals, colours, counts, agreement)]
        O, M = arrays[3].shape if arrays[3].ndim == 2 else (-1, -1)
        if any(a.shape != (O, M, 3) for a in arrays[:3]) or O < 0 or arrays[4].shape != (O,):
            raise ModelError(f"surface colours: need points, normals, colours (O, M, 3), counts (O, M) and agreement "
                             f"(O,), got {[a.shape for a in arrays]}")
        if not all(np.isfinite(a).all() for a in arrays) or (arrays[3] < 0).any() \
                or not ((arrays[4] >= 0) & (arrays[4] <= 1)).all():
            raise ModelError("surface colours hold negative counts, an agreement outside [0, 1] or non-finite values")
        self.points, self.normals, self.colours, self.counts, self.agreement = arrays

    @classmethod
    def fit(cls, surfaces: list[tuple[np.ndarray, np.ndarray]],
            views: Iterable[tuple[np.ndarray, np.ndarray | None, np.ndarray, int, np.ndarray, np.ndarray | None]]
            ) -> SurfaceColours:
        """Pool ``views`` = (rgb (H, W, 3) uint8, depth (H, W) metres or None, K (3, 3), object index,
        T_cam_obj (4, 4), visible mask (H, W) bool or None) onto each object's ``surfaces`` [(points (M, 3),
        normals (M, 3))] (the same M for every object); then each object's agreement: the mean NCC (negative
        values as 0) of its views with the pooled colours."""
        points = np.stack([p for p, _ in surfaces])
        normals = np.stack([n for _, n in surfaces])
        acc = np.zeros(points.shape)
        counts = np.zeros(points.shape[:2])
        seen: list[tuple[int, np.ndarray, np.ndarray]] = []
        for rgb, depth, K, k, T, mask in views:
            ok, px = _visible(points[k], normals[k], T, K, rgb.shape[:2], depth, mask)
            if ok.sum() < MIN_POINTS:
                continue
            c = _log_colours(rgb, px[ok])
            acc[k][ok] += c
            counts[k][ok] += 1
            seen.append((k, np.nonzero(ok)[0], c))
        colours = np.divide(acc, counts[..., None], out=np.zeros_like(acc), where=counts[..., None] > 0)
        scores: list[list[float]] = [[] for _ in range(len(points))]
        for k, idx, c in seen:
            scores[k].append(max(_ncc(c, colours[k][idx]), 0.0))
        agreement = np.array([float(np.mean(v)) if v else 0.0 for v in scores])
        return cls(points, normals, colours, counts, agreement)

    def known(self, k: int) -> bool:
        """Whether object ``k`` was seen in the drive."""
        return bool((self.counts[k] > 0).sum() >= MIN_POINTS)

    def score(self, k: int, rgb: np.ndarray, depth: np.ndarray | None, K: np.ndarray, T_cam_obj: np.ndarray
              ) -> np.ndarray:
        """(H,) NCC in [-1, 1] of object ``k``'s learned colours with those observed in ``rgb`` at its visible
        surface points, for each pose ``T_cam_obj`` (H, 4, 4); 0 where fewer than :data:`MIN_POINTS` known points
        are visible."""
        out = np.zeros(len(T_cam_obj))
        learned = self.counts[k] > 0
        for j, T in enumerate(T_cam_obj):
            ok, px = _visible(self.points[k], self.normals[k], T, K, rgb.shape[:2], depth, None)
            ok &= learned
            if ok.sum() >= MIN_POINTS:
                out[j] = _ncc(_log_colours(rgb, px[ok]), self.colours[k][ok])
        return out

    def pattern(self, k: int, rgb: np.ndarray, depth: np.ndarray | None, K: np.ndarray, T_cam_obj: np.ndarray
                ) -> np.ndarray:
        """(H,) factors in [1 - h, 1]: 1 - h + min(max(NCC, 0), h) with h = :data:`HELD_OUT_SHARE` x object
        ``k``'s agreement. A pattern seen about as well as the drive saw it gives 1, an unrelated one 1 - h; an
        object whose pattern the drive could not see again (a plain colour, agreement 0) or that is unknown gives
        1 (no evidence either way)."""
        if not self.known(k):
            return np.ones(len(T_cam_obj))
        h = HELD_OUT_SHARE * self.agreement[k]
        return 1.0 - h + np.clip(self.score(k, rgb, depth, K, T_cam_obj), 0.0, h)
