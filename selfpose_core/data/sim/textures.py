"""Procedural textures (RGB uint8, seeded): value noise, wood, floor tiles, wallpaper, printed labels.

All functions draw their randomness from the ``numpy.random.Generator`` passed in, so the same generator state
gives the same image bytes. Images are (H, W, 3) uint8 RGB; row 0 is the top of the texture (v = 1).
"""
from __future__ import annotations

import cv2
import numpy as np

Color = tuple[int, int, int]


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 8, octaves: int = 4) -> np.ndarray:
    """Fractal value noise (H, W) float32 in [0, 1]: random grids of ``cells * 2^k`` cells, bicubic-upsampled."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        c = cells * 2 ** k
        grid = rng.random((max(2, round(c * h / max(h, w))) + 1, c + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def mix(a: Color | np.ndarray, b: Color | np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by ``t`` (H, W) in [0, 1] -> (H, W, 3) uint8."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.clip(a + (b - a) * t[..., None], 0, 255).astype(np.uint8)


def random_color(rng: np.random.Generator, saturation: tuple[float, float] = (0.4, 0.9),
                 value: tuple[float, float] = (0.4, 0.95), hue: tuple[float, float] = (0.0, 360.0)) -> Color:
    """A random RGB colour with hue (degrees), saturation and value uniform in the given ranges."""
    hsv = np.array([[[rng.uniform(*hue) / 2, rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.uint8)
    return tuple(int(x) for x in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def plain(color: Color, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """A uniform texture of ``size`` = (H, W)."""
    return np.broadcast_to(np.asarray(color, np.uint8), (*size, 3)).copy()


def wood(rng: np.random.Generator, size: tuple[int, int] = (512, 512), dark: Color = (110, 70, 40),
         light: Color = (185, 135, 85)) -> np.ndarray:
    """Wood grain: rings of a distorted distance field along the horizontal axis plus fine fibre noise."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = value_noise(rng, size, cells=3, octaves=3)
    rings = 0.5 + 0.5 * np.sin((y / h * rng.uniform(10, 18) + 3.0 * warp) * 2 * np.pi)
    fibre = cv2.resize(rng.random((h, max(2, w // 24))).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return mix(dark, light, np.clip(0.65 * rings ** 1.5 + 0.35 * fibre, 0, 1))


def tiles(rng: np.random.Generator, size: tuple[int, int] = (512, 512), n: int = 2,
          colors: tuple[Color, Color] | None = None, grout: Color = (200, 200, 195)) -> np.ndarray:
    """``n`` x ``n`` tiles (a checker of two colours with mottled noise) separated by grout lines; tiles wrap."""
    h, w = size
    a, b = colors or (random_color(rng, (0.05, 0.3), (0.45, 0.85)), random_color(rng, (0.05, 0.3), (0.3, 0.7)))
    y, x = np.mgrid[0:h, 0:w]
    checker = ((y * n // h + x * n // w) % 2).astype(np.float32)
    img = mix(a, b, checker).astype(np.float32)
    img *= (0.85 + 0.3 * value_noise(rng, size, cells=16, octaves=3))[..., None]
    line = max(2, w // (n * 40))
    edge = ((x % (w // n)) < line) | ((y % (h // n)) < line)
    img[edge] = grout
    return np.clip(img, 0, 255).astype(np.uint8)


def wallpaper(rng: np.random.Generator, size: tuple[int, int] = (512, 512)) -> np.ndarray:
    """Wallpaper: vertical stripes of two colours with a repeated motif (dots or diamonds) and light noise."""
    h, w = size
    base, stripe, motif = (random_color(rng, (0.05, 0.35), (0.6, 0.95)),
                           random_color(rng, (0.1, 0.4), (0.5, 0.9)), random_color(rng, (0.3, 0.8), (0.3, 0.7)))
    x = np.arange(w)
    n_stripes = int(rng.integers(4, 9))
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    img[:, (x * n_stripes // w) % 2 == 1] = stripe
    step = w // n_stripes
    diamonds = rng.random() < 0.5
    for cy in range(step // 2, h, step):
        for cx in range(step // 2, w, step):
            if diamonds:
                r = step // 5
                pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32)
                cv2.fillConvexPoly(img, pts, motif, lineType=cv2.LINE_AA)
            else:
                cv2.circle(img, (cx, cy), step // 8, motif, -1, lineType=cv2.LINE_AA)
    shade = 0.9 + 0.2 * value_noise(rng, size, cells=6, octaves=2)
    return np.clip(img * shade[..., None], 0, 255).astype(np.uint8)


def put_text(img: np.ndarray, text: str, box: tuple[int, int, int, int], color: Color,
             thickness: int = 2, font: int = cv2.FONT_HERSHEY_DUPLEX) -> None:
    """Draw ``text`` centred in ``box`` = (x0, y0, x1, y1) pixels, scaled to fill it (in place)."""
    x0, y0, x1, y1 = box
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thickness)
    scale = min((x1 - x0) / tw, (y1 - y0) / (th + base))
    t = max(1, int(round(thickness * scale)))
    (tw, th), base = cv2.getTextSize(text, font, scale, t)
    org = (int(x0 + (x1 - x0 - tw) / 2), int(y0 + (y1 - y0 + th) / 2 - base / 2))
    cv2.putText(img, text, org, font, scale, color, t, lineType=cv2.LINE_AA)


def logo(img: np.ndarray, center: tuple[int, int], radius: int, rng: np.random.Generator) -> None:
    """Draw a random emblem (concentric rings and a star-like polygon) at ``center`` (in place)."""
    cx, cy = center
    c1, c2, c3 = random_color(rng), random_color(rng), random_color(rng, value=(0.8, 1.0))
    cv2.circle(img, (cx, cy), radius, c1, -1, lineType=cv2.LINE_AA)
    cv2.circle(img, (cx, cy), int(radius * 0.75), c2, -1, lineType=cv2.LINE_AA)
    k = int(rng.integers(5, 9))
    ang = np.linspace(0, 2 * np.pi, 2 * k, endpoint=False) + rng.uniform(0, np.pi)
    rr = np.where(np.arange(2 * k) % 2 == 0, 0.65, 0.3) * radius
    pts = np.stack([cx + rr * np.cos(ang), cy + rr * np.sin(ang)], 1).astype(np.int32)
    cv2.fillPoly(img, [pts], c3, lineType=cv2.LINE_AA)


def stripes(img: np.ndarray, rows: tuple[int, int], colors: list[Color], horizontal: bool = True) -> None:
    """Fill the pixel rows ``rows`` = (y0, y1) with equal bands of ``colors`` (in place)."""
    y0, y1 = rows
    edges = np.linspace(y0, y1, len(colors) + 1).astype(int)
    for c, a, b in zip(colors, edges[:-1], edges[1:]):
        if horizontal:
            img[a:b] = c
        else:
            img[:, a:b] = c


def printed(rng: np.random.Generator, img: np.ndarray, grain: float = 0.06) -> np.ndarray:
    """Printed-material look: a faint multiplicative noise over ``img`` (returns a new image)."""
    n = 1.0 - grain + 2 * grain * value_noise(rng, img.shape[:2], cells=32, octaves=2)
    return np.clip(img * n[..., None], 0, 255).astype(np.uint8)
