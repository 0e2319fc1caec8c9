"""sensor_msgs Image / CompressedImage / CameraInfo <-> numpy arrays and `CameraIntrinsics`.

Readers are duck-typed on the ROS field names, so they accept rosbags message dataclasses and rclpy messages alike.
Writers build rosbags dataclasses by default; pass ``classes`` (ROS type name -> message class, e.g. the rclpy classes
``{"sensor_msgs/msg/Image": Image, "std_msgs/msg/Header": Header, "builtin_interfaces/msg/Time": Time}``) to build
other messages with the same code.

Conventions (DESIGN.md section 3): colour comes out as RGB uint8 (H, W, 3); depth as float32 (H, W) metres with 0 or
NaN meaning invalid (16UC1 is millimetres, 0 = invalid; 32FC1 is metres, NaN = invalid).

Colour conversions (Bayer demosaicing, YUV 4:2:2 and 4:2:0, 16-bit colour, channel orders) are rosbags-image's
(`rosbags.image.image_to_cvimage`, OpenCV underneath); this module checks the message (size, ``step`` row padding,
byte order) and names the topic in its errors.
"""
from __future__ import annotations

import array
import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, image_to_cvimage

from selfpose_core.data.ros_types import typestore
from selfpose_core.config_io import excerpt
from selfpose_core.errors import CalibrationError, EncodingError, ShapeError
from selfpose_core.types import CameraIntrinsics

_BAYER = tuple(f"bayer_{p}{bits}" for bits in (8, 16) for p in ("rggb", "bggr", "gbrg", "grbg"))
_YUV = ("uyvy", "yuv422", "yuyv", "yuv422_yuy2", "nv12", "nv21")
COLOR_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16") + _BAYER + _YUV
DEPTH_ENCODINGS = ("16UC1", "32FC1")
WRITABLE_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8") + DEPTH_ENCODINGS
_ALIASES = {"8UC1": "mono8", "8UC3": "bgr8", "8UC4": "bgra8", "mono16": "16UC1"}


def _layout(enc: str) -> tuple[type, int, float]:
    """(numpy dtype, channels, rows per image row) of a decodable encoding; NV12/NV21 hold 1.5 rows per row."""
    if enc == "32FC1":
        return np.float32, 1, 1.0
    dtype = np.uint16 if enc.endswith("16") or enc == "16UC1" else np.uint8
    if enc.startswith(("rgba", "bgra")):
        return dtype, 4, 1.0
    if enc.startswith(("rgb", "bgr")):
        return dtype, 3, 1.0
    if enc in ("uyvy", "yuv422", "yuyv", "yuv422_yuy2"):
        return dtype, 2, 1.0
    return dtype, 1, 1.5 if enc in ("nv12", "nv21") else 1.0

MsgClasses = Mapping[str, Any]


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _topic_text(topic: str | None) -> str:
    return f" on topic {topic}" if topic else ""


