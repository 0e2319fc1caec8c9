"""Fixtures of the ROS-side tests: a simulated robot drive (camera images + TF) and the `ros` marker's skip."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import numpy as np
import pytest

from selfpose_core.types import CameraIntrinsics

HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None


@pytest.fixture(autouse=True)
def _selfpose_loggers_propagate() -> None:
    """Under `colcon test` on Jazzy, launch_testing's pytest plugin imports `launch`, which makes every logger created
    afterwards a LaunchLogger with propagate=False: caplog would see none of selfpose's log lines."""
    if logging.getLoggerClass() is not logging.Logger:
        logging.setLoggerClass(logging.Logger)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(("selfpose_core", "selfpose_ros")) and isinstance(logger, logging.Logger):
            logger.propagate = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_RCLPY:
        return
    skip = pytest.mark.skip(reason="needs rclpy (a sourced ROS 2 Humble/Jazzy workspace)")
    for item in items:
        if item.get_closest_marker("ros") is not None:
            item.add_marker(skip)


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """T_world_cam (4, 4) of an optical-frame camera (z forward, y down) at ``position`` looking at ``target``."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = position
    return T


@dataclass
class Drive:
    """A camera circling a table: image stamps, true camera poses at those stamps, TF samples of odom -> base_link
    (T_base_cam is static) with the time each message arrives."""

    K: CameraIntrinsics
    image_stamps: np.ndarray  # (N,) int ns, with jitter
    image_arrival: np.ndarray  # (N,) int ns
    tf_stamps: np.ndarray  # (M,) int ns
    tf_arrival: np.ndarray  # (M,) int ns
    T_odom_base: np.ndarray  # (M, 4, 4)
    T_base_cam: np.ndarray  # (4, 4)
    centre: np.ndarray

    def camera_pose(self, t_ns: np.ndarray | int) -> np.ndarray:
        return camera_on_circle(np.asarray(t_ns), self.centre)

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(i)
        rgb = rng.integers(0, 256, (self.K.height, self.K.width, 3), dtype=np.uint8)
        depth = rng.uniform(0.4, 2.0, (self.K.height, self.K.width)).astype(np.float32)
        depth[0, :3] = 0.0
        return rgb, depth


T0_NS = 1_700_000_000 * 10**9
RADIUS, PERIOD_S = 1.0, 20.0


def camera_on_circle(t_ns: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(..., 4, 4) camera poses circling ``centre`` at 1 m radius, 0.4 m above it, one turn per 20 s."""
    t = (np.asarray(t_ns, dtype=np.float64) - T0_NS) * 1e-9
    a = 2 * np.pi * t / PERIOD_S
    out = np.empty(np.shape(t) + (4, 4))
    for idx in np.ndindex(np.shape(t)):
        pos = centre + np.array([RADIUS * np.cos(a[idx]), RADIUS * np.sin(a[idx]), 0.4])
        out[idx] = look_at(pos, centre)
    return out


def make_drive(seconds: float = 6.0, image_hz: float = 15.0, tf_hz: float = 50.0, tf_start_s: float = 0.3,
               tf_end_s: float | None = None, seed: int = 0) -> Drive:
    rng = np.random.default_rng(seed)
    centre = np.array([2.0, -1.0, 0.75])
    n_img = int(seconds * image_hz)
    img = T0_NS + np.round((np.arange(n_img) / image_hz + rng.uniform(-0.004, 0.004, n_img)) * 1e9).astype(np.int64)
    tf_end = seconds - 0.25 if tf_end_s is None else tf_end_s
    tf_t = np.arange(tf_start_s, tf_end, 1.0 / tf_hz)
    tf_st = T0_NS + np.round((tf_t + rng.uniform(-0.002, 0.002, tf_t.size)) * 1e9).astype(np.int64)
    T_base_cam = np.eye(4)
    T_base_cam[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # REP-103 body -> optical
    T_base_cam[:3, 3] = (0.1, 0.0, 0.3)
    T_odom_cam = camera_on_circle(tf_st, centre)
    T_odom_base = T_odom_cam @ np.linalg.inv(T_base_cam)
    return Drive(
        K=CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24), image_stamps=img,
        image_arrival=img + rng.integers(5, 15, n_img) * 1_000_000, tf_stamps=tf_st,
        tf_arrival=tf_st + rng.integers(20, 60, tf_st.size) * 1_000_000, T_odom_base=T_odom_base,
        T_base_cam=T_base_cam, centre=centre)


@pytest.fixture
def drive() -> Drive:
    return make_drive()
