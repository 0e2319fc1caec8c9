"""The rclpy nodes in a live ROS 2 graph (marked `ros`: skipped without rclpy). A test double stands in for the
model; a publisher node plays camera images, camera_info and TF."""
from __future__ import annotations

import time
from pathlib import Path

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
    rclpy.init(args=["--ros-args", "-p", f"output:={out}", "-p", "min_free_gb:=0.0", "-p", "min_translation:=0.05",
                     "-p", "use_depth:=false"])
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
        spin_until(ex, lambda: node.control.collector.stats.keyframes >= 15, 5)
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()
    with Recording(out) as rec:
        assert len(rec) >= 15
        np.testing.assert_allclose(np.diff(rec.poses[:, 0, 3]), 0.1 * np.round(np.diff(rec.poses[:, 0, 3]) / 0.1),
                                   atol=1e-6)


def _tagged_estimator(path: str):
    class Tagged(FixedEstimator):
        def estimate(self, frame):
            out = super().estimate(frame)
            return [PoseEstimate(f"mug_{Path(path).name}", e.T_cam_obj, e.score, e.object_id) for e in out]

    return Tagged()


def test_estimator_swaps_bundles_while_publishing_and_refuses_a_bad_one(monkeypatch, tmp_path):
    """`model` set at run time: frames keep coming with the old model until the new one is loaded, then every
    message is the new model's; a directory without bundle.yaml and a bundle that fails to load are refused and
    the parameter keeps naming the serving bundle; an announced adapted bundle is swapped in too."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import String

    from selfpose_core.errors import ModelError
    from selfpose_core.estimate.publishing import publish_config_for_bundle
    from selfpose_ros import estimator_node
    from selfpose_ros.bundle_loader import LoadedBundle
    from selfpose_ros.conversions import PUBLISHED_TYPES, import_message_classes
    from selfpose_ros.msg import ObjectPoseArray

    for name in ("a", "b", "broken", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bundle.yaml").write_text("format_version: 1\n")

    def load(bundle, device, threads):
        if bundle.endswith("broken"):
            raise ModelError(f"{bundle}/weights.pt: key 'detector.w' holds NaN values")
        time.sleep(0.5 if not bundle.endswith("/a") else 0)
        return _tagged_estimator(bundle)

    class Loader:  # in place of BundleLoader's child process: the same calls, in this process
        def __init__(self, device, threads):
            self.trial_frames = []

        def __call__(self, path, trial_frame=None, publish_options=None):
            self.trial_frames.append(trial_frame)
            return LoadedBundle(load(path, "cpu", 0), publish_config_for_bundle(path, **publish_options))

        def close(self):
            pass

    monkeypatch.setattr(estimator_node, "load_estimator", load)
    monkeypatch.setattr(estimator_node, "BundleLoader", Loader)
    rclpy.init(args=["--ros-args", "-p", f"model:={tmp_path / 'a'}", "-p", "reload_on_adapt:=true"])
    try:
        node = estimator_node.EstimatorNode()
        helper = Node("camera_player")
        img_pub = helper.create_publisher(Image, "color/image_raw", qos_profile_sensor_data)
        info_pub = helper.create_publisher(CameraInfo, "color/camera_info", qos_profile_sensor_data)
        bundle_pub = helper.create_publisher(String, "selfpose/adapted_bundle",
                                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        got = []
        helper.create_subscription(ObjectPoseArray, "object_poses", lambda m: got.append((time.monotonic(), m)), 10)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        ex.add_node(helper)
        classes = import_message_classes((*PUBLISHED_TYPES, "sensor_msgs/msg/CameraInfo"))
        spin_until(ex, lambda: img_pub.get_subscription_count() > 0, 5)
        k = 0

        def play(seconds):
            nonlocal k
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                img, info = camera_messages(classes, 1_700_000_000_000_000_000 + k * 50_000_000)
                img_pub.publish(img)
                info_pub.publish(info)
                k += 1
                spin_until(ex, lambda: False, 0.05)

        play(0.5)
        assert node.set_parameters([Parameter("model", value=str(tmp_path / "b"))])[0].successful
        play(1.5)
        refused = node.set_parameters([Parameter("model", value=str(tmp_path / "nothing"))])[0]
        assert not refused.successful and "no bundle.yaml" in refused.reason
        assert node.set_parameters([Parameter("model", value=str(tmp_path / "broken"))])[0].successful
        play(1.0)  # loaded in the background, refused, the parameter returns to the serving bundle
        assert node.get_parameter("model").value == str(tmp_path / "b")
        bundle_pub.publish(String(data=str(tmp_path / "c")))
        play(1.5)
        names = [m.objects[0].name for _, m in got if m.objects]
        assert names[0] == "mug_a" and names[-1] == "mug_c"
        first_b, first_c = names.index("mug_b"), names.index("mug_c")
        assert set(names[:first_b]) == {"mug_a"} and set(names[first_b:first_c]) == {"mug_b"}
        assert set(names[first_c:]) == {"mug_c"}
        times = [t for t, _ in got]
        assert max(b - a for a, b in zip(times, times[1:])) < 0.5  # published right through the loads
        assert node.get_parameter("model").value == str(tmp_path / "c")
        assert all(f is not None and f.rgb.shape == (K.height, K.width, 3) for f in node.loader.trial_frames)
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_collect_services_start_and_stop_recordings(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from selfpose_ros import collect_node

    rclpy.init(args=["--ros-args", "-p", "autostart:=false", "-p", "min_free_gb:=0.0"])
    try:
        node = collect_node.CollectSequenceNode()
        helper = Node("operator")
        start = helper.create_client(Trigger, "/collect_sequence/start")
        stop = helper.create_client(Trigger, "/collect_sequence/stop")
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        ex.add_node(helper)

        def call(client):
            future = client.call_async(Trigger.Request())
            spin_until(ex, future.done, 10)
            return future.result()

        spin_until(ex, lambda: start.service_is_ready() and stop.service_is_ready(), 5)
        assert not node.control.recording
        r = call(start)
        assert not r.success and "parameter 'output' is empty" in r.message
        node.set_parameters([Parameter("output", value=str(tmp_path / "run1"))])
        r = call(start)
        assert r.success and node.control.recording
        r = call(stop)
        assert r.success and r.message.startswith(f"closed {tmp_path / 'run1'}")
        assert (tmp_path / "run1" / "metadata.yaml").is_file()
        assert not call(stop).success
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_adapt_action_refuses_a_second_goal_and_reports_the_error_of_the_first(tmp_path):
    """Real `selfpose adapt` in the child: a recording that does not exist fails with its one-line error."""
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    from selfpose_ros import adapt_server_node
    from selfpose_ros.action import Adapt

    rclpy.init(args=["--ros-args", "-p", "feedback_period:=0.2"])
    try:
        node = adapt_server_node.AdaptServerNode()
        helper = Node("operator")
        client = ActionClient(helper, Adapt, "adapt")
        ex = MultiThreadedExecutor(num_threads=4)
        ex.add_node(node)
        ex.add_node(helper)
        spin_until(ex, client.server_is_ready, 5)
        goal = Adapt.Goal(recording=str(tmp_path / "no_bag"), objects=str(tmp_path / "objects.yaml"),
                          base_model=str(tmp_path / "pre"), output=str(tmp_path / "out"))
        first = client.send_goal_async(goal)
        spin_until(ex, first.done, 10)
        assert first.result().accepted
        second = client.send_goal_async(goal)
        spin_until(ex, second.done, 10)
        assert not second.result().accepted  # the first one runs
        result = first.result().get_result_async()
        spin_until(ex, result.done, 240)
        res = result.result().result
        assert not res.success and res.bundle == ""
        assert res.message.startswith("selfpose adapt failed (exit 2): selfpose adapt: error:")
        third = client.send_goal_async(goal)  # free again
        spin_until(ex, third.done, 10)
        assert third.result().accepted
        spin_until(ex, lambda: not (node.server.job and node.server.job.running), 240)
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_estimator_lifecycle_configure_loads_activate_subscribes(monkeypatch):
    """autostart:=false: nothing loaded nor subscribed until configure (loads the model) and activate (subscribes,
    publishes); deactivate unsubscribes, cleanup releases the model; a model that does not load fails configure."""
    import rclpy
    from lifecycle_msgs.msg import State
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from selfpose_core.errors import ModelError
    from selfpose_ros import estimator_node
    from selfpose_ros.conversions import PUBLISHED_TYPES, import_message_classes
    from selfpose_ros.msg import ObjectPoseArray

    loads = []

    def load(bundle, device, threads):
        loads.append(bundle)
        if bundle == "/broken":
            raise ModelError("/broken/bundle.yaml does not exist")
        return FixedEstimator()

    monkeypatch.setattr(estimator_node, "load_estimator", load)
    rclpy.init(args=["--ros-args", "-p", "autostart:=false", "-p", "model:=/broken"])
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

        def state():
            return node._state_machine.current_state[0]

        def play(n):
            for k in range(n):
                img, info = camera_messages(classes, 1_700_000_000_000_000_000 + len(got) * 10**9 + k * 10**8)
                img_pub.publish(img)
                info_pub.publish(info)
                spin_until(ex, lambda: False, 0.1)

        spin_until(ex, lambda: False, 0.3)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and loads == [] and img_pub.get_subscription_count() == 0
        node.trigger_configure()  # the model does not load: configure fails, the node stays unconfigured
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.slot is None
        node.set_parameters([Parameter("model", value="/good")])
        node.trigger_configure()
        assert state() == State.PRIMARY_STATE_INACTIVE and node.slot.current.path == "/good"
        spin_until(ex, lambda: False, 0.3)
        assert img_pub.get_subscription_count() == 0  # configured, not subscribed
        node.trigger_activate()
        assert state() == State.PRIMARY_STATE_ACTIVE
        spin_until(ex, lambda: img_pub.get_subscription_count() > 0, 5)
        play(10)
        spin_until(ex, lambda: len(got) >= 3, 5)
        assert got and [o.name for o in got[0].objects] == ["mug"]
        node.trigger_deactivate()
        spin_until(ex, lambda: img_pub.get_subscription_count() == 0, 5)
        assert state() == State.PRIMARY_STATE_INACTIVE and img_pub.get_subscription_count() == 0
        n = len(got)
        play(5)
        assert len(got) == n  # inactive: nothing estimated nor published
        node.trigger_cleanup()
        assert state() == State.PRIMARY_STATE_UNCONFIGURED and node.slot is None
        assert loads == ["/broken", "/good"]
        node.close()
        node.destroy_node()
        helper.destroy_node()
    finally:
        rclpy.try_shutdown()
