"""TF chains, interpolation and refused extrapolation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from selfpose_core.data.ros_types import typestore
from selfpose_core.data.tf_buffer import TfBuffer, tf_message
from selfpose_core.errors import RecordingError


def _T(rotvec, t):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


def _base_motion(t_s):
    """T_odom_base at time t: constant yaw rate and constant velocity (exactly reproduced by slerp + lerp)."""
    return _T([0, 0, 0.4 * t_s], [0.5 * t_s, 0.1 * t_s, 0.0])


T_MAP_ODOM = _T([0, 0, 0.3], [1.0, -2.0, 0.0])
T_BASE_LINK = _T([0, 0.2, 0], [0.2, 0.0, 1.1])
T_LINK_OPT = _T([-np.pi / 2, 0, 0], [0.0, 0.0, 0.0]) @ _T([0, -np.pi / 2, 0], [0, 0, 0])


@pytest.fixture
def buffer():
    buf = TfBuffer(max_extrapolation_ns=10_000_000)
    buf.add_message(tf_message([("base_link", "camera_link", 0, T_BASE_LINK),
                                ("camera_link", "camera_optical", 0, T_LINK_OPT)]), static=True)
    for k in range(11):  # 10 Hz, 0..1 s
        buf.add_message(tf_message([("map", "odom", k * 100_000_000, T_MAP_ODOM)]))
    for k in range(51):  # 50 Hz odometry, added out of order on purpose
        stamp = (50 - k) * 20_000_000
        buf.add_message(tf_message([("odom", "base_link", stamp, _base_motion(stamp * 1e-9))]))
    return buf


def test_chain_lookup_interpolates_between_samples(buffer):
    stamps = np.array([5_000_000, 333_333_333, 999_000_000], dtype=np.int64)  # between odometry samples
    T = buffer.lookup("map", "camera_optical", stamps)
    for s, Ts in zip(stamps, T):
        expected = T_MAP_ODOM @ _base_motion(s * 1e-9) @ T_BASE_LINK @ T_LINK_OPT
        np.testing.assert_allclose(Ts, expected, atol=1e-9)
    single = buffer.lookup("map", "camera_optical", int(stamps[1]))
    assert single.shape == (4, 4)
    np.testing.assert_allclose(single, T[1])


def test_inverse_and_sibling_lookups(buffer):
    s = 420_000_000
    T_oc = buffer.lookup("odom", "camera_optical", s)
    np.testing.assert_allclose(buffer.lookup("camera_optical", "odom", s), np.linalg.inv(T_oc), atol=1e-12)
    np.testing.assert_allclose(buffer.lookup("camera_link", "camera_link", s), np.eye(4))
    np.testing.assert_allclose(buffer.lookup("camera_optical", "base_link", s), np.linalg.inv(T_BASE_LINK @ T_LINK_OPT),
                               atol=1e-12)


def test_extrapolation_refused_beyond_tolerance(buffer):
    buffer.lookup("map", "camera_optical", 1_005_000_000)  # within 10 ms
    with pytest.raises(RecordingError, match=r"map <- camera_optical.*1100000000.*odom -> base_link.*0 to 1000000000"):
        buffer.lookup("map", "camera_optical", 1_100_000_000)
    T, valid = buffer.lookup_valid("map", "camera_optical", np.array([-50_000_000, 500_000_000, 2_000_000_000]))
    assert valid.tolist() == [False, True, False] and T.shape == (3, 4, 4)


def test_unconnected_frames_are_named(buffer):
    buffer.add_transform("other_root", "lidar", 0, np.eye(4), static=True)
    with pytest.raises(RecordingError, match=r"'lidar'.*'map'.*frames in the tree"):
        buffer.lookup("map", "lidar", 0)
    with pytest.raises(RecordingError, match="'nowhere'"):
        buffer.lookup("map", "nowhere", 0)


def test_slerp_takes_the_short_way():
    buf = TfBuffer()
    buf.add_transform("w", "c", 0, _T([0, 0, np.radians(170)], [0, 0, 0]))
    buf.add_transform("w", "c", 10, _T([0, 0, np.radians(-170)], [0, 0, 0]))
    R = buf.lookup("w", "c", 5)[:3, :3]
    assert abs(abs(Rotation.from_matrix(R).as_rotvec()[2]) - np.pi) < 1e-9


def test_messages_survive_cdr(buffer):
    msg = tf_message([("a", "b", 123, T_MAP_ODOM)])
    store = typestore()
    back = store.deserialize_cdr(store.serialize_cdr(msg, "tf2_msgs/msg/TFMessage"), "tf2_msgs/msg/TFMessage")
    buf = TfBuffer()
    buf.add_message(back, static=True)
    np.testing.assert_allclose(buf.lookup("a", "b", 0), T_MAP_ODOM, atol=1e-12)
