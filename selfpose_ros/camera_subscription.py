"""The synchronised camera subscription both nodes use (rclpy + message_filters)."""
from __future__ import annotations

from typing import Any, Callable

from message_filters import ApproximateTimeSynchronizer, Subscriber
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image


def subscribe_camera(node: Node, p: dict[str, Any],
                     callback: Callable[..., None]) -> tuple[ApproximateTimeSynchronizer, str]:
    """Subscribe colour (raw, or ``<color_topic>/compressed``) + camera_info (+ depth when ``use_depth``) with
    sensor-data QoS through an ApproximateTimeSynchronizer calling ``callback(color, info[, depth])``.

    ``p`` holds the node's parameter values (color_topic, camera_info_topic, depth_topic, use_depth,
    image_transport, sync_queue_size, sync_slop). Returns the synchroniser (keep a reference) and the colour topic.
    """
    compressed = p["image_transport"] == "compressed"
    color_type, color_topic = (CompressedImage, p["color_topic"] + "/compressed") if compressed else \
        (Image, p["color_topic"])
    subs = [Subscriber(node, color_type, color_topic, qos_profile=qos_profile_sensor_data),
            Subscriber(node, CameraInfo, p["camera_info_topic"], qos_profile=qos_profile_sensor_data)]
    if p["use_depth"]:
        subs.append(Subscriber(node, Image, p["depth_topic"], qos_profile=qos_profile_sensor_data))
    sync = ApproximateTimeSynchronizer(subs, int(p["sync_queue_size"]), float(p["sync_slop"]))
    sync.registerCallback(callback)
    return sync, color_topic
