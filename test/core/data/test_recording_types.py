"""The typestore: ROS 2 types from rosbags plus selfpose_ros/msg/ObjectPose(Array) parsed from msg/."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from selfpose_core.data.image_codec import make_header
from selfpose_core.data.recording_writer import BagWriter
from selfpose_core.data.ros_types import find_msg_dir, register_msgdef, require_type, selfpose_types, typestore
from selfpose_core.errors import RecordingError

ARRAY = "selfpose_ros/msg/ObjectPoseArray"


@pytest.fixture
def store():
    if find_msg_dir() is None:
        pytest.skip("msg/ObjectPose.msg and msg/ObjectPoseArray.msg are not in this checkout")
    return typestore()


def _pose_array(store, n=2):
    t = store.types
    objects = [t["selfpose_ros/msg/ObjectPose"](
        name=f"mug{k}", id=k + 1,
        pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=0.1 * k, y=0.0, z=0.5),
                                         orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        confidence=0.9, covariance=np.full(36, -1.0 if k else 0.01), inliers=40 + k,
        roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=1, y_offset=2, height=3, width=4, do_rectify=False))
        for k in range(n)]
    return t[ARRAY](header=make_header(123, "camera"), objects=objects)


def test_object_pose_array_round_trips_through_a_bag(tmp_path, store):
    with BagWriter(tmp_path / "poses") as bag:
        bag.write("/object_poses", ARRAY, _pose_array(store), 123)
    with Reader(tmp_path / "poses") as reader:
        conn = reader.topics["/object_poses"].connections[0]
        assert conn.msgtype == ARRAY
        (_, _, raw), = list(reader.messages())
    msg = store.deserialize_cdr(raw, ARRAY)
    assert [o.name for o in msg.objects] == ["mug0", "mug1"] and msg.objects[1].pose.position.x == pytest.approx(0.1)
    assert msg.objects[1].covariance[0] == -1.0 and msg.objects[0].roi.width == 4
    # the definition embedded in the bag is enough to decode it without selfpose's msg files
    fresh = get_typestore(Stores.ROS2_JAZZY)
    register_msgdef(fresh, ARRAY, conn.msgdef.data)
    assert fresh.deserialize_cdr(raw, ARRAY).objects[0].inliers == 40


def test_msg_files_parse(store):
    types = selfpose_types(find_msg_dir())
    assert set(types) == {"selfpose_ros/msg/ObjectPose", ARRAY}


def test_unknown_types_are_named(tmp_path):
    with pytest.raises(RecordingError, match="selfpose_ros/msg/Nope"):
        require_type("selfpose_ros/msg/Nope")
    with pytest.raises(RecordingError, match="foo_msgs/msg/Bar"):
        require_type("foo_msgs/msg/Bar")


def test_bad_msg_file_is_named(tmp_path):
    (tmp_path / "ObjectPose.msg").write_text("int32[ broken\n")
    (tmp_path / "ObjectPoseArray.msg").write_text("ObjectPose[] objects\n")
    with pytest.raises(RecordingError, match="ObjectPose.msg"):
        selfpose_types(tmp_path)


def test_bag_writer_copies_a_type_known_only_by_its_definition(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    other = get_typestore(Stores.ROS2_JAZZY)
    register_msgdef(other, "acme_msgs/msg/Blip", "int32 level\nstring label\n")
    Blip = other.types["acme_msgs/msg/Blip"]
    raw = bytes(other.serialize_cdr(Blip(level=7, label="x"), "acme_msgs/msg/Blip"))
    with Writer(tmp_path / "src", version=8, storage_plugin=StoragePlugin.MCAP) as w:
        w.write(w.add_connection("/blip", "acme_msgs/msg/Blip", typestore=other), 5, raw)
    with Reader(tmp_path / "src") as reader:
        ((conn, stamp, data),) = list(reader.messages())
        msgdef = conn.msgdef.data
    with BagWriter(tmp_path / "copy") as bag:
        bag.write_raw("/blip", "acme_msgs/msg/Blip", data, stamp, msgdef=msgdef)
    with Reader(tmp_path / "copy") as reader:
        ((conn, _, data),) = list(reader.messages())
        assert conn.msgtype == "acme_msgs/msg/Blip"
        assert other.deserialize_cdr(data, conn.msgtype).level == 7
