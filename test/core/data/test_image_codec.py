"""sensor_msgs Image / CompressedImage / CameraInfo conversions, checked against the real ROS 2 definitions (rosbags)."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.data.image_codec import (array_to_compressed_msg, array_to_image_msg, camera_info_to_intrinsics,
                                            check_image_size, compressed_msg_to_array, image_msg_to_array,
                                            intrinsics_to_camera_info)
from selfpose_core.data.ros_types import typestore
from selfpose_core.errors import CalibrationError, EncodingError
from selfpose_core.types import CameraIntrinsics


def _cdr_roundtrip(msg, name):
    """Serialize to CDR bytes and back, as a bag or DDS would."""
    store = typestore()
    return store.deserialize_cdr(store.serialize_cdr(msg, name), name)


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(rgb, encoding):
    msg = _cdr_roundtrip(array_to_image_msg(rgb, encoding, 123, "cam"), "sensor_msgs/msg/Image")
    assert msg.encoding == encoding and (msg.width, msg.height) == (5, 7)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 123
    np.testing.assert_array_equal(image_msg_to_array(msg), rgb)


def test_bgr8_really_is_bgr(rgb):
    msg = array_to_image_msg(rgb, "bgr8")
    np.testing.assert_array_equal(np.asarray(msg.data).reshape(7, 5, 3), rgb[..., ::-1])


def test_mono8_becomes_grey_rgb(rgb):
    out = image_msg_to_array(array_to_image_msg(rgb, "mono8"))
    assert out.shape == (7, 5, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(out[..., 0] - grey).max() <= 1.0


def test_depth_16uc1_is_millimetres_and_zero_invalid(rng):
    depth = rng.uniform(0.3, 5.0, (6, 4)).astype(np.float32)
    depth[0, 0] = 0.0
    depth[1, 1] = np.nan
    msg = _cdr_roundtrip(array_to_image_msg(depth, "16UC1"), "sensor_msgs/msg/Image")
    raw = np.asarray(msg.data).view("<u2").reshape(6, 4)
    assert raw[2, 2] == round(depth[2, 2] * 1000)
    out = image_msg_to_array(msg)
    assert out.dtype == np.float32 and out[0, 0] == 0 and out[1, 1] == 0
    assert np.abs(out - np.nan_to_num(depth)).max() <= 0.0005 + 1e-6


def test_depth_32fc1_is_metres_exact_and_nan_invalid(rng):
    depth = rng.uniform(0.3, 5.0, (6, 4)).astype(np.float32)
    depth[0, 0] = 0.0
    out = image_msg_to_array(_cdr_roundtrip(array_to_image_msg(depth, "32FC1"), "sensor_msgs/msg/Image"))
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out[1:], depth[1:])


def test_row_padding_and_big_endian_are_honoured():
    Image = typestore().types["sensor_msgs/msg/Image"]
    header = array_to_image_msg(np.zeros((1, 1, 3), np.uint8)).header
    mm = np.array([[1000, 2000, 3000], [4000, 5000, 65535]], dtype=">u2")
    padded = np.zeros((2, 8), np.uint8)  # step 8 bytes for 3 pixels of 2 bytes: 2 padding bytes per row
    padded[:, :6] = mm.view(np.uint8).reshape(2, 6)
    msg = Image(header=header, height=2, width=3, encoding="16UC1", is_bigendian=1, step=8, data=padded.reshape(-1))
    np.testing.assert_allclose(image_msg_to_array(msg), mm.astype(np.float32) / 1000)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = rgb.reshape(2, 9)
    msg = Image(header=header, height=2, width=3, encoding="rgb8", is_bigendian=0, step=12, data=padded.reshape(-1))
    np.testing.assert_array_equal(image_msg_to_array(msg), rgb)


def test_unknown_encoding_names_topic_and_encoding(rgb):
    msg = array_to_image_msg(rgb)
    msg.encoding = "yuv422"
    with pytest.raises(EncodingError, match=r"yuv422.*/cam/image"):
        image_msg_to_array(msg, "/cam/image")


def test_too_short_data_is_an_encoding_error(rgb):
    msg = array_to_image_msg(rgb)
    msg.data = msg.data[:10]
    with pytest.raises(EncodingError, match="/cam"):
        image_msg_to_array(msg, "/cam")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_round_trip(fmt, rng):
    smooth = np.clip(np.linspace(0, 255, 32)[None, :, None] + np.zeros((24, 1, 3)) + [0, 40, 80], 0, 255)
    img = smooth.astype(np.uint8)
    msg = _cdr_roundtrip(array_to_compressed_msg(img, fmt, 5, "cam"), "sensor_msgs/msg/CompressedImage")
    assert msg.format == f"rgb8; {fmt} compressed bgr8"
    out = compressed_msg_to_array(msg, "/c")
    if fmt == "png":
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out.astype(int) - img).mean() < 3  # channel order kept (a swap would be off by ~50)


def test_compressed_depth_png(rng):
    depth = rng.uniform(0.3, 5, (9, 11)).astype(np.float32)
    msg = _cdr_roundtrip(array_to_compressed_msg(depth, "png"), "sensor_msgs/msg/CompressedImage")
    assert "compressedDepth" in msg.format
    assert np.abs(compressed_msg_to_array(msg) - depth).max() <= 0.0005 + 1e-6


def test_unknown_compressed_format(rgb):
    msg = array_to_compressed_msg(rgb, "png")
    msg.format = "theora"
    with pytest.raises(EncodingError, match="theora.*/cam/compressed"):
        compressed_msg_to_array(msg, "/cam/compressed")


def test_camera_info_round_trip():
    K = CameraIntrinsics(500.0, 510.0, 319.5, 239.5, 640, 480)
    msg = _cdr_roundtrip(intrinsics_to_camera_info(K, 7, "cam"), "sensor_msgs/msg/CameraInfo")
    assert list(msg.p[:3]) == [500.0, 0.0, 319.5] and msg.distortion_model == "plumb_bob"
    assert camera_info_to_intrinsics(msg) == K


def test_zero_K_names_topic():
    msg = intrinsics_to_camera_info(CameraIntrinsics(1, 1, 0, 0, 4, 3))
    msg.k = np.zeros(9)
    with pytest.raises(CalibrationError, match="/cam/camera_info.*zero K"):
        camera_info_to_intrinsics(msg, "/cam/camera_info")


def test_size_mismatch_names_both_topics(rgb):
    K = CameraIntrinsics(10, 10, 2, 3, 6, 7)
    with pytest.raises(CalibrationError, match=r"/img.*5x7.*/info.*6x7"):
        check_image_size(rgb, K, "/img", "/info")


def test_writers_build_other_message_classes(rgb):
    """The ROS nodes pass their rclpy classes; plain (non-dataclass) classes get array.array byte fields."""
    class Plain:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    names = ["sensor_msgs/msg/Image", "std_msgs/msg/Header", "builtin_interfaces/msg/Time"]
    msg = array_to_image_msg(rgb, "bgr8", 3_000_000_001, "cam", classes={n: Plain for n in names})
    assert type(msg) is Plain and type(msg.header.stamp) is Plain
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (3, 1)
    assert msg.data.typecode == "B"
    np.testing.assert_array_equal(image_msg_to_array(msg), rgb)
