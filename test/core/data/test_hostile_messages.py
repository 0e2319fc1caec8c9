"""Message fields that gave tracebacks: an empty CompressedImage, a compressedDepth shorter than its 12-byte header,
a NaN TF translation, a negative log time. Each is one clear error naming what is wrong."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from selfpose_core.cli.main import main
from selfpose_core.data.image_codec import array_to_compressed_msg, compressed_msg_to_array, intrinsics_to_camera_info
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import BagWriter
from selfpose_core.data.tf_buffer import tf_message
from selfpose_core.errors import EncodingError, RecordingError
from selfpose_core.types import CameraIntrinsics

K = CameraIntrinsics(40.0, 40.0, 19.5, 14.5, 40, 30)


def test_empty_compressed_image():
    msg = array_to_compressed_msg(np.zeros((30, 40, 3), np.uint8), "jpeg", 1, "camera")
    msg.data = np.zeros(0, np.uint8)
    with pytest.raises(EncodingError, match="on topic /c has no data"):
        compressed_msg_to_array(msg, "/c")


@pytest.mark.parametrize("n", [0, 5, 12])
def test_compressed_depth_shorter_than_its_header(n):
    msg = array_to_compressed_msg(np.ones((30, 40), np.float32), "png", 1, "camera")
    msg.format = "16UC1; compressedDepth png"
    msg.data = np.zeros(n, np.uint8)
    with pytest.raises(EncodingError, match=f"on topic /d has only {n} bytes"):
        compressed_msg_to_array(msg, "/d")


def test_undecodable_bytes_are_an_encoding_error():
    msg = array_to_compressed_msg(np.zeros((30, 40, 3), np.uint8), "png", 1, "camera")
    msg.data = np.frombuffer(b"\x89PNG\r\n\x1a\n" + b"\x00" * 3, np.uint8)
    with pytest.raises(EncodingError, match="cannot decode"):
        compressed_msg_to_array(msg, "/c")


def test_nan_tf_translation_names_bag_topic_and_stamp(tmp_path, capsys):
    bag = tmp_path / "bag"
    with BagWriter(bag, segment_messages=None) as w:
        for i in range(3):
            s = 10**18 + i * 10**8
            T = np.eye(4)
            T[:3, 3] = [np.nan if i == 1 else 0.1 * i, 0.0, 1.0]
            w.write("/selfpose/color/image_raw", "sensor_msgs/msg/CompressedImage",
                    array_to_compressed_msg(np.zeros((30, 40, 3), np.uint8), "jpeg", s, "camera"), s)
            w.write("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo", intrinsics_to_camera_info(K, s), s)
            w.write("/tf", "tf2_msgs/msg/TFMessage", tf_message([("world", "camera", s, T)]), s)
    with pytest.raises(RecordingError, match=f"bag {bag}, topic /tf: TF world -> camera at stamp "
                                             f"{10**18 + 10**8} ns has a non-finite translation"):
        Recording(bag)
    assert main(["inspect", str(bag)]) == 2
    assert "non-finite translation" in capsys.readouterr().err


def test_negative_log_time_is_refused_before_anything_is_written(tmp_path):
    with BagWriter(tmp_path / "bag") as w:
        w.write("/c", "sensor_msgs/msg/CameraInfo", intrinsics_to_camera_info(K, 1), 1)
        with pytest.raises(RecordingError, match="cannot write topic /c at log time -1 ns"):
            w.write("/c", "sensor_msgs/msg/CameraInfo", intrinsics_to_camera_info(K, 1), -1)
        w.write("/c", "sensor_msgs/msg/CameraInfo", intrinsics_to_camera_info(K, 2), 2)  # the writer still works
    with Reader(tmp_path / "bag") as r:
        assert r.message_count == 2
