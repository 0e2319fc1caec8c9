"""The synchronised camera subscription both nodes use (rclpy + message_filters)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from message_filters import ApproximateTimeSynchronizer, Subscriber
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from selfpose_ros.input_watch import InputWatch


@dataclass
class CameraSubscription:
    """The subscriptions, their synchroniser (keep a reference) and the `InputWatch` over the resolved topics."""

    node: Node
    subscribers: list[Subscriber]
    sync: ApproximateTimeSynchronizer
    watch: InputWatch
    timer: Any

    def destroy(self) -> None:
        """Unsubscribe and stop the silent-input timer (the estimator's lifecycle deactivate)."""
        self.node.destroy_timer(self.timer)
        for sub in self.subscribers:
            self.node.destroy_subscription(sub.sub)


def subscribe_camera(node: Node, p: dict[str, Any], callback: Callable[..., None]) -> CameraSubscription:
    """Subscribe colour (raw, or ``<color_topic>/compressed``) + camera_info (+ depth when ``use_depth``) with
    sensor-data QoS through an ApproximateTimeSynchronizer calling ``callback(color, info[, depth])``.

    ``p`` holds the node's parameter values (color_topic, camera_info_topic, depth_topic, use_depth,
    image_transport, sync_queue_size, sync_slop, input_timeout). The returned `CameraSubscription` holds an
    `InputWatch` over the topics' resolved (remapped) names; a timer of ``node`` logs its warning while nothing
    synchronises for ``input_timeout`` seconds.
    """
    compressed = p["image_transport"] == "compressed"
    color_type, color_topic = (CompressedImage, p["color_topic"] + "/compressed") if compressed else \
        (Image, p["color_topic"])
    subs = [Subscriber(node, color_type, color_topic, qos_profile=qos_profile_sensor_data),
            Subscriber(node, CameraInfo, p["camera_info_topic"], qos_profile=qos_profile_sensor_data)]
    if p["use_depth"]:
        subs.append(Subscriber(node, Image, p["depth_topic"], qos_profile=qos_profile_sensor_data))
    warn_after_s = float(p["input_timeout"])
    names = [s.sub.topic_name for s in subs]  # after remapping and namespace expansion
    watch = InputWatch(names, warn_after_s, float(p["sync_slop"]))
    for sub, name in zip(subs, names):
        sub.registerCallback(lambda *_, name=name: watch.message(name))
    sync = ApproximateTimeSynchronizer(subs, int(p["sync_queue_size"]), float(p["sync_slop"]))

    def on_frame(*msgs: Any) -> None:
        watch.frame()
        callback(*msgs)

    sync.registerCallback(on_frame)

    def warn() -> None:
        text = watch.check()
        if text:
            node.get_logger().warn(text)

    return CameraSubscription(node, subs, sync, watch, node.create_timer(warn_after_s, warn))
