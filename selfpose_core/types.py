"""Typed records shared by every layer: camera intrinsics, frames, pose estimates, symmetries and object models.

Conventions (DESIGN.md section 3): metres, radians, seconds; OpenCV/ROS optical camera frame (x right, y down,
z forward); a pose ``T_a_b`` is a 4x4 float64 matrix mapping points in frame b to frame a; images are RGB uint8
HxWx3; depth is float32 HxW in metres with 0 or NaN meaning invalid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from selfpose_core.errors import CalibrationError, ShapeError


@dataclass(slots=True, frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (no distortion: images are rectified)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        vals = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in vals):
            raise CalibrationError(f"camera intrinsics contain NaN/inf: fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.fx <= 0 or self.fy <= 0:
            raise CalibrationError(f"camera intrinsics have a non-positive focal length: fx={self.fx} fy={self.fy} "
                                   "(CameraInfo.K all zero means an uncalibrated camera)")
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(f"camera intrinsics have an empty image size {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        """The 3x3 float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: np.ndarray | list[float], width: int, height: int) -> CameraIntrinsics:
        """Build from a 3x3 matrix or the 9 row-major values of sensor_msgs/CameraInfo.k."""
        K = np.asarray(K, dtype=np.float64).reshape(-1)
        if K.shape != (9,):
            raise ShapeError(f"K must have 9 values, got {K.shape[0]}")
        return cls(float(K[0]), float(K[4]), float(K[2]), float(K[5]), int(width), int(height))

    def scaled(self, sx: float, sy: float | None = None) -> CameraIntrinsics:
        """Intrinsics of the same camera after resizing the image by (sx, sy) (pixel-corner convention)."""
        sy = sx if sy is None else sy
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                                int(round(self.width * sx)), int(round(self.height * sy)))

    def crop(self, x0: float, y0: float, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the sub-image whose top-left pixel is (x0, y0)."""
        return CameraIntrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0, int(width), int(height))

    def crop_resize(self, box: tuple[float, float, float, float], out_size: int | tuple[int, int]) -> CameraIntrinsics:
        """Intrinsics of the crop ``box`` = (x0, y0, x1, y1) (pixel edges) resized to ``out_size`` = (w, h)."""
        ow, oh = (out_size, out_size) if isinstance(out_size, int) else out_size
        x0, y0, x1, y1 = box
        sx, sy = ow / (x1 - x0), oh / (y1 - y0)
        return CameraIntrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5 - x0) * sx - 0.5,
                                (self.cy + 0.5 - y0) * sy - 0.5, int(ow), int(oh))


@dataclass(slots=True)
class Frame:
    """One camera image with its intrinsics, optional depth and optional camera pose in the world."""

    rgb: np.ndarray  # (H, W, 3) uint8, RGB order
    K: CameraIntrinsics
    stamp_ns: int = 0  # ROS time of the image, nanoseconds
    depth: np.ndarray | None = None  # (H, W) float32 metres, 0/NaN invalid
    T_world_cam: np.ndarray | None = None  # (4, 4) float64
    frame_id: str = "camera"
    index: int = 0

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ShapeError(f"Frame.rgb must be uint8 (H, W, 3), got {self.rgb.dtype} {self.rgb.shape}")
        h, w = self.rgb.shape[:2]
        if (w, h) != (self.K.width, self.K.height):
            raise CalibrationError(f"image is {w}x{h} but camera_info says {self.K.width}x{self.K.height}")
        if self.depth is not None and self.depth.shape != (h, w):
            raise ShapeError(f"Frame.depth must be ({h}, {w}) like the colour image, got {self.depth.shape}")
        if self.T_world_cam is not None and np.shape(self.T_world_cam) != (4, 4):
            raise ShapeError(f"Frame.T_world_cam must be (4, 4), got {np.shape(self.T_world_cam)}")

    @property
    def stamp(self) -> float:
        """Image time in seconds."""
        return self.stamp_ns * 1e-9


@dataclass(slots=True)
class PoseEstimate:
    """One object found in one image: ``T_cam_obj`` in the camera optical frame plus quality measures."""

    object_name: str
    T_cam_obj: np.ndarray  # (4, 4) float64
    score: float
    object_id: int = 0
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1) pixels
    mask: np.ndarray | None = None  # (H, W) bool, visible part
    covariance: np.ndarray | None = None  # (6, 6) over (x, y, z, rot_x, rot_y, rot_z), ROS order
    inliers: int = 0


@dataclass(slots=True)
class Symmetry:
    """Object symmetries in the object frame, as in BOP's models_info.

    ``discrete``: (S, 4, 4) transforms (not including identity) that leave the object's appearance unchanged.
    ``continuous``: list of (axis (3,), offset (3,)) — rotation by any angle about ``axis`` through ``offset``.
    """

    discrete: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    continuous: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def is_symmetric(self) -> bool:
        return len(self.discrete) > 0 or len(self.continuous) > 0


@dataclass(slots=True)
class ObjectModel:
    """An object the robot learns: mesh in metres (object frame), its size, symmetries and keypoints."""

    name: str
    vertices: np.ndarray  # (N, 3) float64 metres
    faces: np.ndarray  # (F, 3) int64
    diameter: float  # metres, largest distance between two vertices
    symmetry: Symmetry = field(default_factory=Symmetry)
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((9, 3)))  # 8 FPS keypoints + centre (last)
    obj_id: int = 1
    category: str | None = None
    vertex_colors: np.ndarray | None = None  # (N, 3) uint8
    uv: np.ndarray | None = None  # (N, 2) float texture coordinates in [0, 1]
    texture: np.ndarray | None = None  # (H, W, 3) uint8
    source_path: str | None = None

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (min (3,), max (3,)) in the object frame."""
        return self.vertices.min(axis=0), self.vertices.max(axis=0)
