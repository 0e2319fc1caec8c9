"""Writing and reading rosbag2 recordings: round trips, `ros2 bag record`-style bags, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from scipy.spatial.transform import Rotation

from selfpose_core.data.image_codec import (array_to_compressed_msg, array_to_image_msg, image_msg_to_array,
                                            intrinsics_to_camera_info)
from selfpose_core.data.recording import Recording, RecordingTopics
from selfpose_core.data.recording_writer import BagWriter, RecordingWriter
from selfpose_core.data.ros_types import typestore
from selfpose_core.data.tf_buffer import tf_message
from selfpose_core.errors import CalibrationError, EncodingError, RecordingError
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(60.0, 62.0, 15.5, 11.5, 32, 24)
T0 = 1_700_000_000_000_000_000


def _pose(i):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec([0.1 * i, -0.05 * i, 0.3]).as_matrix()
    T[:3, 3] = [np.cos(0.3 * i), np.sin(0.3 * i), 0.8]
    return T


def _frames(rng, n=7, depth=True):
    return [Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=T0 + i * 66_666_667,
                  depth=rng.uniform(0.4, 3.0, (24, 32)).astype(np.float32) if depth else None, T_world_cam=_pose(i))
            for i in range(n)]


def _write(path, frames, **kw):
    with RecordingWriter(path, **kw) as w:
        w.write_static_tf("world", "table", np.eye(4))
        for f in frames:
            w.write_frame(f)
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("depth_format", ["16UC1", "32FC1"])
def test_round_trip_is_frame_exact(tmp_path, rng, storage, depth_format):
    frames = _frames(rng)
    bag = _write(tmp_path / "bag", frames, storage=storage, depth_format=depth_format, segment_frames=3)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == storage
    assert len(meta["relative_file_paths"]) == 3  # segments of 3 + 3 + 1 frames
    with Recording(bag) as rec:
        assert len(rec) == len(frames) and rec.skipped == []
        for f, g in zip(frames, rec):
            np.testing.assert_array_equal(g.rgb, f.rgb)
            tol = 0.0005 + 1e-6 if depth_format == "16UC1" else 0.0
            assert np.abs(g.depth - f.depth).max() <= tol
            assert g.K == K and g.stamp_ns == f.stamp_ns and g.frame_id == "camera"
            np.testing.assert_allclose(g.T_world_cam, f.T_world_cam, atol=1e-12)
        g = rec[5]  # random access
        np.testing.assert_array_equal(g.rgb, frames[5].rgb)
        assert g.index == 5
        s = rec.summary()
        assert s.frames == 7 and s.topics["/tf_static"][1] == 3 and s.topics["/selfpose/color/image_raw"] == (
            "sensor_msgs/msg/Image", 7)
        assert s.rate_hz == pytest.approx(15.0, rel=1e-6) and s.image_size == (32, 24)


def test_rosbags_reader_reads_the_recording_directly(tmp_path, rng):
    frames = _frames(rng, n=4)
    bag = _write(tmp_path / "bag", frames, segment_frames=2)
    store = typestore()
    with Reader(bag) as reader:
        topics = reader.topics
        assert topics["/selfpose/color/image_raw"].msgcount == 4
        assert topics["/selfpose/color/camera_info"].msgtype == "sensor_msgs/msg/CameraInfo"
        images = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/selfpose/color/image_raw"]
        statics = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages()
                   if c.topic == "/tf_static"]
        qos = reader.topics["/tf_static"].connections[0].ext.offered_qos_profiles
    assert qos[0].durability.name == "TRANSIENT_LOCAL"
    assert [m.encoding for m in images] == ["rgb8"] * 4
    for f, m in zip(frames, images):
        np.testing.assert_array_equal(np.asarray(m.data).reshape(24, 32, 3), f.rgb)
    assert len(statics) == 2 and all(m.transforms[0].child_frame_id == "table" for m in statics)


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_compressed_colour(tmp_path, rng, image_format):
    frames = _frames(rng, n=3, depth=False)
    for f in frames:
        f.rgb[:] = np.linspace(0, 250, 32, dtype=np.uint8)[None, :, None]
    with Recording(_write(tmp_path / "bag", frames, image_format=image_format)) as rec:
        got = list(rec)
    assert all(g.depth is None for g in got)
    for f, g in zip(frames, got):
        assert np.abs(g.rgb.astype(int) - f.rgb).max() <= (0 if image_format == "png" else 12)


def test_frames_without_pose_are_skipped_and_listed(tmp_path, rng):
    frames = _frames(rng, n=6)
    for i in (1, 2):
        frames[i].T_world_cam = None  # interpolation would hide a gap in the middle: make it at the end
    frames[4].T_world_cam = frames[5].T_world_cam = None
    frames[1].T_world_cam, frames[2].T_world_cam = _pose(1), _pose(2)
    bag = _write(tmp_path / "bag", frames)
    with Recording(bag) as rec:
        assert len(rec) == 4
        assert [s.stamp_ns for s in rec.skipped] == [frames[4].stamp_ns, frames[5].stamp_ns]
        assert "world <- camera" in rec.skipped[0].reason
    with Recording(bag, require_pose=False) as rec:
        assert len(rec) == 6 and rec[5].T_world_cam is None and rec[3].T_world_cam is not None


def test_writer_refuses_to_overwrite(tmp_path, rng):
    bag = _write(tmp_path / "bag", _frames(rng, n=1))
    with pytest.raises(RecordingError, match=str(bag)):
        RecordingWriter(bag)


def test_interrupt_inside_the_with_block_keeps_everything(tmp_path, rng):
    frames = _frames(rng, n=5)
    with pytest.raises(KeyboardInterrupt):
        with RecordingWriter(tmp_path / "bag", segment_frames=2) as w:
            for f in frames:
                w.write_frame(f)
            raise KeyboardInterrupt
    assert not list((tmp_path / "bag").glob("*.partial"))
    with Recording(tmp_path / "bag") as rec:
        assert len(rec) == 5


def test_bag_writer_writes_any_registered_type(tmp_path):
    store = typestore()
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    String = store.types["std_msgs/msg/String"]
    with BagWriter(tmp_path / "b", segment_messages=2) as bag:
        for k in range(5):
            bag.write("/note", "std_msgs/msg/String", String(data=f"n{k}"), T0 + k)
        bag.write("/hdr", "std_msgs/msg/Header", Header(stamp=Time(sec=1, nanosec=2), frame_id="x"), T0 + 9)
        assert bag.message_count == 6
    with Reader(tmp_path / "b") as reader:
        notes = [store.deserialize_cdr(raw, c.msgtype).data for c, _, raw in reader.messages()
                 if c.topic == "/note"]
        assert notes == [f"n{k}" for k in range(5)]
        assert reader.topics["/hdr"].msgcount == 1


# --------------------------------------------------------------------------- bags in the layout of `ros2 bag record`
def _raw_bag(path, messages, storage=StoragePlugin.SQLITE3):
    """Write ``messages`` (topic, msgtype, msg, log stamp) with rosbags' own Writer, as `ros2 bag record` would."""
    store = typestore()
    conns = {}
    with Writer(path, version=8, storage_plugin=storage) as w:
        for topic, msgtype, msg, stamp in messages:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=store)
            w.write(conns[topic], stamp, bytes(store.serialize_cdr(msg, msgtype)))
    return path


