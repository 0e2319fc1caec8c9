"""Camera trajectories around the table: the SMOT-like training loop and held-out test sweeps.

Elevation of a camera = angle of the line from the table-top centre to the camera centre above the horizontal
plane (degrees); azimuth = its direction around the table. The training loop keeps the camera at a fixed height on a
robot driving a slightly wobbly circle, so its elevation stays in a narrow band (SMOT: 38.3-40.8 deg); the test
sweeps (hand-held in SMOT) move over other elevation bands and radii. The camera looks at the table centre with
a small jitter; poses are ``T_world_cam`` in the OpenCV optical frame (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfpose_core.errors import ConfigError, ShapeError


@dataclass(slots=True, frozen=True)
class TrajectorySpec:
    """One trajectory. ``elevation_deg`` / ``radius_m``: (low, high) bands; ``azimuth_span_deg``: 360 for a loop;
    ``style``: background style of its scene (0 = training scene); ``robot``: fixed camera height on a robot
    (elevation set by the radius wobble) instead of a hand-held sweep over the band; ``look_jitter_m`` and
    ``roll_jitter_deg``: standard deviations of the look-at point and the roll about the optical axis."""

    name: str
    elevation_deg: tuple[float, float]
    radius_m: tuple[float, float]
    azimuth_span_deg: float = 360.0
    style: int = 0
    robot: bool = False
    look_jitter_m: float = 0.015
    roll_jitter_deg: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.elevation_deg
        if not 0.0 < lo <= hi < 89.0:
            raise ConfigError(f"trajectory {self.name!r}: elevation_deg must satisfy 0 < low <= high < 89, "
                              f"got {self.elevation_deg}")
        if not 0.0 < self.radius_m[0] <= self.radius_m[1]:
            raise ConfigError(f"trajectory {self.name!r}: radius_m must satisfy 0 < low <= high, got {self.radius_m}")


TRAIN_LOOP = TrajectorySpec("train_loop", (38.5, 40.5), (0.92, 0.98), 360.0, style=0, robot=True)
TEST_TRAJECTORIES = (
    TrajectorySpec("test_low", (10.0, 20.0), (0.85, 1.15), 300.0, style=1, look_jitter_m=0.03, roll_jitter_deg=2.0),
    TrajectorySpec("test_mid", (25.0, 30.0), (0.8, 1.1), 300.0, style=2, look_jitter_m=0.03, roll_jitter_deg=2.0),
    TrajectorySpec("test_high", (45.0, 55.0), (0.7, 0.95), 300.0, style=3, look_jitter_m=0.03, roll_jitter_deg=2.0),
)


def look_at(eye: np.ndarray, target: np.ndarray, roll_rad: float = 0.0,
            up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam`` (4, 4) of an optical-frame camera at ``eye`` (3,) whose z axis points at ``target`` (3,),
    image x axis horizontal (then rolled by ``roll_rad`` about z). Not defined when looking straight along ``up``."""
    z = np.asarray(target, np.float64) - np.asarray(eye, np.float64)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    if np.linalg.norm(x) < 1e-9:
        raise ShapeError("look_at: viewing direction is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(roll_rad), np.sin(roll_rad)
    x, y = c * x + s * y, -s * x + c * y
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = eye
    return T


def elevation_deg(T_world_cam: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Elevation (N,) in degrees of camera centres ``T_world_cam`` (N, 4, 4) seen from ``center`` (3,)."""
    d = T_world_cam[:, :3, 3] - center
    return np.degrees(np.arctan2(d[:, 2], np.linalg.norm(d[:, :2], axis=1)))


def make_trajectory(spec: TrajectorySpec, n: int, center: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` camera poses ``T_world_cam`` (n, 4, 4) of ``spec`` around ``center`` (3,) (the table-top centre)."""
    if n < 1:
        raise ConfigError(f"trajectory {spec.name!r}: number of frames must be >= 1, got {n}")
    center = np.asarray(center, np.float64)
    s = np.arange(n) / n if spec.azimuth_span_deg >= 360.0 else np.linspace(0.0, 1.0, n)
    span = np.radians(spec.azimuth_span_deg)
    step = span / max(n, 1)
    azimuth = rng.uniform(-np.pi, np.pi) + span * s + rng.normal(0.0, 0.15 * step, n)
    (r_lo, r_hi), (e_lo, e_hi) = spec.radius_m, np.radians(spec.elevation_deg)
    r_mid, r_amp = (r_lo + r_hi) / 2, (r_hi - r_lo) / 2
    p1, p2, p3 = rng.uniform(0, 2 * np.pi, 3)
    if spec.robot:
        # fixed camera height; the radius wobbles, so the elevation stays inside the band by construction
        radius = r_mid + r_amp * (0.6 * np.sin(2 * np.pi * s + p1) + 0.3 * np.sin(6 * np.pi * s + p2))
        radius = np.clip(radius + rng.normal(0, 0.05 * r_amp, n), r_lo, r_hi)
        h_lo, h_hi = r_hi * np.tan(e_lo), r_lo * np.tan(e_hi)
        if h_lo > h_hi:
            raise ConfigError(f"trajectory {spec.name!r}: no fixed camera height gives elevations "
                              f"{spec.elevation_deg} over radii {spec.radius_m}")
        height = np.full(n, (h_lo + h_hi) / 2) + np.clip(rng.normal(0, 0.001, n), -(h_hi - h_lo) / 2,
                                                         (h_hi - h_lo) / 2)
    else:
        radius = r_mid + r_amp * np.sin(2 * np.pi * 1.3 * s + p1)
        elev = (e_lo + e_hi) / 2 + (e_hi - e_lo) / 2 * np.sin(2 * np.pi * 2.1 * s + p3)
        height = radius * np.tan(elev)
    eye = np.stack([center[0] + radius * np.cos(azimuth), center[1] + radius * np.sin(azimuth),
                    center[2] + height], 1)
    look = center + np.concatenate([rng.normal(0, spec.look_jitter_m, (n, 2)),
                                    rng.normal(0, spec.look_jitter_m / 2, (n, 1))], 1)
    roll = np.radians(rng.normal(0, spec.roll_jitter_deg, n))
    return np.stack([look_at(e, t, r) for e, t, r in zip(eye, look, roll)])
