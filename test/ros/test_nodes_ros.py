"""The rclpy nodes in a live ROS 2 graph (marked `ros`: skipped without rclpy). A test double stands in for the
model; a publisher node plays camera images, camera_info and TF."""
from __future__ import annotations

import time

import numpy as np
import pytest

from selfpose_core.data.image_codec import array_to_image_msg, intrinsics_to_camera_info
from selfpose_core.data.recording import Recording
from selfpose_core.data.tf_buffer import tf_message
from selfpose_core.types import CameraIntrinsics, PoseEstimate

pytestmark = pytest.mark.ros

K = CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)


class FixedEstimator:
    def __init__(self) -> None:
        self.stamps: list[int] = []

    def estimate(self, frame):
        self.stamps.append(frame.stamp_ns)
        T = np.eye(4)
        T[:3, 3] = (0.1, 0.0, 0.5)
        return [PoseEstimate("mug", T, 0.9, 1, box=(2.0, 3.0, 20.0, 18.0)), PoseEstimate("bowl", T, 0.1, 2)]


def camera_messages(classes: dict, stamp_ns: int, frame_id: str = "camera_optical"):
    rgb = np.full((K.height, K.width, 3), stamp_ns // 10**8 % 256, np.uint8)
    return (array_to_image_msg(rgb, "rgb8", stamp_ns, frame_id, classes=classes),
            intrinsics_to_camera_info(K, stamp_ns, frame_id, classes=classes))


def spin_until(executor, done, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not done() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)


def test_estimator_node_publishes_object_poses_with_image_stamps(monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from selfpose_ros import estimator_node
    from selfpose_ros.conversions import PUBLISHED_TYPES, import_message_classes
    from selfpose_ros.msg import ObjectPoseArray

    model = FixedEstimator()
    monkeypatch.setattr(estimator_node, "load_estimator", lambda bundle, device, threads: model)
    rclpy.init(args=["--ros-args", "-p", "model:=/nonexistent", "-p", "score_threshold:=0.5"])
    try:
        node = estimator_node.EstimatorNode()
        helper = Node("camera_player")
        img_pub = helper.create_publisher(Image, "color/image_raw", qos_profile_sensor_data)
        info_pub = helper.create_publisher(CameraInfo, "color/camera_info", qos_profile_sensor_data)
        got = []
        helper.create_subscription(ObjectPoseArray, "object_poses", got.append, 10)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        ex.add_node(helper)
        classes = import_message_classes((*PUBLISHED_TYPES, "sensor_msgs/msg/CameraInfo"))
        stamps = [1_700_000_000_000_000_000 + k * 100_000_000 for k in range(10)]
        spin_until(ex, lambda: img_pub.get_subscription_count() > 0, 5)
        for s in stamps:
            img, info = camera_messages(classes, s)
            img_pub.publish(img)
            info_pub.publish(info)
            spin_until(ex, lambda: False, 0.1)
        spin_until(ex, lambda: len(got) >= 3, 10)
        assert got, "no /object_poses received"
        for msg in got:
            s = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert s in stamps and msg.header.frame_id == "camera_optical"
            assert [o.name for o in msg.objects] == ["mug"]  # bowl is under score_threshold
            assert msg.objects[0].pose.position.z == pytest.approx(0.5)
            assert msg.objects[0].roi.width == 18
        assert node.worker.stats.processed == len(got)
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_collect_node_records_keyframes_with_tf_poses(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from selfpose_ros import collect_node
    from selfpose_ros.conversions import import_message_classes

    out = tmp_path / "bag"
    rclpy.init(args=["--ros-args", "-p", f"output:={out}", "-p", "min_free_gb:=0.0", "-p", "min_translation:=0.05"])
    try:
        node = collect_node.CollectSequenceNode()
        helper = Node("robot_player")
        img_pub = helper.create_publisher(Image, "color/image_raw", qos_profile_sensor_data)
        info_pub = helper.create_publisher(CameraInfo, "color/camera_info", qos_profile_sensor_data)
        tf_pub = helper.create_publisher(TFMessage, "/tf", 100)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        ex.add_node(helper)
        classes = import_message_classes(["builtin_interfaces/msg/Time", "std_msgs/msg/Header",
                                          "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo",
                                          "sensor_msgs/msg/RegionOfInterest", "geometry_msgs/msg/Vector3",
                                          "geometry_msgs/msg/Quaternion", "geometry_msgs/msg/Transform",
                                          "geometry_msgs/msg/TransformStamped", "tf2_msgs/msg/TFMessage"])
        spin_until(ex, lambda: img_pub.get_subscription_count() > 0, 5)
        t0 = 1_700_000_000_000_000_000
        for k in range(20):  # the camera moves 10 cm per image: every image is a keyframe
            s = t0 + k * 100_000_000
            for j in (-1, 0, 1):  # TF around the image stamp
                T = np.eye(4)
                T[0, 3] = 0.1 * k + 0.05 * j
                tf_pub.publish(tf_message([("odom", "camera_optical", s + j * 50_000_000, T)], classes=classes))
            spin_until(ex, lambda: False, 0.03)
            img, info = camera_messages(classes, s)
            img_pub.publish(img)
            info_pub.publish(info)
            spin_until(ex, lambda: False, 0.07)
        spin_until(ex, lambda: node.collector.stats.keyframes >= 15, 5)
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()
    with Recording(out) as rec:
        assert len(rec) >= 15
        np.testing.assert_allclose(np.diff(rec.poses[:, 0, 3]), 0.1 * np.round(np.diff(rec.poses[:, 0, 3]) / 0.1),
                                   atol=1e-6)
