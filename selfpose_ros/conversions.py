"""Message <-> core conversions shared by the nodes; plain Python (no rclpy import), tested with rosbags' types.

Every reader is duck-typed on ROS field names, so rclpy messages and rosbags dataclasses both work.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from selfpose_core.data.image_codec import any_image_to_array, camera_info_to_intrinsics, check_image_size, stamp_to_ns
from selfpose_core.errors import RecordingError
from selfpose_core.types import CameraIntrinsics, Frame

# Every message type the nodes build through selfpose_core's writers (image_codec, tf_buffer, publishing).
PUBLISHED_TYPES = (
    "builtin_interfaces/msg/Time", "builtin_interfaces/msg/Duration", "std_msgs/msg/Header",
    "std_msgs/msg/ColorRGBA", "geometry_msgs/msg/Point", "geometry_msgs/msg/Quaternion", "geometry_msgs/msg/Pose",
    "geometry_msgs/msg/PoseWithCovariance", "geometry_msgs/msg/Vector3", "geometry_msgs/msg/Transform",
    "geometry_msgs/msg/TransformStamped", "tf2_msgs/msg/TFMessage", "sensor_msgs/msg/Image",
    "sensor_msgs/msg/RegionOfInterest", "visualization_msgs/msg/Marker", "visualization_msgs/msg/MarkerArray",
    "vision_msgs/msg/ObjectHypothesis", "vision_msgs/msg/ObjectHypothesisWithPose", "vision_msgs/msg/BoundingBox3D",
    "vision_msgs/msg/Detection3D", "vision_msgs/msg/Detection3DArray", "selfpose_ros/msg/ObjectPose",
    "selfpose_ros/msg/ObjectPoseArray",
)


def import_message_classes(names: Iterable[str] = PUBLISHED_TYPES) -> dict[str, Any]:
    """ROS type names ("pkg/msg/Name") -> the installed (rclpy) message classes, for selfpose_core's builders.

    Needs a sourced ROS 2 environment; an uninstalled package raises `RecordingError` naming it.
    """
    out = {}
    for name in names:
        pkg, kind, cls = name.split("/")
        try:
            out[name] = getattr(importlib.import_module(f"{pkg}.{kind}"), cls)
        except (ImportError, AttributeError) as exc:
            raise RecordingError(f"message type {name} is not installed ({exc}); source the workspace that built "
                                 f"selfpose_ros and install {pkg} (rosdep install --from-paths src)") from exc
    return out


class FrameAssembler:
    """Synchronised colour (+ depth) + camera_info messages -> `Frame`.

    Caches the intrinsics while camera_info does not change. Errors name the topics.
    """

    def __init__(self, color_topic: str, info_topic: str, depth_topic: str | None = None) -> None:
        self.color_topic = color_topic
        self.info_topic = info_topic
        self.depth_topic = depth_topic
        self._info_key: tuple | None = None
        self._K: CameraIntrinsics | None = None

    def intrinsics(self, info: Any) -> CameraIntrinsics:
        key = (int(info.width), int(info.height), tuple(float(v) for v in info.k))
        if key != self._info_key:
            self._K = camera_info_to_intrinsics(info, self.info_topic)
            self._info_key = key
        assert self._K is not None
        return self._K

    def __call__(self, color: Any, info: Any, depth: Any | None = None, index: int = 0) -> Frame:
        rgb = any_image_to_array(color, self.color_topic)
        if rgb.ndim != 3:
            raise RecordingError(f"topic {self.color_topic} carries depth-like images; remap it to a colour image")
        K = self.intrinsics(info)
        check_image_size(rgb, K, self.color_topic, self.info_topic)
        d = None
        if depth is not None:
            d = any_image_to_array(depth, self.depth_topic)
            if d.ndim != 2:
                raise RecordingError(f"topic {self.depth_topic} carries colour images; remap it to a depth image "
                                     "registered to the colour camera")
            if d.shape != rgb.shape[:2]:
                raise RecordingError(f"depth on {self.depth_topic} is {d.shape[1]}x{d.shape[0]} but colour on "
                                     f"{self.color_topic} is {rgb.shape[1]}x{rgb.shape[0]}: use a depth image "
                                     "aligned to colour (RealSense: align_depth.enable:=true)")
        return Frame(rgb=rgb, K=K, stamp_ns=stamp_to_ns(color.header.stamp), depth=d,
                     frame_id=str(color.header.frame_id), index=index)


def diagnostic_status(name: str, level: int, message: str, values: dict[str, str], hardware_id: str = "",
                      classes: dict[str, Any] | None = None) -> Any:
    """diagnostic_msgs/DiagnosticStatus with key/values (rosbags classes unless ``classes`` has the rclpy ones)."""
    def new(type_name: str, **fields: Any) -> Any:
        if classes is not None and type_name in classes:
            return classes[type_name](**fields)
        from selfpose_core.data.ros_types import typestore
        return typestore().types[type_name](**fields)

    kvs = [new("diagnostic_msgs/msg/KeyValue", key=k, value=v) for k, v in values.items()]
    level_value = bytes([level]) if classes is not None and "diagnostic_msgs/msg/DiagnosticStatus" in classes \
        else np.uint8(level)
    return new("diagnostic_msgs/msg/DiagnosticStatus", level=level_value, name=name, message=message,
               hardware_id=hardware_id, values=kvs)
