"""collect_sequence's start/stop services and the adapt goal sent when a recording is finished (without ROS)."""
from __future__ import annotations

import numpy as np

from selfpose_core.data.keyframes import KeyframeConfig, SequenceCollector
from selfpose_core.data.recording import Recording
from selfpose_core.types import CameraIntrinsics, Frame
from selfpose_ros.collect_control import RecordingControl, adapt_goal_for

K = CameraIntrinsics(40.0, 40.0, 15.5, 11.5, 32, 24)


def _pose(stamp_ns: int) -> np.ndarray:
    T = np.eye(4)
    T[0, 3] = 0.1 * (stamp_ns // 10**8)  # 10 cm per frame: every frame is a keyframe
    return T


def _frame(i: int) -> Frame:
    return Frame(rgb=np.full((24, 32, 3), i, np.uint8), K=K, stamp_ns=i * 10**8, index=i)


def _control(finished):
    config = KeyframeConfig(min_translation_m=0.05, min_free_gb=0.0, tf_wait_s=0.0)
    return RecordingControl(lambda out: SequenceCollector(out, _pose, config, free_bytes_fn=lambda p: 10**12),
                            on_finished=finished.append)


def test_start_stop_records_only_in_between_and_reports_the_finished_bag(tmp_path):
    finished = []
    control = _control(finished)
    assert control.add_frame(_frame(0)) == [] and control.idle_frames == 1
    assert control.stop() == (False, "not recording")
    assert control.start("") == (False, "parameter 'output' is empty: set it (ros2 param set ... output "
                                        "/path/to/recording)")
    ok, msg = control.start(str(tmp_path / "run1"))
    assert ok and "recording keyframes to" in msg
    assert not control.start(str(tmp_path / "run2"))[0]  # one at a time
    for i in range(1, 6):
        control.add_frame(_frame(i))
    ok, msg = control.stop()
    assert ok and msg.startswith(f"closed {tmp_path / 'run1'}: 5 keyframes of 5 frames")
    assert finished == [tmp_path / "run1"]
    control.add_frame(_frame(6))  # between recordings: dropped
    with Recording(tmp_path / "run1") as rec:
        assert [int(f.rgb[0, 0, 0]) for f in rec] == [1, 2, 3, 4, 5]
    ok, msg = control.start(str(tmp_path / "run1"))  # never overwritten
    assert not ok and "exists already" in msg
    assert control.start(str(tmp_path / "run2"))[0]
    for i in range(7, 9):
        control.add_frame(_frame(i))
    control.close()
    assert finished == [tmp_path / "run1", tmp_path / "run2"]
    with Recording(tmp_path / "run2") as rec:
        assert len(rec) == 2 and control.idle_frames == 2


def test_adapt_goal_for_a_finished_recording(tmp_path):
    goal = adapt_goal_for(tmp_path / "run1", "objects.yaml", "pre")
    assert (goal.recording, goal.output, goal.resume) == (str(tmp_path / "run1"), f"{tmp_path / 'run1'}_model",
                                                          False)
    goal = adapt_goal_for(tmp_path / "r", "o", "m", output="/models/table",
                          overrides="seed=3; pseudo_label_finetune.trainer={steps: 8, log_every: 1};")
    assert goal.output == "/models/table" and goal.overrides == ["seed=3", "pseudo_label_finetune.trainer={steps: 8, "
                                                                           "log_every: 1}"]