def _T(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


ROBOT = RecordingTopics(color="/camera/color/image_raw/compressed", depth="/camera/aligned_depth_to_color/image_raw",
                        camera_info="/camera/color/camera_info", world_frame="map",
                        camera_frame="camera_color_optical_frame")
T_BASE_LINK = _T([0, 0.1, 0], [0.2, 0, 1.0])
T_LINK_OPT = _T([-np.pi / 2, 0, 0], [0, 0, 0]) @ _T([0, -np.pi / 2, 0], [0, 0, 0])
T_MAP_ODOM = _T([0, 0, 0.2], [0.5, -1, 0])


def _odom(t_s):
    return _T([0, 0, 0.3 * t_s], [0.4 * t_s, 0.05 * t_s, 0])


def _robot_messages(rng, n_images=8, image_stamps=None):
    msgs = [("/tf_static", "tf2_msgs/msg/TFMessage",
             tf_message([("base_link", "camera_link", T0, T_BASE_LINK),
                         ("camera_link", "camera_color_optical_frame", T0, T_LINK_OPT)]), T0)]
    for k in range(0, 41):  # 40 Hz odometry and 10 Hz map -> odom over 1 s
        s = T0 + k * 25_000_000
        msgs.append(("/tf", "tf2_msgs/msg/TFMessage", tf_message([("odom", "base_link", s, _odom(k * 0.025))]), s))
        if k % 4 == 0:
            msgs.append(("/tf", "tf2_msgs/msg/TFMessage", tf_message([("map", "odom", s, T_MAP_ODOM)]), s))
    stamps = image_stamps if image_stamps is not None else [T0 + 10_000_000 + i * 111_111_111 for i in range(n_images)]
    images = []
    for i, s in enumerate(stamps):
        img = np.zeros((24, 32, 3), np.uint8)
        img[:, :, 0] = i * 20
        img[:, :, 1] = np.arange(32) * 7
        images.append(img)
        msgs.append((ROBOT.color, "sensor_msgs/msg/CompressedImage",
                     array_to_compressed_msg(img, "png", s, "camera_color_optical_frame"), s + 3_000_000))
        depth = np.full((24, 32), 1.0 + 0.1 * i, np.float32)
        msgs.append((ROBOT.depth, "sensor_msgs/msg/Image",
                     array_to_image_msg(depth, "16UC1", s + 4_000_000, "camera_color_optical_frame"), s + 5_000_000))
        if i % 3 == 0:  # camera_info at a third of the image rate
            msgs.append((ROBOT.camera_info, "sensor_msgs/msg/CameraInfo",
                         intrinsics_to_camera_info(K, s, "camera_color_optical_frame"), s + 1_000_000))
    return msgs, stamps, images


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_ros2_bag_record_layout(tmp_path, rng, storage):
    msgs, stamps, images = _robot_messages(rng)
    bag = _raw_bag(tmp_path / "robot", msgs, storage)
    with Recording(bag, ROBOT) as rec:
        assert len(rec) == len(stamps)
        for i, f in enumerate(rec):
            np.testing.assert_array_equal(f.rgb, images[i])
            assert f.stamp_ns == stamps[i] and f.K == K
            np.testing.assert_allclose(f.depth, 1.0 + 0.1 * i, atol=0.0006)
            t = (stamps[i] - T0) * 1e-9
            expected = T_MAP_ODOM @ _odom(t) @ T_BASE_LINK @ T_LINK_OPT
            np.testing.assert_allclose(f.T_world_cam, expected, atol=1e-9)


def test_image_frame_id_as_camera_frame(tmp_path, rng):
    msgs, stamps, _ = _robot_messages(rng, n_images=3)
    topics = RecordingTopics(**{**{f: getattr(ROBOT, f) for f in ROBOT.__slots__}, "camera_frame": ""})
    with Recording(_raw_bag(tmp_path / "robot", msgs), topics) as rec:
        assert len(rec) == 3 and rec[0].frame_id == "camera_color_optical_frame"


# --------------------------------------------------------------------------- bad input
def test_missing_path_and_not_a_bag(tmp_path):
    with pytest.raises(RecordingError, match="does not exist"):
        Recording(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match=r"empty.*no metadata.yaml"):
        Recording(tmp_path / "empty")


def test_corrupt_file_is_named(tmp_path, rng):
    bag = _write(tmp_path / "bag", _frames(rng, n=3))
    f = next(bag.glob("*.mcap"))
    f.write_bytes(b"this is not an mcap file at all" * 10)
    with pytest.raises(RecordingError, match=r"bag.*corrupt or truncated"):
        Recording(bag)


def test_truncated_file_is_named(tmp_path, rng):
    bag = _write(tmp_path / "bag", _frames(rng, n=3))
    f = next(bag.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(RecordingError, match=r"cannot read bag .*bag.*corrupt or truncated"):
        Recording(bag)


def test_missing_topic_lists_the_topics(tmp_path, rng):
    bag = _write(tmp_path / "bag", _frames(rng, n=2))
    with pytest.raises(RecordingError, match=r"/wrong/topic.*topics: .*/selfpose/color/image_raw"):
        Recording(bag, RecordingTopics(color="/wrong/topic"))


def test_no_camera_info(tmp_path, rng):
    msgs, _, _ = _robot_messages(rng, n_images=2)
    bag = _raw_bag(tmp_path / "robot", [m for m in msgs if m[0] != ROBOT.camera_info])
    with pytest.raises(RecordingError, match="/camera/color/camera_info"):
        Recording(bag, ROBOT)


def test_unknown_encoding_names_topic(tmp_path, rng):
    msg = array_to_image_msg(np.zeros((24, 32, 3), np.uint8), "rgb8", T0, "camera")
    msg.encoding = "yuv444"  # a ROS encoding selfpose does not read (yuv422_yuy2 is read since 385f7db)
    bag = _raw_bag(tmp_path / "b", [("/selfpose/color/image_raw", "sensor_msgs/msg/Image", msg, T0),
                                    ("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo",
                                     intrinsics_to_camera_info(K, T0), T0)])
    with pytest.raises(EncodingError, match=r"yuv444.*/selfpose/color/image_raw"):
        Recording(bag, require_pose=False)


def test_zero_K_names_topic_and_bag(tmp_path):
    info = intrinsics_to_camera_info(K, T0)
    info.k = np.zeros(9)
    bag = _raw_bag(tmp_path / "b", [("/selfpose/color/image_raw", "sensor_msgs/msg/Image",
                                     array_to_image_msg(np.zeros((24, 32, 3), np.uint8), "rgb8", T0), T0),
                                    ("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo", info, T0)])
    with pytest.raises(CalibrationError, match=r"b: camera_info on topic /selfpose/color/camera_info.*zero K"):
        Recording(bag, require_pose=False)


def test_size_mismatch_names_both_topics(tmp_path):
    bag = _raw_bag(tmp_path / "b", [("/selfpose/color/image_raw", "sensor_msgs/msg/Image",
                                     array_to_image_msg(np.zeros((20, 30, 3), np.uint8), "rgb8", T0), T0),
                                    ("/selfpose/color/camera_info", "sensor_msgs/msg/CameraInfo",
                                     intrinsics_to_camera_info(K, T0), T0)])
    with pytest.raises(CalibrationError, match=r"/selfpose/color/image_raw is 30x20.*/selfpose/color/camera_info"):
        Recording(bag, require_pose=False)


def test_tf_missing_for_every_stamp(tmp_path, rng):
    late = [T0 + 5_000_000_000 + i * 100_000_000 for i in range(3)]  # images long after the last TF sample
    msgs, _, _ = _robot_messages(rng, image_stamps=late)
    bag = _raw_bag(tmp_path / "robot", msgs)
    with pytest.raises(RecordingError, match=r"robot.*no colour image.*camera pose.*map <- camera_color_optical_frame"
                                             r".*extrapolate"):
        Recording(bag, ROBOT)


def test_tf_never_connects(tmp_path, rng):
    msgs, _, _ = _robot_messages(rng, n_images=2)
    bag = _raw_bag(tmp_path / "robot", [m for m in msgs if m[0] != "/tf_static"])
    with pytest.raises(RecordingError, match=r"/tf.*never connects.*camera_color_optical_frame.*map"):
        Recording(bag, ROBOT)
    with Recording(bag, ROBOT, require_pose=False) as rec:
        assert rec[0].T_world_cam is None


def test_depth_decodes_like_image_codec(tmp_path, rng):
    """Depth read through Recording equals the codec's own decoding of the stored message."""
    frames = _frames(rng, n=2)
    bag = _write(tmp_path / "bag", frames)
    store = typestore()
    with Reader(bag) as reader:
        raw = next(raw for c, _, raw in reader.messages() if c.topic == "/selfpose/depth/image_raw")
    expected = image_msg_to_array(store.deserialize_cdr(raw, "sensor_msgs/msg/Image"))
    with Recording(bag) as rec:
        np.testing.assert_array_equal(rec[0].depth, expected)


def test_streaming_iteration_equals_random_access(tmp_path, rng):
    """Many images per MCAP chunk, two images logged at the same time, log order != stamp order."""
    stamps = [T0 + 10_000_000 + i * 50_000_000 for i in range(8)]
    msgs, _, images = _robot_messages(rng, image_stamps=stamps)
    color = [m for m in msgs if m[0] == ROBOT.color]
    color[3] = (*color[3][:3], color[2][3])  # same log time as image 2
    color[5], color[6] = (*color[5][:3], color[6][3]), (*color[6][:3], color[5][3])  # logged out of order
    others = [m for m in msgs if m[0] != ROBOT.color]
    bag = _raw_bag(tmp_path / "robot", others + color, StoragePlugin.MCAP)
    with Recording(bag, ROBOT) as rec:
        streamed = list(rec)
        assert [f.stamp_ns for f in streamed] == stamps
        for i, f in enumerate(streamed):
            g = rec[i]
            np.testing.assert_array_equal(f.rgb, images[i])
            np.testing.assert_array_equal(g.rgb, images[i])
            np.testing.assert_array_equal(f.depth, g.depth)
