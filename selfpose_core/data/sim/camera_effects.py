"""The "real" camera: what turns a clean linear rendering into an RGB-D frame with a domain gap.

Colour pipeline (in this order, all seeded): auto exposure -> vignetting -> defocus and motion blur (optics) ->
Poisson-Gaussian sensor noise (variance ``a x + b``) -> white balance and colour cross-talk -> gamma -> 8-bit
quantisation -> JPEG round trip. The per-camera parameters (white balance, gamma, vignetting, noise level, JPEG
quality) are drawn once per trajectory (:func:`sample_response`); blur and noise per frame.

Depth pipeline: axial noise growing with z^2 (sigma = 1.2 mm + 1.9 mm (z - 0.4 m)^2, the Kinect model of
Nguyen et al. 2012), holes at depth discontinuities, on dark and on specular surfaces, at grazing angles and out of
range, random dropout, quantisation to millimetres; 0 marks invalid pixels. :data:`REALSENSE_DEPTH` (the hard scene)
models an active stereo camera instead (Intel RealSense D4xx-like): noise and quantisation in disparity (depth step
z^2 q / (f b)), more holes on dark and shiny surfaces, and flying pixels at depth edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


@dataclass(slots=True, frozen=True)
class ColorEffects:
    """Ranges (low, high) from which a camera's response is drawn; see :func:`sample_response`."""

    exposure_target: float = 0.2  # mean linear intensity after auto exposure
    white_balance_sigma: float = 0.07  # log-normal per-channel gain
    crosstalk_sigma: float = 0.03  # off-diagonal colour mixing
    vignetting: tuple[float, float] = (0.15, 0.4)  # intensity loss at the image corner
    defocus_sigma_px: tuple[float, float] = (0.3, 0.9)
    shutter_fraction: float = 0.25  # motion blur length = this fraction of the image motion between frames
    shot_noise: tuple[float, float] = (0.002, 0.006)  # a: variance per unit signal
    read_noise: tuple[float, float] = (0.003, 0.008)  # sqrt(b)
    gamma: tuple[float, float] = (2.0, 2.4)
    jpeg_quality: tuple[int, int] = (75, 92)


@dataclass(slots=True, frozen=True)
class DepthEffects:
    """Parameters of the depth sensor model (metres unless stated)."""

    sigma_base: float = 0.0012
    sigma_quadratic: float = 0.0019
    z_offset: float = 0.4
    edge_jump: float = 0.04  # relative depth jump to a neighbour that makes an edge
    edge_drop: float = 0.6  # probability an edge pixel (dilated by 1 px) is a hole
    dark_luma: float = 0.03  # linear albedo below which the sensor loses its pattern
    dark_drop: float = 0.8
    specular_level: float = 0.4  # specular highlight above which the pixel saturates
    grazing_cos: float = 0.12  # |n . view| below which there is no return
    min_range: float = 0.35
    max_range: float = 4.5
    dropout: float = 0.003  # isolated random holes
    quantum: float = 0.001  # millimetres
    baseline: float = 0.05  # stereo baseline b for the disparity model
    disparity_noise_px: float = 0.0  # Gaussian disparity noise (0: off); depth sigma = z^2 sigma_d / (f b)
    disparity_quantum_px: float = 0.0  # disparity step (0: off); depth step = z^2 q / (f b)
    flying_pixels: float = 0.0  # share of edge pixels measured between foreground and background instead of dropped


REALSENSE_DEPTH = DepthEffects(sigma_base=0.0, sigma_quadratic=0.0, edge_drop=0.5, dark_luma=0.06, dark_drop=0.9,
                               specular_level=0.15, dropout=0.005, disparity_noise_px=0.05,
                               disparity_quantum_px=0.08, flying_pixels=0.4)
