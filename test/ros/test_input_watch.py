"""The warning of a node whose camera topics stay silent names the resolved topics and what arrived on each."""
from __future__ import annotations

from selfpose_ros.input_watch import InputWatch

TOPICS = ["/color/image_raw", "/color/camera_info", "/aligned_depth_to_color/image_raw"]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_silent_topics_are_named_after_the_delay():
    clock = Clock()
    watch = InputWatch(TOPICS, warn_after_s=5.0, clock=clock)
    clock.t += 4.9
    assert watch.check() is None
    clock.t += 0.2
    text = watch.check()
    assert text is not None and "since start-up" in text
    for topic in TOPICS:
        assert f"{topic} (0 messages)" in text
    assert "camera:=NAMESPACE" in text and "use_depth:=false" in text


def test_messages_that_never_synchronise_point_at_the_stamps():
    clock = Clock()
    watch = InputWatch(TOPICS[:2], warn_after_s=3.0, sync_slop_s=0.02, clock=clock)
    for _ in range(7):
        watch.message(TOPICS[0])
    watch.message(TOPICS[1])
    clock.t += 3.0
    text = watch.check()
    assert "/color/image_raw (7 messages), /color/camera_info (1 messages)" in text
    assert "never agree within sync_slop 0.02 s" in text and "nothing arrives" not in text


def test_frames_keep_it_quiet_and_a_stall_is_reported():
    clock = Clock()
    watch = InputWatch(TOPICS[:2], warn_after_s=2.0, clock=clock)
    for _ in range(10):
        clock.t += 0.5
        watch.message(TOPICS[0])
        watch.message(TOPICS[1])
        watch.frame()
        assert watch.check() is None
    clock.t += 2.5
    text = watch.check()  # the camera stopped: counted since the last frame, not since start-up
    assert "no synchronised frame for 2 s" in text and "/color/image_raw (0 messages)" in text
    assert "nothing arrives on /color/image_raw, /color/camera_info" in text