def image_msg_to_array(msg: Any, topic: str | None = None) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3) for colour encodings or float32 (H, W) metres for depth encodings.

    Colour: rgb8, bgr8, rgba8, bgra8, mono8 (grey), their 16-bit forms (scaled to 8 bits), Bayer (bayer_rggb8 ...,
    8 and 16 bits, demosaiced), YUV 4:2:2 (uyvy/yuv422, yuyv/yuv422_yuy2) and 4:2:0 (nv12, nv21: height rows of Y
    then height/2 rows of interleaved chroma). Depth: 16UC1 (mm; also mono16) and 32FC1 (m). Honours ``step`` (row
    padding) and ``is_bigendian``. Anything else raises `EncodingError` naming the topic and the encoding.
    """
    enc = _ALIASES.get(msg.encoding, msg.encoding)
    if enc not in COLOR_ENCODINGS + DEPTH_ENCODINGS:
        raise EncodingError(f"unsupported image encoding {excerpt(msg.encoding, 60)}{_topic_text(topic)} (supported: "
                            f"{', '.join(COLOR_ENCODINGS + DEPTH_ENCODINGS)})")
    dtype, ch, rows_per_row = _layout(enc)
    h, w = int(msg.height), int(msg.width)
    if rows_per_row != 1.0 and (h % 2 or w % 2):
        raise EncodingError(f"{enc} image{_topic_text(topic)} is {w}x{h}: 4:2:0 chroma needs an even width and height")
    rows = int(h * rows_per_row)
    row_bytes = w * ch * np.dtype(dtype).itemsize
    step = int(msg.step) or row_bytes
    raw = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    if step < row_bytes or raw.size < step * (rows - 1) + row_bytes:
        raise EncodingError(f"image{_topic_text(topic)} has {raw.size} data bytes, too few for {w}x{h} "
                            f"{excerpt(msg.encoding, 60)} "
                            f"with step {step}")
    if raw.size < step * rows:
        raw = np.concatenate([raw, np.zeros(step * rows - raw.size, np.uint8)])
    packed = np.ascontiguousarray(raw[: step * rows].reshape(rows, step)[:, :row_bytes])
    if enc in DEPTH_ENCODINGS:
        dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
        depth = packed.view(dt).reshape(h, w)
        if enc == "16UC1":
            return depth.astype(np.float32) * np.float32(1e-3)
        return depth.astype(np.float32)
    plain = SimpleNamespace(encoding=enc, height=rows, width=w, is_bigendian=bool(msg.is_bigendian),
                            data=packed.reshape(-1))
    try:
        return np.ascontiguousarray(image_to_cvimage(plain, "rgb8"))
    except (ImageError, cv2.error) as exc:
        raise EncodingError(f"cannot convert {enc} image{_topic_text(topic)} to rgb8: {exc}") from None


def _as_bytes(data: Any) -> bytes | np.ndarray | memoryview:
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, array.array):
        return memoryview(data).cast("B")
    return bytes(data)


def _imdecode(buf: np.ndarray) -> np.ndarray | None:
    """cv2.imdecode, None where OpenCV refuses the buffer (it raises for some malformed inputs)."""
    try:
        return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


def compressed_msg_to_array(msg: Any, topic: str | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, incl. compressedDepth png) -> RGB uint8 (H, W, 3) or depth float32 (H, W).

    ``format`` is as image_transport writes it: "jpeg", "png", "rgb8; jpeg compressed bgr8",
    "16UC1; compressedDepth png" (a 12-byte config header precedes the PNG in compressedDepth).
    """
    fmt = str(msg.format)
    raw = np.frombuffer(_as_bytes(msg.data), dtype=np.uint8)
    low = fmt.lower()
    if "compresseddepth" in low:
        if "png" not in low:
            raise EncodingError(f"unsupported compressed depth format {excerpt(fmt, 60)}{_topic_text(topic)} "
                                "(only png)")
        if raw.size <= 12:
            raise EncodingError(f"compressedDepth image{_topic_text(topic)} has only {raw.size} bytes: too short "
                                f"for the 12-byte compressedDepth header plus a PNG (format {excerpt(fmt, 60)})")
        img = _imdecode(raw[12:])
        if img is None:
            raise EncodingError(f"cannot decode compressedDepth png{_topic_text(topic)} (format {excerpt(fmt, 60)})")
        if img.dtype != np.uint16:
            raise EncodingError(f"compressedDepth png{_topic_text(topic)} holds {img.dtype}, expected 16-bit mm")
        return img.astype(np.float32) * np.float32(1e-3)
    if not any(k in low for k in ("jpeg", "jpg", "png")):
        raise EncodingError(f"unsupported compressed image format {excerpt(fmt, 60)}{_topic_text(topic)} (jpeg or png)")
    if raw.size == 0:
        raise EncodingError(f"compressed image{_topic_text(topic)} has no data (0 bytes, format {excerpt(fmt, 60)})")
    img = _imdecode(raw)
    if img is None:
        raise EncodingError(f"cannot decode compressed image{_topic_text(topic)} (format {excerpt(fmt, 60)}, "
                            f"{raw.size} bytes)")
    if img.dtype == np.uint16:  # 16-bit png depth published as plain CompressedImage
        return img.astype(np.float32) * np.float32(1e-3)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[..., 2::-1])
    return np.ascontiguousarray(img[..., ::-1])


