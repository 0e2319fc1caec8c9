"""`ros2 run selfpose_ros adapt_server`: the Adapt action (selfpose_ros/action/Adapt) — learn from ROS.

Thin shell over `selfpose_ros.adapt_job`: a goal is refused while another runs; an accepted one runs `selfpose adapt`
in a child process (the node stays responsive), feedback every ``feedback_period`` seconds (stage, step/total, loss,
ETA); a cancel stops the child like Ctrl-C, keeping its checkpoints (send the goal again with ``resume``). On
success the bundle path is also published, latched, on ``bundle_topic`` (std_msgs/String), where an estimator
started with ``reload_on_adapt:=true`` picks it up.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from selfpose_ros.action import Adapt
from selfpose_ros.adapt_job import AdaptGoal, AdaptJob, AdaptServer
from selfpose_ros.node_main import run_node
from selfpose_ros.parameters import ADAPT_SERVER_NODE, ADAPT_SERVER_PARAMETERS, declare


def goal_from_msg(msg: Any, device: str) -> AdaptGoal:
    return AdaptGoal(recording=msg.recording, objects=msg.objects, base_model=msg.base_model, output=msg.output,
                     overrides=list(msg.overrides), profile=msg.profile, resume=bool(msg.resume), device=device)


class AdaptServerNode(Node):
    """Parameters, the action server and the bundle topic; the jobs are `AdaptServer`'s."""

    def __init__(self) -> None:
        super().__init__(ADAPT_SERVER_NODE)
        p = declare(self, ADAPT_SERVER_PARAMETERS)
        self.period = float(p["feedback_period"])
        self.device = str(p["device"])
        grace = float(p["cancel_grace"])
        self.server = AdaptServer(job_factory=lambda goal: AdaptJob(goal, grace_s=grace))
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.bundle_pub = self.create_publisher(String, p["bundle_topic"], latched)
        self.action = ActionServer(self, Adapt, p["action_name"], execute_callback=self._execute,
                                   goal_callback=self._on_goal, cancel_callback=lambda _: CancelResponse.ACCEPT,
                                   callback_group=ReentrantCallbackGroup())
        self.get_logger().info(f"Adapt action server on {self.resolve_topic_name(p['action_name'])}; adapted "
                               f"bundles announced on {self.bundle_pub.topic_name}")

    def _on_goal(self, request: Any) -> GoalResponse:
        why = self.server.reserve(goal_from_msg(request, self.device))
        if why:
            self.get_logger().warn(f"adapt goal for {request.output!r} refused: {why}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, handle: Any) -> Any:
        goal = goal_from_msg(handle.request, self.device)
        self.get_logger().info(f"adapting {goal.base_model} to {goal.recording} -> {goal.output}"
                               + (" (resume)" if goal.resume else ""))
        job = self.server.start(goal)
        feedback = Adapt.Feedback()
        while job.running:
            if handle.is_cancel_requested:
                job.cancel()
            pr = job.progress
            feedback.stage, feedback.stage_index, feedback.stages = pr.stage, pr.stage_index, pr.stages
            feedback.step, feedback.total, feedback.loss, feedback.eta_s = pr.step, pr.total, pr.loss, pr.eta_s
            feedback.line = pr.line[-500:]
            handle.publish_feedback(feedback)
            time.sleep(self.period)
        job.wait()
        out = job.outcome()
        result = Adapt.Result(success=out.success, bundle=out.bundle, report=out.report, message=out.message,
                              figure_names=list(out.figures),
                              figure_values=[v if math.isfinite(v) else math.nan for v in out.figures.values()])
        if out.success:
            handle.succeed()
            self.bundle_pub.publish(String(data=out.bundle))
            self.get_logger().info(out.message)
        elif out.cancelled and handle.is_cancel_requested:
            handle.canceled()
            self.get_logger().info(out.message)
        else:
            handle.abort()
            self.get_logger().error(out.message)
        return result

    def close(self) -> None:
        job = self.server.job
        if job is not None and job.running:
            self.get_logger().info("stopping the running adaptation (checkpoints kept)")
            job.cancel()
            job.wait(2 * job.grace_s + 5)


def main(args: list[str] | None = None) -> int:
    # feedback loops run beside new goals and cancels; Ctrl-C cancels a running adaptation (checkpoints kept)
    return run_node(AdaptServerNode, lambda: MultiThreadedExecutor(num_threads=4), ADAPT_SERVER_NODE, args)


if __name__ == "__main__":
    sys.exit(main())
