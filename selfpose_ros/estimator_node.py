"""`ros2 run selfpose_ros estimator` / `ros2 launch selfpose_ros estimator.launch.py model:=BUNDLE`.

A managed (lifecycle) node: configure loads the model and creates the publishers, activate subscribes to the camera
and starts the worker, deactivate unsubscribes and stops the worker, cleanup releases the model and the publishers.
With ``autostart`` (default) it configures and activates itself at start-up, as a plain node would; with
``autostart:=false`` a lifecycle manager (or `ros2 lifecycle set`) drives it.

Synchronised colour (+ depth) + camera_info in (sensor-data QoS, ApproximateTimeSynchronizer); the model runs in a
worker thread on the newest synchronised frame (`NewestFrameWorker`: older frames are dropped and counted);
out: object_poses (selfpose_ros/ObjectPoseArray stamped with the image), object_detections_3d
(vision_msgs/Detection3DArray), TF camera -> object frames, object_markers (MarkerArray), selfpose/overlay (Image)
and /diagnostics. The messages are built by `selfpose_core.estimate.publishing.PoseMessageBuilder`.
Setting the ``model`` parameter (or, with ``reload_on_adapt``, an adapted bundle announced by adapt_server) loads
that bundle in a child process (`selfpose_ros.bundle_loader`) and swaps it in between two frames
(`selfpose_ros.model_reload.ModelSlot`).
"""
from __future__ import annotations

