"""`ros2 run selfpose_ros adapt ...`: the same command line as `selfpose adapt ...` (no rclpy needed).

ROS arguments (``--ros-args ...`` up to ``--``), which `ros2 launch` may append, are ignored.
"""
from __future__ import annotations

import sys

from selfpose_core.cli.main import main as selfpose_main
from selfpose_ros.command import strip_ros_args


def main(argv: list[str] | None = None) -> int:
    args = strip_ros_args(sys.argv[1:] if argv is None else list(argv))
    debug = ["--debug"] if "--debug" in args else []  # a `selfpose` option, given before the subcommand
    return selfpose_main([*debug, "adapt", *(a for a in args if a != "--debug")])


if __name__ == "__main__":
    sys.exit(main())
