"""Recording profiles: a bag recorded with plain `ros2 bag record` needs no topic options (detected, or stated once
in recording.yaml / a named profile), for every command that reads bags, `pretrain --bag` included."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from selfpose_core.cli.main import build_parser, main
from selfpose_core.cli.pretrain import camera_from_recording
from selfpose_core.cli.recording_options import topics_from_args
from selfpose_core.data.image_codec import array_to_image_msg, intrinsics_to_camera_info
from selfpose_core.data.recording import Recording, RecordingTopics
from selfpose_core.data.recording_profile import (PROFILES, detect_topics, load_profile, profile_for_bag,
                                                  write_profile)
from selfpose_core.errors import ConfigError, RecordingError

from .test_recording import K, ROBOT, T0, _raw_bag, _robot_messages


def _robot_bag(tmp_path, rng, extra=()):
    msgs, stamps, _ = _robot_messages(rng, n_images=4)
    # a second, unregistered depth stream, as the RealSense wrapper publishes beside the aligned one
    msgs += [("/camera/depth/image_rect_raw", "sensor_msgs/msg/Image",
              array_to_image_msg(np.ones((24, 32), np.float32), "16UC1", s, "camera_depth_optical_frame"), s)
             for s in stamps]
    return _raw_bag(tmp_path / "robot", msgs + list(extra)), stamps


def test_detects_the_only_colour_camera_its_info_depth_and_world_frame(tmp_path, rng):
    bag, stamps = _robot_bag(tmp_path, rng)
    choice = detect_topics(bag)
    assert choice.source == "detected from the bag"
    t = choice.topics
    assert (t.color, t.camera_info, t.depth) == (ROBOT.color, ROBOT.camera_info, ROBOT.depth)
    assert t.world_frame == "map" and t.camera_frame == ""  # the TF root above the images' frame
    with Recording(bag, t) as rec, Recording(bag, ROBOT) as expected:
        assert len(rec) == len(stamps) == len(expected)
        np.testing.assert_allclose(rec.poses, expected.poses, atol=1e-12)


def test_commands_read_it_without_topic_options(tmp_path, rng, caplog, capsys):
    bag, stamps = _robot_bag(tmp_path, rng)
    with caplog.at_level(logging.INFO):
        assert main(["inspect", str(bag)]) == 0
    assert f"frames: {len(stamps)}" in capsys.readouterr().out
    assert any("detected from the bag" in r.getMessage() and ROBOT.color in r.getMessage() for r in caplog.records)
    args = build_parser("pretrain").parse_args(["pretrain", "--objects", "o.yaml", "--out", "m", "--bag", str(bag)])
    assert camera_from_recording(bag, topics_from_args(args)) == K
    # an option overrides one name of the profile
    args = build_parser("pretrain").parse_args(["pretrain", "--objects", "o.yaml", "--out", "m", "--bag", str(bag),
                                                "--world-frame", "odom", "--depth-topic", ""])
    t = topics_from_args(args)
    assert (t.color, t.world_frame, t.depth) == (ROBOT.color, "odom", None)


def test_two_cameras_are_an_error_listing_them_and_a_profile_file_settles_it(tmp_path, rng):
    other = [("/arm_cam/image_raw", "sensor_msgs/msg/Image",
              array_to_image_msg(np.zeros((24, 32, 3), np.uint8), "rgb8", T0 + 10**7, "arm_cam"), T0 + 10**7),
             ("/arm_cam/camera_info", "sensor_msgs/msg/CameraInfo",
              intrinsics_to_camera_info(K, T0 + 10**7, "arm_cam"), T0 + 10**7)]
    bag, stamps = _robot_bag(tmp_path, rng, other)
    with pytest.raises(RecordingError, match=r"cannot choose its camera .*/arm_cam/image_raw, "
                                             r"/camera/color/image_raw/compressed.*--profile"):
        profile_for_bag(bag)
    write_profile(bag, RecordingTopics(color=ROBOT.color, depth=ROBOT.depth, camera_info=ROBOT.camera_info,
                                       world_frame="odom", camera_frame=""))
    choice = profile_for_bag(bag)
    assert choice.source.endswith("recording.yaml") and choice.topics.world_frame == "odom"
    assert main(["inspect", str(bag)]) == 0


def test_selfpose_recordings_and_named_profiles(tmp_path, rng):
    from selfpose_core.data.recording_writer import RecordingWriter
    from selfpose_core.types import Frame
    with RecordingWriter(tmp_path / "own") as w:
        w.write_frame(Frame(rgb=np.zeros((24, 32, 3), np.uint8), K=K, stamp_ns=T0, T_world_cam=np.eye(4)))
    assert detect_topics(tmp_path / "own").topics == RecordingTopics()
    assert profile_for_bag(tmp_path / "own", "realsense").topics == PROFILES["realsense"]
    assert PROFILES["realsense"].color == "/camera/camera/color/image_raw"


def test_profile_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("colour: /x\n")
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_profile(bad)
    bad.write_text("color: 3\n")
    with pytest.raises(ConfigError, match="color must be a string"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="neither a profile name"):
        load_profile("kinect")
    bad.write_text("color: /c/image\ndepth: ''\n")
    assert load_profile(bad) == RecordingTopics(color="/c/image", depth=None)
