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
    msg.encoding = "nv24"
    with pytest.raises(EncodingError, match=r"nv24.*/cam/image"):
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


# four colours in 2x2 blocks (chroma is shared by pixel pairs in 4:2:2 and by 2x2 blocks in 4:2:0)
BLOCK_COLOURS = np.array([[200, 50, 10], [20, 180, 90], [240, 240, 240], [60, 70, 230]], np.float64)


def _blocks(h: int = 4, w: int = 8) -> np.ndarray:
    idx = (np.arange(h)[:, None] // 2 * (w // 2) + np.arange(w)[None, :] // 2) % len(BLOCK_COLOURS)
    return BLOCK_COLOURS[idx]  # (h, w, 3) float


def _ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITU-R BT.601 video range (Y 16..235, Cb/Cr 16..240) of an RGB image in 0..255."""
    r, g, b = (rgb[..., i] / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return tuple(np.rint(c).astype(np.uint8) for c in (y, cb, cr))


def _image(encoding: str, h: int, w: int, data: np.ndarray, step: int | None = None, bigendian: int = 0):
    Image = typestore().types["sensor_msgs/msg/Image"]
    header = array_to_image_msg(np.zeros((1, 1, 3), np.uint8)).header
    rows = data.reshape(data.shape[0], -1).view(np.uint8)
    if step is not None:  # row padding
        padded = np.zeros((rows.shape[0], step), np.uint8)
        padded[:, :rows.shape[1]] = rows
        rows = padded
    msg = Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=bigendian, step=rows.shape[1],
                data=rows.reshape(-1).copy())
    return _cdr_roundtrip(msg, "sensor_msgs/msg/Image")


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_mosaics_are_demosaiced_to_rgb(pattern, bits):
    h, w = 6, 8
    colour = np.array([200, 50, 10])
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.zeros((h, w), np.uint16 if bits == 16 else np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # the pattern names the 2x2 cell row by row
        mosaic[dy::2, dx::2] = colour[channel[pattern[k]]] * (257 if bits == 16 else 1)
    out = image_msg_to_array(_image(f"bayer_{pattern}{bits}", h, w, mosaic, step=w * bits // 8 + 4))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1:-1, 1:-1], np.broadcast_to(colour, (h - 2, w - 2, 3)))


@pytest.mark.parametrize("encoding", ["yuyv", "yuv422_yuy2", "uyvy", "yuv422"])
def test_yuv422_is_converted_with_bt601(encoding):
    rgb = _blocks()
    y, cb, cr = _ycbcr(rgb)
    chroma = np.where(np.arange(rgb.shape[1]) % 2 == 0, cb, cr)  # Cb of the pair on even pixels, Cr on odd
    pair = np.stack([y, chroma], -1) if encoding in ("yuyv", "yuv422_yuy2") else np.stack([chroma, y], -1)
    out = image_msg_to_array(_image(encoding, 4, 8, pair))
    assert out.shape == (4, 8, 3)
    assert np.abs(out.astype(float) - rgb).max() <= 3


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
def test_yuv420_semi_planar_is_converted(encoding):
    rgb = _blocks()
    y, cb, cr = _ycbcr(rgb)
    cb, cr = cb[::2, ::2], cr[::2, ::2]
    uv = np.stack([cb, cr] if encoding == "nv12" else [cr, cb], -1).reshape(2, 8)
    out = image_msg_to_array(_image(encoding, 4, 8, np.concatenate([y, uv]), step=10))
    assert out.shape == (4, 8, 3)
    assert np.abs(out.astype(float) - rgb).max() <= 3
    with pytest.raises(EncodingError, match=r"nv12 image on topic /cam is 8x3: 4:2:0 chroma needs an even"):
        image_msg_to_array(_image("nv12", 3, 8, np.zeros((4, 8), np.uint8)), "/cam")


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16"])
def test_16_bit_colour_is_scaled_to_8_bits(rng, encoding):
    rgb = rng.integers(0, 256, (3, 4, 3)).astype(np.uint16)
    planes = rgb if encoding.startswith("rgb") else rgb[..., ::-1]
    if "a" in encoding[3:]:
        planes = np.concatenate([planes, np.full((3, 4, 1), 65535, np.uint16)], -1)
    out = image_msg_to_array(_image(encoding, 3, 4, (planes * 257).astype(">u2"), bigendian=1))
    np.testing.assert_array_equal(out, rgb.astype(np.uint8))