import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String
from tf2_ros import TransformBroadcaster
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from selfpose_core.data.image_codec import array_to_image_msg
from selfpose_core.errors import SelfposeError
from selfpose_core.estimate.publishing import PoseMessageBuilder, publish_config_for_bundle
from selfpose_core.estimate.stream import NewestFrameWorker, load_estimator, select_estimates
from selfpose_ros.bundle_loader import BundleLoader
from selfpose_ros.camera_subscription import subscribe_camera
from selfpose_ros.conversions import FrameAssembler, diagnostic_status, import_message_classes
from selfpose_ros.model_reload import ModelSlot, Serving
from selfpose_ros.msg import ObjectPoseArray
from selfpose_ros.node_main import run_node
from selfpose_ros.parameters import ESTIMATOR_NODE, ESTIMATOR_PARAMETERS, declare

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class EstimatorNode(LifecycleNode):
    """Thin shell: parameters, subscriptions and publishers; the work is done by selfpose_core classes."""

    def __init__(self) -> None:
        super().__init__(ESTIMATOR_NODE)
        declare(self, ESTIMATOR_PARAMETERS)
        self.classes = import_message_classes()
        self.slot: ModelSlot | None = None  # configured: the serving model
        self.loader: BundleLoader | None = None
        self.worker: NewestFrameWorker[tuple, Any] | None = None  # active: the frames being estimated
        self.camera = None
        self._last_frame = None  # the newest estimated frame: a new bundle's trial run
        self._configure_error: SelfposeError | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._autostarting = bool(self.get_parameter("autostart").value)
        if self._autostarting:
            self.trigger_configure()
            self._autostarting = False
            if self._configure_error is not None:  # `ros2 run` with a bad model: one fatal line, exit 2
                raise self._configure_error
            self.trigger_activate()

    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model (in this process) and create the publishers."""
        self.score_threshold = float(self._p("score_threshold"))
        self.min_rate_warn = float(self._p("min_rate_warn"))
        self._publish_options = dict(
            detections=self._p("publish_detections"), transforms=self._p("publish_tf"),
            markers=self._p("publish_markers"), overlay=self._p("publish_overlay"), tf_prefix=self._p("tf_prefix"),
            marker_lifetime_s=self._p("marker_lifetime"))
        device, threads = self._p("device"), int(self._p("num_threads"))
        try:
            path = self._p("model")
            serving = Serving(path, load_estimator(path, device, threads),
                              PoseMessageBuilder(publish_config_for_bundle(path, **self._publish_options), self.classes))
        except SelfposeError as exc:
            self._configure_error = exc
            if not self._autostarting:  # at start-up the error ends the node with run_node's one fatal line
                self.get_logger().error(f"configure failed: {exc}")
            return FAILURE
        self._configure_error = None
        self.loader = BundleLoader(device, threads)
        self.slot = ModelSlot(serving, self._load, on_done=self._on_loaded)
        config = serving.builder.config
        reliable = QoSProfile(depth=10)
        self.pose_pub = self.create_lifecycle_publisher(ObjectPoseArray, "object_poses", reliable)
        self.det_pub = (self.create_lifecycle_publisher(Detection3DArray, "object_detections_3d", reliable)
                        if config.detections else None)
        self.marker_pub = (self.create_lifecycle_publisher(MarkerArray, "object_markers", reliable)
                           if config.markers else None)
        self.overlay_pub = (self.create_lifecycle_publisher(Image, "selfpose/overlay", qos_profile_sensor_data)
                            if config.overlay else None)
        self.tf_broadcaster = TransformBroadcaster(self) if config.transforms else None
        self.diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", reliable)
        self.bundle_sub = None
        if self._p("reload_on_adapt"):
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.bundle_sub = self.create_subscription(String, self._p("bundle_topic"), self._on_adapted, latched)
        self.get_logger().info(f"configured with {path}")
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the worker and subscribe to the camera."""
        self.worker = NewestFrameWorker(self._estimate, self._publish, max_rate_hz=float(self._p("max_rate")),
                                        age_clock_ns=lambda: self.get_clock().now().nanoseconds)
        p = {name: self._p(name) for name in ("color_topic", "camera_info_topic", "depth_topic", "use_depth",
                                              "image_transport", "sync_queue_size", "sync_slop", "input_timeout")}
        self.camera = subscribe_camera(self, p, self._on_frame)
        self.assemble = FrameAssembler(*self.camera.watch.topics)  # errors name the resolved topics
        self.diag_timer = self.create_timer(float(self._p("diagnostics_period")), self._publish_diagnostics)
        # the resolved names: what the remapping made of color_topic, camera_info_topic (, depth_topic)
        self.get_logger().info(f"estimating with {self.slot.current.path} on {' + '.join(self.camera.watch.topics)}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the worker (the frame being estimated is finished)."""
        self._stop_input()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and the publishers."""
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return SUCCESS

    def _stop_input(self) -> None:
        if self.camera is not None:
            self.camera.destroy()
            self.destroy_timer(self.diag_timer)
            self.camera = None
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def _release(self) -> None:
        if self.slot is None:
            return
        self.loader.close()
        self.slot.wait(5.0)
        for pub in (self.pose_pub, self.det_pub, self.marker_pub, self.overlay_pub, self.diag_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self.tf_broadcaster is not None:
            self.destroy_publisher(self.tf_broadcaster.pub_tf)
        if self.bundle_sub is not None:
            self.destroy_subscription(self.bundle_sub)
        self.slot = self.loader = self._last_frame = None

    def close(self) -> None:
        """Deactivate and clean up whatever state the node is in (the nodes' common shutdown)."""
        self._stop_input()
        self._release()

    # -- model swap ---------------------------------------------------------------------------------------------
    def _load(self, path: str) -> Serving:  # in ModelSlot's thread; the work in BundleLoader's child process
        loaded = self.loader(path, self._last_frame, self._publish_options)
        return Serving(path, loaded.estimator, PoseMessageBuilder(loaded.publish_config, self.classes))

    def _on_loaded(self, path: str, error: str) -> None:
        if error:
            self.get_logger().error(f"model {path} refused, still serving {self.slot.current.path}: {error}")
            if self._p("model") == path:  # the parameter says what serves
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
            if param.name == "model" and self.slot is not None:  # unconfigured: read at the next configure
                why = self.slot.request(str(param.value))
                if why:
                    return SetParametersResult(successful=False, reason=why)
            elif param.name == "score_threshold":
                self.score_threshold = float(param.value)
        return SetParametersResult(successful=True)

    # -- frames -------------------------------------------------------------------------------------------------
    def _on_frame(self, color: Any, info: Any, depth: Any = None) -> None:
        stamp = color.header.stamp.sec * 1_000_000_000 + color.header.stamp.nanosec
        self.worker.submit((color, info, depth), stamp)

    def _estimate(self, msgs: tuple) -> tuple:
        frame = self.assemble(*msgs)
        self._last_frame = frame
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


def _diag_classes() -> dict[str, Any]:
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    return {"diagnostic_msgs/msg/DiagnosticStatus": DiagnosticStatus, "diagnostic_msgs/msg/KeyValue": KeyValue}


def main(args: list[str] | None = None) -> int:
    return run_node(EstimatorNode, SingleThreadedExecutor, ESTIMATOR_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
