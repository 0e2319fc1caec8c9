"""Message <-> core conversions against the ROS 2 message definitions rosbags ships (same fields, same CDR bytes):
every image encoding through the node's FrameAssembler, and everything the estimator publishes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from selfpose_core.data.image_codec import (array_to_compressed_msg, array_to_image_msg, intrinsics_to_camera_info)
from selfpose_core.data.ros_types import typestore
from selfpose_core.errors import CalibrationError, EncodingError, RecordingError
from selfpose_core.estimate.publishing import (PoseMessageBuilder, PublishConfig, covariance_from_field,
                                               draw_overlay, pose_msg, pose_msg_to_matrix)
from selfpose_core.types import CameraIntrinsics, PoseEstimate
from selfpose_ros.conversions import FrameAssembler, diagnostic_status, import_message_classes

K = CameraIntrinsics(60.0, 62.0, 31.5, 23.5, 64, 48)
STAMP = 1_700_000_123_456_789_012


def cdr_round_trip(msg):
    """Serialize with the message's ROS type and read it back (what a subscriber of the topic gets)."""
    store = typestore()
    name = msg.__msgtype__
    return store.deserialize_cdr(store.serialize_cdr(msg, name), name)


def make_pose(rotvec, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    T[:3, 3] = t
    return T


@pytest.fixture
def images(rng):
    rgb = rng.integers(0, 256, (K.height, K.width, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 4.0, (K.height, K.width)).astype(np.float32)
    depth[:2, :5] = 0.0
    return rgb, depth


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_encodings_round_trip_through_cdr_and_the_frame_assembler(images, encoding):
    rgb, depth = images
    assemble = FrameAssembler("/cam/color/image_raw", "/cam/color/camera_info", "/cam/depth")
    color = cdr_round_trip(array_to_image_msg(rgb, encoding, STAMP, "cam_optical"))
    info = cdr_round_trip(intrinsics_to_camera_info(K, STAMP, "cam_optical"))
    frame = assemble(color, info, cdr_round_trip(array_to_image_msg(depth, "32FC1", STAMP, "cam_optical")))
    want = rgb if encoding != "mono8" else np.repeat(
        (rgb.astype(float) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_allclose(frame.rgb.astype(int), want.astype(int), atol=1 if encoding == "mono8" else 0)
    assert frame.K == K and frame.stamp_ns == STAMP and frame.frame_id == "cam_optical"
    np.testing.assert_array_equal(frame.depth[2:], depth[2:])
    assert np.all(np.isnan(frame.depth[:2, :5]) | (frame.depth[:2, :5] == 0))


def test_depth_and_compressed_encodings(images):
    rgb, depth = images
    assemble = FrameAssembler("c", "i", "d")
    info = cdr_round_trip(intrinsics_to_camera_info(K, STAMP))
    for msg, tol in ((array_to_image_msg(depth, "16UC1", STAMP), 5.1e-4),
                     (array_to_compressed_msg(depth, "png", STAMP), 5.1e-4)):
        frame = assemble(cdr_round_trip(array_to_image_msg(rgb, "bgr8", STAMP)), info, cdr_round_trip(msg))
        np.testing.assert_allclose(frame.depth, depth, atol=tol)
        assert np.all(frame.depth[:2, :5] == 0)
    png = assemble(cdr_round_trip(array_to_compressed_msg(rgb, "png", STAMP)), info)
    np.testing.assert_array_equal(png.rgb, rgb)
    yy, xx = np.mgrid[: K.height, : K.width]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=2).astype(np.uint8)  # JPEG is lossy on noise
    jpeg = assemble(cdr_round_trip(array_to_compressed_msg(smooth, "jpeg", STAMP, quality=95)), info)
    assert np.abs(jpeg.rgb.astype(int) - smooth).mean() < 3 and jpeg.depth is None


def test_padded_rows_and_intrinsics_cache(images):
    rgb, _ = images
    msg = array_to_image_msg(rgb, "rgb8", STAMP)
    step = K.width * 3 + 16
    padded = np.zeros((K.height, step), np.uint8)
    padded[:, : K.width * 3] = rgb.reshape(K.height, -1)
    msg.step, msg.data = step, padded.reshape(-1)
    assemble = FrameAssembler("c", "i")
    info = intrinsics_to_camera_info(K, STAMP)
    np.testing.assert_array_equal(assemble(cdr_round_trip(msg), info).rgb, rgb)
    first = assemble.intrinsics(info)
    assert assemble.intrinsics(cdr_round_trip(info)) is first  # unchanged camera_info is not re-parsed


def test_bad_input_names_the_topic(images):
    rgb, depth = images
    assemble = FrameAssembler("/cam/color", "/cam/info", "/cam/depth")
    info = intrinsics_to_camera_info(K, STAMP)
    bad = array_to_image_msg(rgb, "rgb8", STAMP)
    bad.encoding = "nv24"
    with pytest.raises(EncodingError, match="nv24.*/cam/color"):
        assemble(bad, info)
    small = intrinsics_to_camera_info(CameraIntrinsics(60, 60, 15, 11, 32, 24), STAMP)
    with pytest.raises(CalibrationError, match="/cam/color.*/cam/info"):
        assemble(array_to_image_msg(rgb, "rgb8", STAMP), small)
    with pytest.raises(RecordingError, match="/cam/color carries depth"):
        assemble(array_to_image_msg(depth, "32FC1", STAMP), info)
    with pytest.raises(RecordingError, match="/cam/depth carries colour"):
        assemble(array_to_image_msg(rgb, "rgb8", STAMP), info, array_to_image_msg(rgb, "rgb8", STAMP))
    zero = intrinsics_to_camera_info(K, STAMP)
    zero.k = np.zeros(9)
    with pytest.raises(CalibrationError, match="/cam/info"):
        FrameAssembler("/cam/color", "/cam/info")(array_to_image_msg(rgb, "rgb8", STAMP), zero)


def estimates() -> list[PoseEstimate]:
    cov = np.diag([1e-4, 2e-4, 3e-4, 1e-3, 2e-3, 3e-3])
    cov[0, 1] = cov[1, 0] = 5e-5
    return [
        PoseEstimate("mug", make_pose([0.1, -0.2, 0.3], [0.05, -0.02, 0.6]), 0.91, object_id=3,
                     box=(10.2, 5.7, 30.1, 28.9), covariance=cov, inliers=57),
        PoseEstimate("mug", make_pose([1.0, 0.5, -2.0], [-0.1, 0.03, 0.8]), 0.55, object_id=3,
                     box=(-5.0, 30.0, 20.0, 60.0)),
        PoseEstimate("bowl", make_pose([0.0, 3.0, 0.0], [0.0, 0.1, 1.2]), 0.7, object_id=6),
    ]


def builder(**kwargs) -> PoseMessageBuilder:
    boxes = {"mug": (np.array([-0.04, -0.04, -0.05]), np.array([0.06, 0.04, 0.05]))}
    return PoseMessageBuilder(PublishConfig(object_boxes=boxes, object_sizes={"mug": np.array([0.1, 0.08, 0.1])},
                                            mesh_resources={"mug": "file:///models/mug.ply"}, **kwargs))


def test_object_pose_array_content_covariance_and_frames():
    ests = estimates()
    msg = cdr_round_trip(builder().object_pose_array(ests, STAMP, "cam_optical", K))
    assert msg.__msgtype__ == "selfpose_ros/msg/ObjectPoseArray"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_123, 456_789_012)
    assert msg.header.frame_id == "cam_optical"
    assert [o.name for o in msg.objects] == ["mug", "mug", "bowl"]
    assert [o.id for o in msg.objects] == [3, 3, 6]
    for o, e in zip(msg.objects, ests):
        np.testing.assert_allclose(pose_msg_to_matrix(o.pose), e.T_cam_obj, atol=1e-12)
        assert o.pose.orientation.w >= 0
        assert o.confidence == pytest.approx(e.score)
    cov = covariance_from_field(msg.objects[0].covariance)
    np.testing.assert_array_equal(cov, ests[0].covariance)  # row-major, (x y z rx ry rz)
    assert cov[0, 1] == cov[1, 0] == 5e-5
    assert covariance_from_field(msg.objects[1].covariance) is None and msg.objects[1].covariance[0] == -1
    assert msg.objects[0].inliers == 57
    r = msg.objects[0].roi
    assert (r.x_offset, r.y_offset, r.width, r.height) == (10, 5, 21, 24)
    r = msg.objects[1].roi  # clipped to the 64x48 image
    assert (r.x_offset, r.y_offset, r.width, r.height) == (0, 30, 20, 18)
    r = msg.objects[2].roi
    assert (r.width, r.height) == (0, 0)


def test_detections_transforms_and_markers():
    ests = estimates()
    b = builder(tf_prefix="selfpose/")
    det = cdr_round_trip(b.detection3d_array(ests, STAMP, "cam_optical"))
    assert det.header.frame_id == "cam_optical" and len(det.detections) == 3
    d0 = det.detections[0]
    assert d0.id == "mug" and det.detections[1].id == "mug_2"
    assert d0.results[0].hypothesis.class_id == "mug" and d0.results[0].hypothesis.score == pytest.approx(0.91)
    np.testing.assert_allclose(pose_msg_to_matrix(d0.results[0].pose.pose), ests[0].T_cam_obj, atol=1e-12)
    np.testing.assert_allclose(np.reshape(d0.results[0].pose.covariance, (6, 6)), ests[0].covariance)
    centre = ests[0].T_cam_obj @ np.array([0.01, 0.0, 0.0, 1.0])  # the box is off-centre by 1 cm in x
    c = d0.bbox.center.position
    np.testing.assert_allclose([c.x, c.y, c.z], centre[:3], atol=1e-12)
    assert (d0.bbox.size.x, d0.bbox.size.y, d0.bbox.size.z) == pytest.approx((0.1, 0.08, 0.1))

    tfs = b.transforms(ests, STAMP, "cam_optical")
    assert [t.child_frame_id for t in tfs] == ["selfpose/mug", "selfpose/mug_2", "selfpose/bowl"]
    assert all(t.header.frame_id == "cam_optical" and t.header.stamp.nanosec == 456_789_012 for t in tfs)
    from selfpose_core.data.tf_buffer import transform_msg_to_matrix
    np.testing.assert_allclose(transform_msg_to_matrix(tfs[2].transform), ests[2].T_cam_obj, atol=1e-12)

    markers = cdr_round_trip(b.marker_array(ests, STAMP, "cam_optical")).markers
    assert markers[0].action == 3  # DELETEALL: objects no longer seen disappear
    meshes = [m for m in markers if m.ns == "selfpose_meshes"]
    assert [m.mesh_resource for m in meshes] == ["file:///models/mug.ply"] * 2 and meshes[0].type == 10
    boxes = [m for m in markers if m.ns == "selfpose_boxes"]
    assert len(boxes) == 1 and boxes[0].type == 1  # bowl: no mesh known -> a box
    labels = [m.text for m in markers if m.ns == "selfpose_labels"]
    assert labels == ["mug 0.91", "mug_2 0.55", "bowl 0.70"]
    assert markers[1].lifetime.nanosec == 500_000_000


def test_build_respects_switches_and_overlay_draws_the_objects(rng):
    ests = estimates()
    rgb = np.full((K.height, K.width, 3), 128, np.uint8)
    out = builder(detections=False, markers=False, transforms=False).build(ests, STAMP, "c", K, rgb)
    assert out.detections is None and out.markers is None and out.transforms == [] and out.overlay is not None
    assert np.all(rgb == 128)  # the input image is untouched
    changed = np.any(out.overlay != 128, axis=2)
    u, v = K.fx * 0.05 / 0.6 + K.cx, K.fy * -0.02 / 0.6 + K.cy  # the first mug's origin
    assert changed[int(v) - 1: int(v) + 2, int(u) - 1: int(u) + 2].any()
    assert changed.mean() > 0.05
    bare = draw_overlay(rgb, K, [])
    assert np.array_equal(bare, rgb)


def test_pose_message_and_other_class_namespaces():
    """The builder makes messages with any class namespace (rclpy classes in the node)."""
    made = {}

    def factory(name):
        class Msg:
            def __init__(self, **fields):
                self.__dict__.update(fields)
                made.setdefault(name, 0)
                made[name] += 1
        return Msg

    names = ["builtin_interfaces/msg/Time", "std_msgs/msg/Header", "geometry_msgs/msg/Point",
             "geometry_msgs/msg/Quaternion", "geometry_msgs/msg/Pose", "sensor_msgs/msg/RegionOfInterest",
             "selfpose_ros/msg/ObjectPose", "selfpose_ros/msg/ObjectPoseArray"]
    b = PoseMessageBuilder(classes={n: factory(n) for n in names})
    msg = b.object_pose_array(estimates(), STAMP, "cam", K)
    assert made["selfpose_ros/msg/ObjectPose"] == 3
    assert isinstance(msg.objects[0].covariance, list) and len(msg.objects[0].covariance) == 36
    assert msg.header.stamp.sec == 1_700_000_123
    T = make_pose([3.0, 0.1, 0.2], [1, 2, 3])  # a rotation near pi
    np.testing.assert_allclose(pose_msg_to_matrix(cdr_round_trip(pose_msg(T))), T, atol=1e-12)


def test_diagnostics_message_and_missing_ros_install():
    d = cdr_round_trip(diagnostic_status("est", 1, "slow", {"rate (Hz)": "3.00"}, "node"))
    assert d.level == 1 and d.values[0].key == "rate (Hz)" and d.values[0].value == "3.00"
    with pytest.raises(RecordingError, match="not installed.*no_such_pkg"):
        import_message_classes(["no_such_pkg/msg/Thing"])


def test_publish_config_for_a_broken_bundle_falls_back_to_boxes(tmp_path, caplog):
    from selfpose_core.estimate.publishing import publish_config_for_bundle

    (tmp_path / "bundle.yaml").write_text("objects_config: a.yaml\nobjects_config: b.yaml\n")  # duplicate key
    cfg = publish_config_for_bundle(tmp_path)
    assert isinstance(cfg, PublishConfig) and not cfg.mesh_resources
    assert "duplicate" in caplog.text and "bundle.yaml" in caplog.text
