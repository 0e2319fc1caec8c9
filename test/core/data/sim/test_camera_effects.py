"""The real-camera model: deterministic per generator, and each effect does what it says."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from selfpose_core.data.sim.camera_effects import (REALSENSE_DEPTH, ColorEffects, DepthEffects, apply_color,
                                                   apply_depth, motion_kernel, sample_response)


def _scene(h=96, w=128):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w, y / h, 0.5 * np.ones_like(x)], -1) * 0.4
    return img.astype(np.float32)


def test_color_is_deterministic_per_generator():
    lin = _scene()
    resp = sample_response(np.random.default_rng(0))
    a = apply_color(lin, resp, np.random.default_rng(1), np.array([3.0, 1.0]))
    b = apply_color(lin, resp, np.random.default_rng(1), np.array([3.0, 1.0]))
    c = apply_color(lin, resp, np.random.default_rng(2), np.array([3.0, 1.0]))
    assert a.dtype == np.uint8 and a.shape == (96, 128, 3)
    assert (a == b).all() and (a != c).any()


def test_noise_vignetting_and_gamma():
    flat = np.full((64, 64, 3), 0.2, np.float32)
    resp = sample_response(np.random.default_rng(0), ColorEffects(vignetting=(0.4, 0.4)), jpeg=False)
    img = apply_color(flat, resp, np.random.default_rng(0)).astype(np.float64).mean(2)
    assert img[28:36, 28:36].mean() > img[:6, :6].mean() + 10  # darker corners
    assert img[28:36, 28:36].std() > 1.0  # sensor noise
    # gamma lifts mid-grey: exposure maps the mean to 0.2 linear, the image shows it near 0.2^(1/2.2) = 0.48
    assert 90 < img[28:36, 28:36].mean() < 150


def test_motion_kernel_points_along_the_motion():
    assert motion_kernel(np.array([0.2, 0.1])) is None
    k = motion_kernel(np.array([6.0, 0.0]))
    assert abs(k.sum() - 1) < 1e-6
    rows = k.sum(1)
    assert rows[len(rows) // 2] > 0.9  # a horizontal line


def test_depth_noise_grows_with_distance_and_is_quantised():
    z = np.concatenate([np.full((50, 100), 1.0), np.full((50, 100), 3.0)]).astype(np.float32)
    ones = np.ones_like(z)
    d = apply_depth(z, np.random.default_rng(0), ones, np.zeros_like(z), ones, DepthEffects(dropout=0.0))
    near, far = d[5:45][d[5:45] > 0] - 1.0, d[55:][d[55:] > 0] - 3.0
    assert far.std() > 3 * near.std() > 0
    assert np.allclose(d * 1000, np.round(d * 1000), atol=1e-3)
    assert (d[48:52] == 0).mean() > 0.3  # holes along the depth edge


def test_depth_holes_on_dark_specular_and_grazing_surfaces():
    z = np.full((40, 40), 1.2, np.float32)
    luma, spec, cosv = np.full_like(z, 0.5), np.zeros_like(z), np.ones_like(z)
    luma[:10] = 0.005
    spec[10:20] = 0.9
    cosv[20:30] = 0.05
    d = apply_depth(z, np.random.default_rng(0), luma, spec, cosv, DepthEffects(dropout=0.0))
    assert (d[:10] == 0).mean() > 0.6 and (d[10:30] == 0).all() and (d[30:] > 0).all()


def _realsense(z: np.ndarray, luma: float | np.ndarray = 0.5, spec: float | np.ndarray = 0.0,
               cfg: DepthEffects = REALSENSE_DEPTH) -> np.ndarray:
    ones = np.ones_like(z)
    return apply_depth(z, np.random.default_rng(0), luma * ones, spec * ones, ones, cfg, focal_px=570.0)


def test_realsense_noise_and_steps_grow_with_distance_squared():
    z = np.concatenate([np.full((60, 120), 0.8), np.full((60, 120), 2.4)]).astype(np.float32)
    d = _realsense(z)
    near, far = d[5:55], d[65:]
    near, far = near[near > 0], far[far > 0]
    assert (far - 2.4).std() > 5 * (near - 0.8).std() > 0  # (2.4 / 0.8)^2 = 9 for the disparity model
    # depth levels of the disparity steps: z^2 q / (f b) = 2.4^2 0.08 / (570 0.05) = 16 mm far, 1.8 mm near
    assert 0.012 < np.median(np.diff(np.unique(far))) < 0.020
    assert np.median(np.diff(np.unique(near))) < 0.003


def test_realsense_flying_pixels_between_foreground_and_background():
    z = np.full((80, 80), 2.0, np.float32)
    z[20:60, 20:60] = 1.0
    d, kinect = _realsense(z), _realsense(z, cfg=DepthEffects())
    between = (d > 1.05) & (d < 1.95)
    border = np.zeros(z.shape, np.uint8)
    border[20:60, 20:60] = 1
    border = cv2.morphologyEx(border, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0  # 2 px either side
    assert between.sum() >= 20 and border[between].all()
    assert not ((kinect > 1.05) & (kinect < 1.95)).any()  # the Kinect-like model drops edge pixels instead


def test_realsense_loses_more_dark_and_shiny_pixels():
    z = np.full((60, 60), 1.0, np.float32)
    luma, spec = np.full_like(z, 0.5), np.zeros_like(z)
    luma[:20] = 0.04
    spec[20:40] = 0.2
    hard, normal = _realsense(z, luma, spec), _realsense(z, luma, spec, DepthEffects())
    assert (hard[:40] == 0).mean() > 0.8 and (normal[:40] == 0).mean() < 0.05
    assert (hard[40:] > 0).mean() > 0.95


def test_disparity_model_needs_the_focal_length():
    z = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="focal_px"):
        apply_depth(z, np.random.default_rng(0), z, 0 * z, z, REALSENSE_DEPTH)
