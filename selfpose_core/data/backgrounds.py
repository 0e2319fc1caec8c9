"""Procedural backgrounds, occluders and photometric augmentation for synthetic training images (no downloads).

All functions take an explicit ``numpy.random.Generator`` and return float32 RGB images in [0, 1].
"""
from __future__ import annotations

import cv2
import numpy as np


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) a random RGB colour with a random saturation and value (HSV sampled, so greys are common too)."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 255) * rng.uniform(0.2, 1.0), rng.uniform(30, 255)]]],
                   np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _smooth_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    cells = int(rng.integers(2, 12))
    low = rng.random((cells, max(2, cells * w // max(h, 1)), 3)).astype(np.float32)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _stripes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, max(6.0, w / 3))
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    if rng.random() < 0.5:
        wave = np.sign(wave)
    a, b = random_colour(rng), random_colour(rng)
    t = (wave[..., None] + 1) / 2
    return a * t + b * (1 - t)


def _shapes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    img[:] = random_colour(rng)
    for _ in range(int(rng.integers(3, 15))):
        draw_random_shape(img, rng, random_colour(rng), scale=rng.uniform(0.1, 0.6))
    return img


def random_background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 clutter: smooth noise, stripes/checks, random shapes or a gradient, sometimes mixed."""
    kinds = (_smooth_noise, _stripes, _shapes)
    img = kinds[int(rng.integers(len(kinds)))](h, w, rng)
    if rng.random() < 0.4:
        other = kinds[int(rng.integers(len(kinds)))](h, w, rng)
        img = img * 0.5 + other * 0.5
    if rng.random() < 0.3:
        g = np.linspace(rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), h, dtype=np.float32)[:, None, None]
        img = img * g
    return img.clip(0, 1)


def draw_random_shape(img: np.ndarray, rng: np.random.Generator, colour: np.ndarray, scale: float = 0.3,
                      mask: np.ndarray | None = None, centre: tuple[float, float] | None = None) -> None:
    """Draw a filled ellipse, rectangle or polygon of colour ``colour`` into ``img`` (and 1 into ``mask``) in place.

    ``scale`` is the shape's size relative to the image's shorter side; ``centre`` (x, y) defaults to random.
    """
    h, w = img.shape[:2]
    s = max(2.0, scale * min(h, w))
    cx, cy = centre if centre is not None else (rng.uniform(0, w), rng.uniform(0, h))
    kind = int(rng.integers(3))
    colour = tuple(float(c) for c in colour)
    targets = [(img, colour)] + ([(mask, 1)] if mask is not None else [])
    if kind == 0:
        axes = (int(s * rng.uniform(0.3, 0.7)), int(s * rng.uniform(0.3, 0.7)))
        for t, c in targets:
            cv2.ellipse(t, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
    else:
        n = 4 if kind == 1 else int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == 2 else np.arange(4) * np.pi / 2 + rng.uniform(0, 6.3)
        rad = s * rng.uniform(0.3, 0.7, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], -1).round().astype(np.int32)
        for t, c in targets:
            cv2.fillPoly(t, [pts], c)


def add_occluders(img: np.ndarray, rng: np.random.Generator, around: tuple[float, float, float],
                  count: int) -> np.ndarray:
    """Paste ``count`` random shapes near the circle ``around`` = (x, y, radius); returns their (h, w) bool mask."""
    h, w = img.shape[:2]
    occ = np.zeros((h, w), np.uint8)
    x, y, r = around
    for _ in range(count):
        ang = rng.uniform(0, 2 * np.pi)
        dist = r * rng.uniform(0.6, 1.3)
        shape_img = random_background(h, w, rng) if rng.random() < 0.4 else None
        local = np.zeros((h, w), np.uint8)
        draw_random_shape(img if shape_img is None else np.zeros_like(img), rng, random_colour(rng),
                          scale=rng.uniform(0.3, 0.8) * 2 * r / min(h, w), mask=local,
                          centre=(x + dist * np.cos(ang), y + dist * np.sin(ang)))
        if shape_img is not None:
            img[local > 0] = shape_img[local > 0]
        occ |= local
    return occ > 0


def photometric_augment(img: np.ndarray, rng: np.random.Generator, *, jitter: float = 0.3, hue: float = 0.05,
                        blur_prob: float = 0.3, noise_std: float = 0.04) -> np.ndarray:
    """Brightness/contrast/saturation/hue jitter, Gaussian blur and Gaussian noise on a float32 (h, w, 3) image."""
    img = img * rng.uniform(1 - jitter, 1 + jitter) + rng.uniform(-jitter, jitter) * 0.3
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * rng.uniform(1 - jitter, 1 + jitter)
    img = img * (1 + rng.uniform(-hue, hue, 3).astype(np.float32) * 4)
    img = img.clip(0, 1).astype(np.float32)
    if rng.random() < blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    img = img + rng.normal(0, rng.uniform(0, noise_std), img.shape).astype(np.float32)
    return img.clip(0, 1)


def occlude_object(img: np.ndarray, visible: np.ndarray, rng: np.random.Generator, max_occluders: int) -> np.ndarray:
    """Paste 1..``max_occluders`` random shapes around the visible object (``visible`` (h, w) bool) into ``img``
    in place; returns the visible mask without the occluded pixels."""
    ys, xs = np.nonzero(visible)
    if not len(xs):
        return visible
    radius = 0.5 * max(xs.max() - xs.min(), ys.max() - ys.min(), 2)
    occ = add_occluders(img, rng, (xs.mean(), ys.mean(), radius), int(rng.integers(1, max_occluders + 1)))
    return visible & ~occ
