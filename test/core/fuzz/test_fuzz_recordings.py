"""Fuzz: hostile recordings through the recording reader give a SelfposeError (one bounded line) or frames.

Three families: the bytes of small recordings written by selfpose (truncations, byte flips, zeroed ranges of the
storage file or metadata.yaml; MCAP and sqlite3), a byte flipped inside an MCAP chunk (always caught by the chunk's
CRC; `recover` keeps every other frame), and the fields of the messages in a bag written as `ros2 bag
record` would (encodings, sizes, data lengths, NaN/inf, negative and huge stamps, odd frame names).
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from rosbags.rosbag2 import StoragePlugin, Writer

from selfpose_core.data.image_codec import array_to_compressed_msg, array_to_image_msg, intrinsics_to_camera_info
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.recovery import recover_bag
from selfpose_core.data.ros_types import typestore
from selfpose_core.data.tf_buffer import tf_message
from selfpose_core.types import CameraIntrinsics, Frame

from .conftest import expect_clean, fuzz

K = CameraIntrinsics(40.0, 40.0, 7.5, 5.5, 16, 12)
T0 = 1_700_000_000_000_000_000
_counter = itertools.count()


def _read_all(path: Path) -> None:
    """What inspect/estimate/adapt do with a recording: open, summarise, stream every frame, random access."""
    with Recording(path) as rec:
        rec.summary()
        n = sum(1 for _ in rec)
        assert n == len(rec)
        rec[0], rec[len(rec) - 1]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Small recordings written by selfpose: raw colour + 16UC1 depth (MCAP), PNG colour + 32FC1 depth (sqlite3)."""
    root = tmp_path_factory.mktemp("fuzz_bags")
    rng = np.random.default_rng(0)
    out = {}
    for name, storage, image_format, depth_format in (("mcap", "mcap", "raw", "16UC1"),
                                                      ("sqlite3", "sqlite3", "png", "32FC1")):
        with RecordingWriter(root / name, storage=storage, image_format=image_format, depth_format=depth_format,
                             segment_frames=2) as w:
            w.write_static_tf("world", "table", np.eye(4))
            for i in range(3):
                T = np.eye(4)
                T[:3, 3] = [0.1 * i, 0.0, 0.8]
                w.write_frame(Frame(rgb=rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), K=K,
                                    stamp_ns=T0 + i * 66_666_667,
                                    depth=rng.uniform(0.4, 2.0, (12, 16)).astype(np.float32), T_world_cam=T))
        _read_all(root / name)
        out[name] = root / name
    return out


# ------------------------------------------------------------------------------------------------- bag bytes
_EDITS = st.lists(st.tuples(st.sampled_from(["flip", "zero", "truncate"]), st.floats(0.0, 1.0),
                            st.integers(1, 255), st.integers(1, 64)), min_size=1, max_size=4)


def _mutate(data: bytes, edits: list) -> bytes:
    buf = bytearray(data)
    for op, where, value, length in edits:
        if not buf:
            break
        pos = min(int(where * len(buf)), len(buf) - 1)
        if op == "flip":
            buf[pos] ^= value
        elif op == "zero":
            buf[pos:pos + length] = bytes(len(buf[pos:pos + length]))
        else:
            del buf[pos:]
    return bytes(buf)


def _bag_bytes(bags, tmp_path_factory, storage, target, edits):
    bag = tmp_path_factory.getbasetemp() / f"fuzz_bag_{next(_counter)}"
    shutil.copytree(bags[storage], bag)
    files = sorted(p for p in bag.iterdir() if p.is_file() and (p.name == "metadata.yaml") == (target == "meta"))
    f = files[min(int(target == "second") , len(files) - 1)] if target != "meta" else files[0]
    f.write_bytes(_mutate(f.read_bytes(), edits))
    expect_clean(lambda: _read_all(bag), bag)
    shutil.rmtree(bag)


test_bag_bytes, test_bag_bytes_long = fuzz(
    110, storage=st.sampled_from(["mcap", "sqlite3"]), target=st.sampled_from(["first", "second", "meta"]),
    edits=_EDITS)(_bag_bytes)


