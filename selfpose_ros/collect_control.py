"""collect_sequence's start/stop logic without rclpy: one recording at a time, and the adapt goal for a finished one.

`RecordingControl` holds the open `SequenceCollector` (None between recordings). The node's ``~/start`` service
opens one at the ``output`` parameter, ``~/stop`` closes it (the bag is then complete) and reports the finished
recording to ``on_finished``, which sends the Adapt goal (`adapt_goal_for`) when ``adapt_on_finish`` is set.
Frames arriving between recordings are counted and dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selfpose_core.data.keyframes import SequenceCollector
from selfpose_core.errors import SelfposeError
from selfpose_core.types import Frame
from selfpose_ros.adapt_job import AdaptGoal


class RecordingControl:
    """Start/stop of recordings.

    Args:
        open_collector: opens a `SequenceCollector` at a path (raises `SelfposeError` when it cannot).
        on_finished: called with the path of every recording closed by `stop` (or `close`).
    """

    def __init__(self, open_collector: Callable[[str], SequenceCollector],
                 on_finished: Callable[[Path], None] | None = None) -> None:
        self.open_collector = open_collector
        self.on_finished = on_finished
        self.collector: SequenceCollector | None = None
        self.idle_frames = 0  # frames that arrived while not recording
        self.finished: list[Path] = []

    @property
    def recording(self) -> bool:
        return self.collector is not None

    def start(self, output: str) -> tuple[bool, str]:
        """Open a recording at ``output``; (success, message)."""
        if self.collector is not None:
            return False, f"already recording to {self.collector.path}; stop it first"
        if not output:
            return False, "parameter 'output' is empty: set it (ros2 param set ... output /path/to/recording)"
        try:
            self.collector = self.open_collector(output)
        except SelfposeError as exc:
            return False, str(exc)
        return True, f"recording keyframes to {output}"

    def add_frame(self, frame: Frame) -> list[int]:
        """The keyframe stamps written for ``frame`` (none when not recording)."""
        if self.collector is None:
            self.idle_frames += 1
            return []
        return self.collector.add_frame(frame)

    def stop(self) -> tuple[bool, str]:
        """Close the recording; (success, message with its progress line)."""
        if self.collector is None:
            return False, "not recording"
        collector, self.collector = self.collector, None
        collector.close()
        self.finished.append(collector.path)
        message = f"closed {collector.path}: {collector.progress()}"
        if self.on_finished is not None:
            self.on_finished(collector.path)
        return True, message

    def close(self) -> None:
        """Stop a running recording (shutdown)."""
        if self.collector is not None:
            self.stop()


def adapt_goal_for(recording: Path, objects: str, base_model: str, output: str = "", overrides: str = "",
                   profile: str = "") -> AdaptGoal:
    """The Adapt goal for a finished recording: ``output`` '' writes ``<recording>_model`` beside it; ``overrides``
    holds KEY=VALUE items separated by ';' (a ROS parameter cannot be an empty list)."""
    return AdaptGoal(recording=str(recording), objects=objects, base_model=base_model,
                     output=output or f"{recording}_model",
                     overrides=[item.strip() for item in overrides.split(";") if item.strip()], profile=profile)
