"""What each object looks like, learned from the robot's drive: a colour histogram per object.

The consensus gives every recording frame the objects' pseudo poses and visible masks; the colours under those
masks, pooled over the drive, tell the objects apart (and from clutter) in new views, where the untextured CAD
meshes cannot. A histogram is taken in HSV: chromatic pixels (saturation and value high enough for the hue to mean
something) fall into hue x saturation bins, the others into value bins (black, greys, white), so the model keeps
little of the lighting, which changes between the drive and later views (a grey pixel also votes for the
neighbouring value bins). Histograms are compared by the
Bhattacharyya coefficient (1 = the same distribution, 0 = disjoint). Reference: Swain & Ballard, "Color
indexing", IJCV 1991.
"""
from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from selfpose_core.errors import ModelError, ShapeError
from selfpose_core.models.surface_colours import SurfaceColours

HUE_BINS, SAT_BINS, VALUE_BINS = 18, 3, 4
NUM_BINS = HUE_BINS * SAT_BINS + VALUE_BINS
MIN_SATURATION, MIN_VALUE = 0.2, 0.15  # below either: the hue is noise, the pixel goes to a value bin


def colour_histogram(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(NUM_BINS,) normalised histogram of the pixels of ``rgb`` (H, W, 3) uint8 inside ``mask`` (H, W) bool;
    all zeros when the mask is empty."""
    if rgb.shape[:2] != mask.shape:
        raise ShapeError(f"colour_histogram: image {rgb.shape[:2]} and mask {mask.shape} differ")
    px = rgb[mask]
    if not len(px):
        return np.zeros(NUM_BINS)
    hsv = cv2.cvtColor(px.reshape(-1, 1, 3), cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.float64) / 255.0
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chroma = (s >= MIN_SATURATION) & (v >= MIN_VALUE)
    hb = np.minimum((h * HUE_BINS).astype(int), HUE_BINS - 1)
    sb = np.clip(((s - MIN_SATURATION) / (1 - MIN_SATURATION) * SAT_BINS).astype(int), 0, SAT_BINS - 1)
    vb = np.minimum((v * VALUE_BINS).astype(int), VALUE_BINS - 1)
    hist = np.bincount(hb[chroma] * SAT_BINS + sb[chroma], minlength=NUM_BINS).astype(np.float64)
    # grey pixels: half a vote to their value bin, a quarter to each neighbour (light changes shift the value)
    grey = np.bincount(vb[~chroma], minlength=VALUE_BINS).astype(np.float64)
    spread = 0.5 * grey
    spread[1:] += 0.25 * grey[:-1]
    spread[:-1] += 0.25 * grey[1:]
    spread[0] += 0.25 * grey[0]
    spread[-1] += 0.25 * grey[-1]
    hist[HUE_BINS * SAT_BINS:] += spread
    return hist / hist.sum()


def bhattacharyya(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficient of normalised histograms ``p`` (..., B) and ``q`` (..., B), broadcast: (...)."""
    return np.sqrt(np.clip(p, 0, None) * np.clip(q, 0, None)).sum(-1)


class AppearanceModel:
    """One colour histogram per object: ``histograms`` (O, NUM_BINS), each normalised or all zero (never seen);
    optionally the colours at the objects' surface points (``surface``)."""

    def __init__(self, histograms: np.ndarray, surface: SurfaceColours | None = None) -> None:
        h = np.asarray(histograms, np.float64)
        if h.ndim != 2 or h.shape[1] != NUM_BINS:
            raise ModelError(f"appearance model: histograms must be (objects, {NUM_BINS}), got {h.shape}")
        if not np.isfinite(h).all() or (h < 0).any():
            raise ModelError("appearance model: histograms hold negative or non-finite values")
        if surface is not None and len(surface.counts) != len(h):
            raise ModelError(f"appearance model: {len(h)} histograms but surface colours of {len(surface.counts)} "
                             "objects")
        self.histograms = h
        self.surface = surface

    @property
    def known(self) -> np.ndarray:
        """(O,) bool: objects the model has seen."""
        return self.histograms.sum(1) > 0

    @classmethod
    def fit(cls, num_objects: int, samples: Iterable[tuple[np.ndarray, np.ndarray, int]],
            erode: int = 2) -> AppearanceModel:
        """Pool the colours of ``samples`` (rgb (H, W, 3) uint8, visible mask (H, W) bool, object index), each
        mask eroded by ``erode`` pixels first (its border mixes in the background)."""
        acc = np.zeros((num_objects, NUM_BINS))
        kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8) if erode > 0 else None
        for rgb, mask, k in samples:
            if not 0 <= k < num_objects:
                raise ModelError(f"appearance model: object index {k} outside [0, {num_objects})")
            m = cv2.erode(mask.astype(np.uint8), kernel).astype(bool) if kernel is not None else mask
            hist = colour_histogram(rgb, m)
            acc[k] += hist * m.sum()
        total = acc.sum(1, keepdims=True)
        return cls(np.divide(acc, total, out=np.zeros_like(acc), where=total > 0))

    def similarity(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(O,) Bhattacharyya coefficient of the pixels under ``mask`` with each object (0 for unseen objects)."""
        return bhattacharyya(colour_histogram(rgb, mask)[None], self.histograms)
