"""`ros2 run selfpose_ros estimator` / `ros2 launch selfpose_ros estimator.launch.py model:=BUNDLE`.

Synchronised colour (+ depth) + camera_info in (sensor-data QoS, ApproximateTimeSynchronizer); the model runs in a
worker thread on the newest synchronised frame (`NewestFrameWorker`: older frames are dropped and counted);
out: object_poses (selfpose_ros/ObjectPoseArray stamped with the image), object_detections_3d
(vision_msgs/Detection3DArray), TF camera -> object frames, object_markers (MarkerArray), selfpose/overlay (Image)
and /diagnostics. The messages are built by `selfpose_core.estimate.publishing.PoseMessageBuilder`.
Setting the ``model`` parameter (or, with ``reload_on_adapt``, an adapted bundle announced by adapt_server) loads
that bundle beside the serving one and swaps it in between two frames (`selfpose_ros.model_reload.ModelSlot`).
"""
from __future__ import annotations

import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from tf2_ros import TransformBroadcaster
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from selfpose_core.data.image_codec import array_to_image_msg
from selfpose_core.estimate.publishing import PoseMessageBuilder, publish_config_for_bundle
from selfpose_core.estimate.stream import NewestFrameWorker, load_estimator, select_estimates
from selfpose_ros.camera_subscription import subscribe_camera
from selfpose_ros.conversions import FrameAssembler, diagnostic_status, import_message_classes
from selfpose_ros.model_reload import ModelSlot, Serving
from selfpose_ros.msg import ObjectPoseArray
from selfpose_ros.node_main import run_node
from selfpose_ros.parameters import ESTIMATOR_NODE, ESTIMATOR_PARAMETERS, declare


class EstimatorNode(Node):
    """Thin shell: parameters, subscriptions and publishers; the work is done by selfpose_core classes."""

    def __init__(self) -> None:
        super().__init__(ESTIMATOR_NODE)
        p = declare(self, ESTIMATOR_PARAMETERS)
        self.score_threshold = float(p["score_threshold"])
        self.classes = import_message_classes()
        self._publish_options = dict(detections=p["publish_detections"], transforms=p["publish_tf"],
                                     markers=p["publish_markers"], overlay=p["publish_overlay"],
                                     tf_prefix=p["tf_prefix"], marker_lifetime_s=p["marker_lifetime"])
        self._device, self._threads = p["device"], int(p["num_threads"])
        # the serving model: swapped between two frames when `model` is set or an adapted bundle is announced
        self.slot = ModelSlot(self._load, p["model"], on_done=self._on_loaded)
        config = self.slot.current.builder.config
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.min_rate_warn = float(p["min_rate_warn"])

        reliable = QoSProfile(depth=10)
        self.pose_pub = self.create_publisher(ObjectPoseArray, "object_poses", reliable)
        self.det_pub = (self.create_publisher(Detection3DArray, "object_detections_3d", reliable)
                        if config.detections else None)
        self.marker_pub = self.create_publisher(MarkerArray, "object_markers", reliable) if config.markers else None
        self.overlay_pub = (self.create_publisher(Image, "selfpose/overlay", qos_profile_sensor_data)
                            if config.overlay else None)
        self.tf_broadcaster = TransformBroadcaster(self) if config.transforms else None
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        if p["reload_on_adapt"]:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.bundle_sub = self.create_subscription(String, p["bundle_topic"], self._on_adapted, latched)

        self.worker: NewestFrameWorker[tuple, Any] = NewestFrameWorker(
            self._estimate, self._publish, max_rate_hz=float(p["max_rate"]),
            age_clock_ns=lambda: self.get_clock().now().nanoseconds)

        self.sync, self.input_watch = subscribe_camera(self, p, self._on_frame)
        self.assemble = FrameAssembler(*self.input_watch.topics)  # errors name the resolved topics
        self.create_timer(float(p["diagnostics_period"]), self._publish_diagnostics)
        # the resolved names: what the remapping made of color_topic, camera_info_topic (, depth_topic)
        self.get_logger().info(f"estimating with {self.slot.current.path} on {' + '.join(self.input_watch.topics)}")

    def _load(self, path: str) -> Serving:
        estimator = load_estimator(path, self._device, self._threads)
        builder = PoseMessageBuilder(publish_config_for_bundle(path, **self._publish_options), self.classes)
        return Serving(path, estimator, builder)

    def _on_loaded(self, path: str, error: str) -> None:
        if error:
            self.get_logger().error(f"model {path} refused, still serving {self.slot.current.path}: {error}")
            if self.get_parameter("model").value == path:  # the parameter says what serves
                self.set_parameters([Parameter("model", value=self.slot.current.path)])
        else:
            self.get_logger().info(f"now serving {path}")

    def _on_adapted(self, msg: Any) -> None:
        self.get_logger().info(f"adapted bundle announced: {msg.data}")
        result = self.set_parameters([Parameter("model", value=msg.data)])[0]
        if not result.successful:
            self.get_logger().error(f"adapted bundle {msg.data} refused: {result.reason}")

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        for param in params:
            if param.name == "model":
                why = self.slot.request(str(param.value))
                if why:
                    return SetParametersResult(successful=False, reason=why)
            elif param.name == "score_threshold":
                self.score_threshold = float(param.value)
        return SetParametersResult(successful=True)

    def _on_frame(self, color: Any, info: Any, depth: Any = None) -> None:
        stamp = color.header.stamp.sec * 1_000_000_000 + color.header.stamp.nanosec
        self.worker.submit((color, info, depth), stamp)

    def _estimate(self, msgs: tuple) -> tuple:
        frame = self.assemble(*msgs)
        serving = self.slot.current  # once per frame: estimated and published by one model
        return frame, serving, select_estimates(serving.estimator.estimate(frame), self.score_threshold)

    def _publish(self, msgs: tuple, result: tuple) -> None:
        frame, serving, estimates = result
        out = serving.builder.build(estimates, frame.stamp_ns, frame.frame_id, frame.K, frame.rgb)
        self.pose_pub.publish(out.poses)
        if self.det_pub is not None:
            self.det_pub.publish(out.detections)
        if self.marker_pub is not None:
            self.marker_pub.publish(out.markers)
        if self.tf_broadcaster is not None and out.transforms:
            self.tf_broadcaster.sendTransform(out.transforms)
        if self.overlay_pub is not None and out.overlay is not None:
            self.overlay_pub.publish(array_to_image_msg(out.overlay, "rgb8", frame.stamp_ns, frame.frame_id,
                                                        classes=self.classes))

    def _publish_diagnostics(self) -> None:
        stats = self.worker.stats
        level, message = stats.level(self.min_rate_warn)
        status = diagnostic_status(f"{self.get_name()}: pose estimation", level, message, stats.values(),
                                   hardware_id=self.get_fully_qualified_name(), classes=_diag_classes())
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def close(self) -> None:
        self.worker.close()


def _diag_classes() -> dict[str, Any]:
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    return {"diagnostic_msgs/msg/DiagnosticStatus": DiagnosticStatus, "diagnostic_msgs/msg/KeyValue": KeyValue}


def main(args: list[str] | None = None) -> int:
    return run_node(EstimatorNode, SingleThreadedExecutor, ESTIMATOR_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
