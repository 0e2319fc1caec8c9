"""`ros2 run selfpose_ros collect_sequence --ros-args -p output:=BAG` (or `ros2 launch selfpose_ros collect.launch.py`).

Synchronised colour (+ depth) + camera_info in (sensor-data QoS); the camera pose ``world_frame <- camera_frame`` is
looked up in tf2 at each image stamp; `selfpose_core.data.keyframes.SequenceCollector` keeps the keyframes and writes
the recording. Ctrl-C / SIGTERM (handled in `main`, not in the library): the frame being written is completed, frames
still waiting for TF are decided, the bag is closed and readable; a second Ctrl-C stops at once.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from std_srvs.srv import Trigger
from tf2_ros import Buffer, TransformException, TransformListener

from selfpose_core.data.keyframes import KeyframeConfig, SequenceCollector
from selfpose_core.data.tf_buffer import transform_msg_to_matrix
from selfpose_core.errors import SelfposeError
from selfpose_ros.action import Adapt
from selfpose_ros.camera_subscription import subscribe_camera
from selfpose_ros.collect_control import RecordingControl, adapt_goal_for
from selfpose_ros.conversions import FrameAssembler
from selfpose_ros.node_main import run_node
from selfpose_ros.parameters import COLLECT_NODE, COLLECT_PARAMETERS, declare


class CollectSequenceNode(Node):
    """Thin shell: parameters, subscriptions, a tf2 buffer, the ~/start and ~/stop services and the Adapt client;
    keyframe logic and writing are in `SequenceCollector`, start/stop in `RecordingControl`."""

    def __init__(self) -> None:
        super().__init__(COLLECT_NODE)
        p = declare(self, COLLECT_PARAMETERS)
        if not p["output"] and p["autostart"]:
            raise SelfposeError("parameter 'output' (the bag directory to create) is required: "
                                "--ros-args -p output:=/path/to/recording (or -p autostart:=false and the ~/start "
                                "service)")
        self.p = p
        self.world_frame = p["world_frame"]
        self.camera_frame = p["camera_frame"]
        self.tf_buffer = Buffer()
        self.tf_listener = TransformListener(self.tf_buffer, self)
        self.keyframe_config = KeyframeConfig(
            min_translation_m=float(p["min_translation"]), min_rotation_deg=float(p["min_rotation"]),
            tf_wait_s=float(p["tf_timeout"]), min_free_gb=float(p["min_free_gb"]))
        self.control = RecordingControl(self._open_collector, on_finished=self._on_finished)
        self._last_tf_error = ""
        self.adapt_client = ActionClient(self, Adapt, p["adapt_action"]) if p["adapt_on_finish"] else None

        self.camera = subscribe_camera(self, p, self._on_frame)
        self.input_watch = self.camera.watch
        self.assemble = FrameAssembler(*self.input_watch.topics)  # errors name the resolved topics
        self.create_timer(float(p["progress_period"]), self._report)
        self.create_service(Trigger, "~/start", self._on_start)
        self.create_service(Trigger, "~/stop", self._on_stop)
        self.get_logger().info(f"listening on {' + '.join(self.input_watch.topics)} with poses {self.world_frame} <- "
                               f"{self.camera_frame or '<image frame_id>'}; services "
                               f"{self.resolve_service_name('~/start')}, {self.resolve_service_name('~/stop')}")
        if p["autostart"]:
            ok, message = self.control.start(p["output"])
            if not ok:
                raise SelfposeError(message)
            self.get_logger().info(message)

    def _open_collector(self, output: str) -> SequenceCollector:
        p = self.p
        return SequenceCollector(output, self._pose_at, self.keyframe_config, storage=p["storage"],
                                 image_format=p["image_format"], depth_format=p["depth_format"],
                                 segment_frames=int(p["segment_frames"]))

    def _on_start(self, request: Any, response: Any) -> Any:
        response.success, response.message = self.control.start(str(self.get_parameter("output").value))
        self._log_reply("start", response)
        return response

    def _on_stop(self, request: Any, response: Any) -> Any:
        response.success, response.message = self.control.stop()
        self._log_reply("stop", response)
        return response

    def _log_reply(self, service: str, response: Any) -> None:
        if response.success:  # one severity per call site: rclpy refuses to change it
            self.get_logger().info(f"{service}: {response.message}")
        else:
            self.get_logger().warn(f"{service}: {response.message}")

    def _on_finished(self, path: Path) -> None:
        if self.adapt_client is None:
            return
        p = self.p
        goal = adapt_goal_for(path, p["adapt_objects"], p["adapt_base_model"], p["adapt_output"],
                              p["adapt_overrides"])
        if not self.adapt_client.server_is_ready():
            self.get_logger().error(f"no Adapt action server on {p['adapt_action']}: {path} not sent for adaptation "
                                    "(start it: ros2 run selfpose_ros adapt_server)")
            return
        msg = Adapt.Goal(recording=goal.recording, objects=goal.objects, base_model=goal.base_model,
                         output=goal.output, overrides=goal.overrides, profile="", resume=False)
        future = self.adapt_client.send_goal_async(msg)
        future.add_done_callback(lambda f: self.get_logger().info(
            f"adapt goal for {path} -> {goal.output} " + ("accepted" if f.result().accepted else "refused")))

    def _pose_at(self, stamp_ns: int) -> np.ndarray | None:
        try:
            ts = self.tf_buffer.lookup_transform(self.world_frame, self.camera_frame, Time(nanoseconds=stamp_ns))
        except TransformException as exc:
            self._last_tf_error = str(exc)
            return None
        return transform_msg_to_matrix(ts.transform)

    def _on_frame(self, color: Any, info: Any, depth: Any = None) -> None:
        if not self.control.recording:
            self.control.add_frame(None)  # counted, not decoded
            return
        frame = self.assemble(color, info, depth)
        if not self.camera_frame:
            self.camera_frame = frame.frame_id
        for stamp in self.control.add_frame(frame):
            self.get_logger().debug(f"keyframe at {stamp * 1e-9:.3f} s")

    def _report(self) -> None:
        collector = self.control.collector
        if collector is None:
            return
        self.get_logger().info(collector.progress())
        if collector.stats.no_tf and self._last_tf_error:
            self.get_logger().warn(f"frames without a camera pose; last TF error: {self._last_tf_error}",
                                   throttle_duration_sec=10.0)

    def close(self) -> None:
        collector = self.control.collector
        if collector is not None:
            self.control.close()
            self.get_logger().info(f"closed {collector.path}: {collector.progress()}")


def main(args: list[str] | None = None) -> int:
    # Signals are handled by run_node, not by rclpy: the first Ctrl-C / SIGTERM is raised once the frame being
    # written is complete, a second one at once (cli/signals.py); node.close() then closes the bag.
    return run_node(CollectSequenceNode, SingleThreadedExecutor, COLLECT_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
