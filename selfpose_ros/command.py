"""`ros2 run selfpose_ros selfpose COMMAND ...`: the `selfpose` command line in a colcon install (no rclpy needed).

colcon installs no console scripts for an ament_cmake package, so this executable is how a ROS user runs
`selfpose recover`, `selfpose pretrain`, `selfpose inspect`, ... ROS arguments (``--ros-args ...`` up to ``--``),
which `ros2 launch` may append, are ignored.
"""
from __future__ import annotations

import sys

from selfpose_core.cli.main import main as selfpose_main


def strip_ros_args(argv: list[str]) -> list[str]:
    """``argv`` without a ``--ros-args ... [--]`` section."""
    out: list[str] = []
    skipping = False
    for arg in argv:
        if arg == "--ros-args":
            skipping = True
        elif skipping and arg == "--":
            skipping = False
        elif not skipping:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    return selfpose_main(strip_ros_args(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    sys.exit(main())