"""Active stereo depth (RealSense D4xx-like, the hard scene): 0.05 px disparity noise and 0.08 px disparity steps (the
D4xx's subpixel RMS is about 0.08 px), flying pixels on 40 % of the edge pixels, more holes on dark and shiny
surfaces."""


@dataclass(slots=True, frozen=True)
class CameraResponse:
    """One camera's fixed response: per-channel gains (3,), colour matrix (3, 3), vignetting, defocus sigma (px),
    noise (a, b), gamma and JPEG quality (0 = no JPEG)."""

    gains: np.ndarray
    mix: np.ndarray
    vignetting: float
    defocus_sigma: float
    shot: float
    read: float
    gamma: float
    jpeg_quality: int


def sample_response(rng: np.random.Generator, cfg: ColorEffects = ColorEffects(), jpeg: bool = True) -> CameraResponse:
    """Draw a camera response from the ranges in ``cfg``."""
    gains = np.exp(rng.normal(0, cfg.white_balance_sigma, 3))
    gains /= gains[1]
    mix = np.eye(3) + rng.normal(0, cfg.crosstalk_sigma, (3, 3)) * (1 - np.eye(3))
    mix /= mix.sum(1, keepdims=True)
    return CameraResponse(gains, mix, rng.uniform(*cfg.vignetting), rng.uniform(*cfg.defocus_sigma_px),
                          rng.uniform(*cfg.shot_noise), rng.uniform(*cfg.read_noise), rng.uniform(*cfg.gamma),
                          int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if jpeg else 0)