def _chunk_records(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte ranges of the records inside each (uncompressed) chunk of an MCAP file."""
    pos, out = 8, []
    while pos + 9 <= len(data) and data[pos] != 0x02:
        size = int.from_bytes(data[pos + 1: pos + 9], "little")
        if data[pos] == 0x06:
            n = int.from_bytes(data[pos + 9 + 28: pos + 9 + 32], "little")
            start = pos + 9 + 32 + n + 8
            out.append((start, pos + 9 + size))
        pos += 9 + size
    return out


def _flip_in_a_chunk(bags, tmp_path_factory, second_file, chunk, where, value):
    """A byte flipped anywhere inside a chunk's records is always caught (CRC) and `recover` keeps every other
    frame bit for bit."""
    bag = tmp_path_factory.getbasetemp() / f"fuzz_chunk_{next(_counter)}"
    shutil.copytree(bags["mcap"], bag)
    f = sorted(bag.glob("*.mcap"))[int(second_file)]
    data = bytearray(f.read_bytes())
    start, end = (chunks := _chunk_records(bytes(data)))[chunk % len(chunks)]
    data[start + min(int(where * (end - start)), end - start - 1)] ^= value
    f.write_bytes(bytes(data))
    error = expect_clean(lambda: _read_all(bag), bag)
    assert error is not None and "CRC check" in str(error) and "selfpose recover" in str(error), error
    recover_bag(bag)
    with Recording(bags["mcap"]) as rec:
        original = {fr.stamp_ns: fr for fr in rec}
    with Recording(bag) as rec:
        got = list(rec)
    assert len(got) == len(original) - 1  # one chunk = one frame
    for fr in got:
        np.testing.assert_array_equal(fr.rgb, original[fr.stamp_ns].rgb)
        np.testing.assert_array_equal(fr.depth, original[fr.stamp_ns].depth)
    shutil.rmtree(bag)


test_flip_in_a_chunk, test_flip_in_a_chunk_long = fuzz(
    20, second_file=st.booleans(), chunk=st.integers(0, 3), where=st.floats(0.0, 1.0),
    value=st.integers(1, 255))(_flip_in_a_chunk)


# ------------------------------------------------------------------------------------------------- message fields
_ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "16UC1", "32FC1", "8UC3", "mono16", "16UC3", "yuv422",
              "bayer_rggb8", "", "rgb16", "64FC1", "32FC3", "8UC1"]
_FORMATS = ["png", "jpeg", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png", "32FC1; compressedDepth",
            "", "tiff", "bmp"]
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10.0, 10.0))
_STAMPS = st.one_of(st.just(0), st.integers(-2 ** 31, 2 ** 31 - 1), st.just(T0 // 10 ** 9))
_FRAME_IDS = st.one_of(st.sampled_from(["camera", "world", "/camera", ""]), st.text(max_size=20),
                       st.text(min_size=600, max_size=2000))


@st.composite
def _image(draw, depth: bool):
    """A sensor_msgs Image or CompressedImage, valid-ish or hostile."""
    stamp = (draw(st.one_of(st.just(T0 // 10 ** 9), _STAMPS)), draw(st.integers(0, 2 ** 32 - 1)))
    if draw(st.booleans()):
        fmt = draw(st.one_of(st.sampled_from(_FORMATS), st.text(max_size=40), st.text(min_size=600, max_size=900)))
        kind = draw(st.sampled_from(["empty", "short", "random", "valid", "truncated"]))
        valid = bytes(array_to_compressed_msg(np.full((12, 16, 3), 90, np.uint8), "png", 0).data)
        data = {"empty": b"", "short": draw(st.binary(max_size=11)), "random": draw(st.binary(max_size=400)),
                "valid": valid, "truncated": valid[:draw(st.integers(0, len(valid)))]}[kind]
        return ("sensor_msgs/msg/CompressedImage", fmt, stamp, data, None)
    enc = draw(st.one_of(st.sampled_from(_ENCODINGS), st.text(max_size=30), st.text(min_size=600, max_size=900)))
    h = draw(st.one_of(st.just(12), st.integers(0, 70000)))
    w = draw(st.one_of(st.just(16), st.integers(0, 70000)))
    step = draw(st.one_of(st.none(), st.integers(0, 2 ** 20)))
    n = draw(st.one_of(st.none(), st.integers(0, 4096)))
    if depth and draw(st.booleans()):
        values = np.full((12, 16), draw(_FLOATS), np.float32)
        data = values.tobytes()
        enc = draw(st.sampled_from(["32FC1", enc]))
    else:
        data = None
    big_endian = draw(st.integers(0, 1))
    return ("sensor_msgs/msg/Image", enc, stamp, data, (h, w, step, n, big_endian))


def _image_msg(spec, frame_id):
    store = typestore()
    msgtype, enc, (sec, nsec), data, shape = spec
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                                frame_id=frame_id)
    if msgtype.endswith("CompressedImage"):
        return store.types[msgtype](header=header, format=enc, data=np.frombuffer(data, np.uint8).copy())
    h, w, step, n, big_endian = shape
    step = step if step is not None else min(w * 3, 2 ** 32 - 1)
    if data is None:
        data = bytes(min(n if n is not None else h * step, 1 << 16))
    return store.types[msgtype](header=header, height=h, width=w, encoding=enc, is_bigendian=big_endian,
                                step=min(step, 2 ** 32 - 1), data=np.frombuffer(data, np.uint8).copy())


@st.composite
def _messages(draw):
    """The messages of a hostile 2-frame bag: colour, maybe depth, camera_info, /tf and /tf_static."""
    frame_id = draw(_FRAME_IDS)
    info = intrinsics_to_camera_info(K, T0, "camera")
    if draw(st.booleans()):
        info.k = np.array([draw(_FLOATS) if draw(st.booleans()) else v for v in info.k], np.float64)
    if draw(st.booleans()):
        info.width, info.height = draw(st.integers(0, 2 ** 32 - 1)), draw(st.integers(0, 2 ** 32 - 1))
    msgs = [("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo", info, T0)]
    for i in range(2):
        stamp = T0 + i * 50_000_000
        color = (array_to_image_msg(np.full((12, 16, 3), 40 * i, np.uint8), "rgb8", stamp, "camera")
                 if draw(st.booleans()) else _image_msg(draw(_image(False)), frame_id))
        msgs.append(("/selfpose/color/image_raw", type(color).__msgtype__, color, stamp))
        if draw(st.booleans()):
            depth = (array_to_image_msg(np.full((12, 16), 1.0, np.float32), "16UC1", stamp, "camera")
                     if draw(st.booleans()) else _image_msg(draw(_image(True)), frame_id))
            msgs.append(("/selfpose/depth/image_raw", type(depth).__msgtype__, depth, stamp))
    if draw(st.integers(0, 4)):  # mostly a valid camera trajectory, so that the images are decoded
        for k in range(3):
            T = np.eye(4)
            T[:3, 3] = [0.1 * k, 0.0, 0.5]
            s = T0 + (k - 1) * 50_000_000
            msgs.append(("/tf", "tf2_msgs/msg/TFMessage", tf_message([("world", "camera", s, T)]), max(s, 0)))
    for k in range(draw(st.integers(0, 3))):
        T = np.eye(4)
        T[:3, 3] = [draw(_FLOATS), 0.0, 0.5] if draw(st.booleans()) else [0.1 * k, 0.0, 0.5]
        stamp_ns = (T0 + k * 40_000_000 if draw(st.booleans())
                    else draw(st.integers(-2 ** 31 * 10 ** 9, 2 ** 31 * 10 ** 9 - 1)))
        msg = tf_message([(draw(st.sampled_from(["world", frame_id])), draw(st.sampled_from(["camera", "other"])),
                           stamp_ns, T)])
        if draw(st.booleans()):
            q = msg.transforms[0].transform.rotation
            q.x, q.w = draw(_FLOATS), draw(_FLOATS)
        msgs.append(("/tf", "tf2_msgs/msg/TFMessage", msg, T0 + k * 40_000_000))
    if draw(st.booleans()):
        msgs.append(("/tf_static", "tf2_msgs/msg/TFMessage", tf_message([("world", "table", T0, np.eye(4))]), T0))
    return msgs


def _message_fields(tmp_path_factory, messages):
    store = typestore()
    bag = tmp_path_factory.getbasetemp() / f"fuzz_msgs_{next(_counter)}"
    conns = {}
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        for topic, msgtype, msg, log_ns in messages:
            if (topic, msgtype) not in conns:
                conns[(topic, msgtype)] = w.add_connection(topic, msgtype, typestore=store)
            w.write(conns[(topic, msgtype)], log_ns, bytes(store.serialize_cdr(msg, msgtype)))
    expect_clean(lambda: _read_all(bag), bag)
    shutil.rmtree(bag)


test_message_fields, test_message_fields_long = fuzz(110, messages=_messages())(_message_fields)
