"""A warning when a node's camera input stays silent (plain Python, no rclpy: tested without ROS).

The nodes subscribe to relative topic names that a launch file remaps to the camera driver's; started with
`ros2 run` and no remapping they listen on ``/color/image_raw`` etc. and nothing ever arrives. `InputWatch` counts
the messages of each topic and the synchronised frames; `check()` returns a warning naming the (resolved) topics
and what arrived on each since the last synchronised frame when none came for ``warn_after_s`` seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence


class InputWatch:
    """Counters of the input topics and of the synchronised frames; ``clock`` in seconds (injectable)."""

    def __init__(self, topics: Sequence[str], warn_after_s: float = 5.0, sync_slop_s: float = 0.02,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topics = list(topics)
        self.counts = dict.fromkeys(self.topics, 0)
        self.since_frame = dict.fromkeys(self.topics, 0)  # messages since the last synchronised frame
        self.frames = 0
        self.warn_after_s = float(warn_after_s)
        self.sync_slop_s = float(sync_slop_s)
        self.clock = clock
        self._last_frame = clock()

    def message(self, topic: str) -> None:
        """A message arrived on ``topic`` (before synchronisation)."""
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.since_frame[topic] = self.since_frame.get(topic, 0) + 1

    def frame(self) -> None:
        """A synchronised frame came out of the synchroniser."""
        self.frames += 1
        self._last_frame = self.clock()
        self.since_frame = dict.fromkeys(self.topics, 0)

    def check(self) -> str | None:
        """A warning when no synchronised frame came for ``warn_after_s`` seconds, else None."""
        silent_s = self.clock() - self._last_frame
        if silent_s < self.warn_after_s:
            return None
        since = "since start-up" if self.frames == 0 else f"for {silent_s:.0f} s"
        seen = ", ".join(f"{t} ({self.since_frame[t]} messages)" for t in self.topics)
        head = f"no synchronised frame {since}; listening on {seen}"
        missing = [t for t in self.topics if self.since_frame[t] == 0]
        if missing:
            return (f"{head}: nothing arrives on {', '.join(missing)}. Is the camera driver running (ros2 topic list)? "
                    "Remap the topics with the launch file (camera:=NAMESPACE, default /camera/camera, the "
                    "RealSense wrapper's) or set color_topic / camera_info_topic / depth_topic; without a depth "
                    "camera set use_depth:=false")
        return (f"{head}: every topic has messages but their stamps never agree within sync_slop "
                f"{self.sync_slop_s} s: is the depth registered to the colour camera (RealSense: "
                "align_depth.enable:=true), or raise sync_slop")