def build_msg(classes: MsgClasses | None, name: str, **fields: Any) -> Any:
    """A message of ROS type ``name`` from ``classes`` when it holds that type, else the rosbags dataclass."""
    if classes is not None and name in classes:
        return classes[name](**fields)
    return typestore().types[name](**fields)




def _is_rosbags(classes: MsgClasses | None, name: str) -> bool:
    return classes is None or name not in classes or dataclasses.is_dataclass(classes[name])


def make_header(stamp_ns: int, frame_id: str, classes: MsgClasses | None = None) -> Any:
    """std_msgs/Header with ``stamp`` from int nanoseconds."""
    stamp = build_msg(classes, "builtin_interfaces/msg/Time", sec=int(stamp_ns // 1_000_000_000),
                 nanosec=int(stamp_ns % 1_000_000_000))
    return build_msg(classes, "std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)


def _byte_field(classes: MsgClasses | None, name: str, data: bytes | np.ndarray) -> Any:
    buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data
    if _is_rosbags(classes, name):
        return np.frombuffer(buf, dtype=np.uint8).copy() if not isinstance(buf, np.ndarray) else buf.copy()
    return array.array("B", bytes(buf))


def array_to_image_msg(image: np.ndarray, encoding: str | None = None, stamp_ns: int = 0, frame_id: str = "camera",
                       *, classes: MsgClasses | None = None) -> Any:
    """RGB uint8 (H, W, 3) or depth float32 (H, W) metres -> sensor_msgs/Image.

    ``encoding`` defaults to rgb8 for uint8 colour and 32FC1 for float depth; colour may be written as rgb8, bgr8,
    rgba8, bgra8 or mono8 (luma), depth as 16UC1 (millimetres, rounded, 0 = invalid incl. NaN) or 32FC1 (metres).
    """
    image = np.asarray(image)
    if encoding is None:
        encoding = "rgb8" if image.dtype == np.uint8 else "32FC1"
    if encoding in WRITABLE_ENCODINGS and encoding not in DEPTH_ENCODINGS:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ShapeError(f"colour image for encoding {encoding} must be uint8 (H, W, 3), got {image.dtype} "
                             f"{image.shape}")
        if encoding == "rgb8":
            out = image
        elif encoding == "bgr8":
            out = image[..., ::-1]
        elif encoding == "rgba8":
            out = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        elif encoding == "bgra8":
            out = np.concatenate([image[..., ::-1], np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        else:
            out = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    elif encoding in DEPTH_ENCODINGS:
        if image.ndim != 2:
            raise ShapeError(f"depth image for encoding {encoding} must be (H, W), got {image.shape}")
        depth = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if encoding == "16UC1":
            out = np.clip(np.rint(depth * 1000.0), 0, 65535).astype("<u2")
        else:
            out = np.where(depth > 0, depth, np.float32(np.nan)).astype("<f4")
    else:
        raise EncodingError(f"cannot write image encoding {encoding!r} (supported: {', '.join(WRITABLE_ENCODINGS)})")
    out = np.ascontiguousarray(out)
    h, w = out.shape[:2]
    return build_msg(classes, "sensor_msgs/msg/Image", header=make_header(stamp_ns, frame_id, classes), height=h, width=w,
                encoding=encoding, is_bigendian=0, step=out.nbytes // h,
                data=_byte_field(classes, "sensor_msgs/msg/Image", out))


def array_to_compressed_msg(image: np.ndarray, fmt: str = "jpeg", stamp_ns: int = 0, frame_id: str = "camera",
                            *, quality: int = 95, classes: MsgClasses | None = None) -> Any:
    """RGB uint8 (H, W, 3) -> sensor_msgs/CompressedImage (``fmt`` "jpeg" or "png"), or depth float32 (H, W) metres
    -> compressedDepth png (16-bit millimetres), formats as image_transport writes them."""
    image = np.asarray(image)
    if fmt not in ("jpeg", "png"):
        raise EncodingError(f"cannot write compressed format {fmt!r} (jpeg or png)")
    if image.ndim == 2:
        if fmt != "png":
            raise EncodingError("compressed depth can only be written as png")
        mm = np.clip(np.rint(np.nan_to_num(image, nan=0.0) * 1000.0), 0, 65535).astype(np.uint16)
        ok, buf = cv2.imencode(".png", mm)
        data = np.concatenate([np.zeros(12, np.uint8), buf.reshape(-1)])
        fmt_str = "16UC1; compressedDepth png"
    else:
        if image.dtype != np.uint8 or image.shape[2:] != (3,):
            raise ShapeError(f"colour image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
        ok, buf = cv2.imencode(f".{fmt}", np.ascontiguousarray(image[..., ::-1]), params)
        data = buf.reshape(-1)
        fmt_str = f"rgb8; {fmt} compressed bgr8"
    if not ok:
        raise EncodingError(f"OpenCV failed to encode a {image.shape} image as {fmt}")
    return build_msg(classes, "sensor_msgs/msg/CompressedImage", header=make_header(stamp_ns, frame_id, classes),
                format=fmt_str, data=_byte_field(classes, "sensor_msgs/msg/CompressedImage", data))


def any_image_to_array(msg: Any, topic: str | None = None) -> np.ndarray:
    """Decode an Image or a CompressedImage (told apart by their fields)."""
    if hasattr(msg, "encoding"):
        return image_msg_to_array(msg, topic)
    return compressed_msg_to_array(msg, topic)


def camera_info_to_intrinsics(msg: Any, topic: str | None = None) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> `CameraIntrinsics` from ``k`` (row-major 3x3), ``width`` and ``height``.

    A zero K (uncalibrated camera) or zero image size raises `CalibrationError` naming the topic.
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    where = _topic_text(topic) or " in CameraInfo"
    if k.size != 9 or not np.any(k):
        raise CalibrationError(f"camera_info{where} has an all-zero K: the camera is not calibrated")
    try:
        return CameraIntrinsics.from_K(k, int(msg.width), int(msg.height))
    except CalibrationError as exc:
        raise CalibrationError(f"camera_info{where}: {exc}") from None


def intrinsics_to_camera_info(K: CameraIntrinsics, stamp_ns: int = 0, frame_id: str = "camera",
                              *, classes: MsgClasses | None = None) -> Any:
    """`CameraIntrinsics` -> sensor_msgs/CameraInfo (plumb_bob, zero distortion, identity R, P = [K | 0])."""
    k = K.K.reshape(-1)
    p = np.zeros((3, 4))
    p[:, :3] = K.K
    rosbags = _is_rosbags(classes, "sensor_msgs/msg/CameraInfo")
    d = np.zeros(5) if rosbags else array.array("d", [0.0] * 5)
    roi = build_msg(classes, "sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
               do_rectify=False)
    return build_msg(classes, "sensor_msgs/msg/CameraInfo", header=make_header(stamp_ns, frame_id, classes),
                height=int(K.height), width=int(K.width), distortion_model="plumb_bob", d=d, k=k,
                r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def check_image_size(image: np.ndarray, K: CameraIntrinsics, image_topic: str | None = None,
                     info_topic: str | None = None) -> None:
    """Raise `CalibrationError` naming both topics when the image is not the size camera_info announces."""
    h, w = image.shape[:2]
    if (w, h) != (K.width, K.height):
        raise CalibrationError(f"image{_topic_text(image_topic)} is {w}x{h} but camera_info"
                               f"{_topic_text(info_topic)} says {K.width}x{K.height}")