def motion_kernel(motion_px: np.ndarray) -> np.ndarray | None:
    """Normalised linear blur kernel along the image motion ``motion_px`` (2,) = (dx, dy); None if < 0.5 px."""
    length = float(np.hypot(*motion_px))
    if length < 0.5:
        return None
    size = int(np.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    d = np.asarray(motion_px) / 2
    cv2.line(k, (int(round((c - d[0]) * 16)), int(round((c - d[1]) * 16))),
             (int(round((c + d[0]) * 16)), int(round((c + d[1]) * 16))), 1.0, 1, cv2.LINE_AA, shift=4)
    return k / k.sum()


@lru_cache(maxsize=4)
def _radius2(H: int, W: int) -> np.ndarray:
    """(H, W) float32 squared distance to the image centre, 1 at the corners."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - (W - 1) / 2) ** 2 + (yy - (H - 1) / 2) ** 2) / (((W - 1) / 2) ** 2 + ((H - 1) / 2) ** 2)
    r2.setflags(write=False)
    return r2


def apply_color(linear: np.ndarray, response: CameraResponse, rng: np.random.Generator,
                motion_px: np.ndarray | None = None, cfg: ColorEffects = ColorEffects()) -> np.ndarray:
    """Camera image (H, W, 3) uint8 RGB from linear radiance ``linear`` (H, W, 3) float32.

    ``motion_px`` (2,): image motion between this frame and the next (for motion blur).
    """
    H, W = linear.shape[:2]
    img = linear.astype(np.float32, copy=True)
    img *= np.float32(np.clip(cfg.exposure_target / max(float(img.mean()), 1e-6), 0.25, 8.0))
    img *= (1.0 - np.float32(response.vignetting) * _radius2(H, W))[..., None]
    img = cv2.GaussianBlur(img, (0, 0), response.defocus_sigma)
    if motion_px is not None:
        k = motion_kernel(np.asarray(motion_px, np.float64) * cfg.shutter_fraction)
        if k is not None:
            img = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)
    np.clip(img, 0.0, 1.0, out=img)
    img += np.sqrt(response.shot * img + response.read ** 2) * rng.standard_normal(img.shape, dtype=np.float32)
    img = img @ (response.mix * response.gains[None, :]).T.astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    out = np.round(255.0 * img ** np.float32(1.0 / response.gamma)).astype(np.uint8)
    if response.jpeg_quality > 0:
        ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, response.jpeg_quality])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(out)


def apply_depth(depth: np.ndarray, rng: np.random.Generator, albedo_luma: np.ndarray, specular: np.ndarray,
                cos_view: np.ndarray, cfg: DepthEffects = DepthEffects(), focal_px: float | None = None) -> np.ndarray:
    """Sensor depth (H, W) float32 metres (0 = hole) from the exact z-depth ``depth`` (H, W) (0 = nothing) and the
    per-pixel albedo luminance, specular term and |n . view| of the rendering (all (H, W)); ``focal_px``: the depth
    camera's focal length f, needed by the disparity model."""
    disparity = cfg.disparity_noise_px > 0 or cfg.disparity_quantum_px > 0
    if disparity and not (focal_px and focal_px > 0):
        raise ValueError(f"apply_depth: the disparity model needs focal_px > 0, got {focal_px}")
    z = depth.astype(np.float32)
    valid = z > 0
    pad = np.pad(z, 1, mode="edge")
    jump = np.zeros_like(z)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        jump = np.maximum(jump, np.abs(pad[dy:dy + z.shape[0], dx:dx + z.shape[1]] - z))
    edge = cv2.dilate((jump > cfg.edge_jump * np.maximum(z, 1e-3)).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    u = rng.random(z.shape, dtype=np.float32)
    hole = (edge & (u < cfg.edge_drop)) | ((albedo_luma < cfg.dark_luma) & (u < cfg.dark_drop))
    hole |= (specular > cfg.specular_level) | (cos_view < cfg.grazing_cos) | (u > 1.0 - cfg.dropout)
    hole |= (z < cfg.min_range) | (z > cfg.max_range)
    if cfg.flying_pixels > 0:
        z, flying = _flying_pixels(z, valid, edge, rng, cfg.flying_pixels)
        hole = (hole & ~flying) | (z < cfg.min_range) | (z > cfg.max_range)
    sigma = cfg.sigma_base + cfg.sigma_quadratic * (z - cfg.z_offset) ** 2
    noisy = z + sigma * rng.standard_normal(z.shape, dtype=np.float32)
    if disparity:
        noisy = _stereo(noisy, valid, rng, np.float32(focal_px * cfg.baseline), cfg)
    noisy = np.round(noisy / cfg.quantum) * cfg.quantum
    return np.where(valid & ~hole, noisy, 0.0).astype(np.float32)


def _flying_pixels(z: np.ndarray, valid: np.ndarray, edge: np.ndarray, rng: np.random.Generator,
                   share: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) with a random ``share`` of the valid ``edge`` pixels moved to a depth drawn uniformly between the
    nearest and farthest surface in their 5 x 5 neighbourhood (stereo matching windows straddling the edge), and the
    mask of those pixels."""
    kernel = np.ones((5, 5), np.uint8)
    far = cv2.dilate(z, kernel)
    near = cv2.erode(np.where(valid, z, np.float32(np.inf)), kernel)
    flying = edge & valid & (rng.random(z.shape, dtype=np.float32) < share) & (far > near)
    t = rng.random(z.shape, dtype=np.float32)
    return np.where(flying, near + t * (far - near), z).astype(np.float32), flying


def _stereo(z: np.ndarray, valid: np.ndarray, rng: np.random.Generator, fb: np.float32,
            cfg: DepthEffects) -> np.ndarray:
    """Depth (H, W) measured through disparity d = f b / z: Gaussian noise and quantisation in d, so that the depth
    noise and step grow with z^2."""
    d = fb / np.where(valid, np.maximum(z, np.float32(1e-3)), np.float32(1.0))
    d = d + np.float32(cfg.disparity_noise_px) * rng.standard_normal(z.shape, dtype=np.float32)
    if cfg.disparity_quantum_px > 0:
        q = np.float32(cfg.disparity_quantum_px)
        d = np.maximum(np.round(d / q), 1.0) * q
    return fb / np.maximum(d, np.float32(1e-6))
