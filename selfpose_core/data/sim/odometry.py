"""Wheel-odometry drift for the recorded camera poses of the training loop.

The robot base follows the camera's ground projection (x, y) and heading (yaw of the optical axis). Odometry
integrates the true relative base motions between frames, each corrupted by zero-mean noise plus a constant yaw
bias (a mis-calibrated wheel base): ``o_k = o_{k-1} (+) (delta_k (+) noise_k)`` in SE(2), ``o_0`` = the true start.
The recorded camera pose is the true one moved by the accumulated base error,
``T_odom_cam_k = (O_k B_k^-1) T_world_cam_k`` with ``O_k``, ``B_k`` the odometry / true base poses as 4x4
transforms, so the drift is a random walk in x, y and yaw that starts at zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfpose_core.geometry.se3 import compose, invert


@dataclass(slots=True, frozen=True)
class OdometryNoise:
    """Drift magnitudes over one training loop: translation random walk ``trans_per_loop_m`` (1 sigma, metres),
    yaw random walk ``yaw_per_loop_deg`` (1 sigma) and a constant yaw bias reaching ``yaw_bias_per_loop_deg``."""

    trans_per_loop_m: float = 0.015
    yaw_per_loop_deg: float = 0.8
    yaw_bias_per_loop_deg: float = 0.5


def base_poses(T_world_cam: np.ndarray) -> np.ndarray:
    """Planar base poses (N, 3) = (x, y, yaw) under cameras ``T_world_cam`` (N, 4, 4) (yaw of the optical axis)."""
    z = T_world_cam[:, :3, 2]
    return np.stack([T_world_cam[:, 0, 3], T_world_cam[:, 1, 3], np.arctan2(z[:, 1], z[:, 0])], 1)


def planar_T(xyyaw: np.ndarray) -> np.ndarray:
    """(N, 4, 4) transforms of planar poses (N, 3) = (x, y, yaw)."""
    c, s = np.cos(xyyaw[:, 2]), np.sin(xyyaw[:, 2])
    T = np.zeros((len(xyyaw), 4, 4))
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
    T[:, 2, 2] = T[:, 3, 3] = 1.0
    T[:, 0, 3], T[:, 1, 3] = xyyaw[:, 0], xyyaw[:, 1]
    return T


def drift_poses(T_world_cam: np.ndarray, rng: np.random.Generator,
                noise: OdometryNoise = OdometryNoise()) -> np.ndarray:
    """Odometry-drifted camera poses (N, 4, 4) for true poses ``T_world_cam`` (N, 4, 4) along one loop."""
    n = len(T_world_cam)
    B = planar_T(base_poses(T_world_cam))
    rel = compose(invert(B[:-1]), B[1:])  # true base motion between consecutive frames
    steps = max(n - 1, 1)
    sig_t = noise.trans_per_loop_m / np.sqrt(steps)
    sig_r = np.radians(noise.yaw_per_loop_deg) / np.sqrt(steps)
    bias = np.radians(noise.yaw_bias_per_loop_deg) / steps * rng.choice([-1.0, 1.0])
    err = np.stack([rng.normal(0, sig_t, steps), rng.normal(0, sig_t, steps),
                    rng.normal(bias, sig_r, steps)], 1)
    O = [B[0]]
    for k in range(n - 1):
        O.append(O[-1] @ rel[k] @ planar_T(err[k:k + 1])[0])
    D = compose(np.stack(O), invert(B))
    return compose(D, T_world_cam)
