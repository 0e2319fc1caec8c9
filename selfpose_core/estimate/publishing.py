"""What the estimator publishes for one image, as ROS 2 messages built from `PoseEstimate`s.

One `PoseMessageBuilder` serves the rclpy node and the offline replay (`selfpose estimate --bag`): it builds every
message through a *class namespace* — a mapping from ROS type name ("geometry_msgs/msg/Pose") to message class, the
rclpy classes in the node, the `rosbags` dataclasses (the default) offline — so the bytes on /object_poses are the
same whichever way they were made.

Content (DESIGN.md sections 1, 3; all poses T_cam_obj in the image's camera optical frame, stamped with the image):
- ``selfpose_ros/msg/ObjectPoseArray`` on /object_poses; ``covariance[0] = -1`` marks an unknown covariance;
- ``vision_msgs/msg/Detection3DArray`` on /object_detections_3d (class_id = object name, bbox = the mesh's box);
- TF ``<camera frame> -> <tf_prefix><name>`` (``<name>_2``, ``_3``... for further instances of one object);
- ``visualization_msgs/msg/MarkerArray``: DELETEALL, then per object a mesh (``mesh_resource``, e.g. a ``file://``
  PLY) or its box as a cube, and a text label;
- an overlay image (RGB uint8): 3D box, axes, 2D box and "name score" drawn on the camera image.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from selfpose_core.data.image_codec import make_header
from selfpose_core.data.ros_types import typestore
from selfpose_core.data.tf_buffer import matrix_to_quat_trans, tf_message
from selfpose_core.errors import SelfposeError, ShapeError
from selfpose_core.geometry.quaternion import quaternion_to_matrix
from selfpose_core.types import CameraIntrinsics, ObjectModel, PoseEstimate

log = logging.getLogger(__name__)

MsgClasses = Mapping[str, Any]

OBJECT_POSE_ARRAY = "selfpose_ros/msg/ObjectPoseArray"
DETECTION_3D_ARRAY = "vision_msgs/msg/Detection3DArray"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
UNKNOWN_COVARIANCE = -1.0  # value of covariance[0] when the estimator gives no covariance

# vision_msgs (ROS 2 Humble 4.x / Jazzy 4.x) is not among rosbags' built-in types: register its definitions.
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\n"
                                                "geometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection3D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                                   "vision_msgs/BoundingBox3D bbox\nstring id\n",
    "vision_msgs/msg/Detection3DArray": "std_msgs/Header header\nvision_msgs/Detection3D[] detections\n",
}

# visualization_msgs/Marker constants
_CUBE, _TEXT, _MESH = 1, 9, 10
_ADD, _DELETEALL = 0, 3


def register_vision_msgs() -> None:
    """Add the vision_msgs types selfpose publishes to the shared rosbags typestore (idempotent)."""
    from rosbags.typesys import get_types_from_msg
    store = typestore()
    missing = {name: text for name, text in VISION_MSGS.items() if name not in store.types}
    if not missing:
        return
    types: dict = {}
    for name, text in missing.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)


def _classes_have(classes: MsgClasses | None, name: str) -> bool:
    return classes is not None and name in classes


def _new(classes: MsgClasses | None, msgtype: str, /, **fields: Any) -> Any:
    """A message of ROS type ``msgtype`` from ``classes`` or, by default, the rosbags typestore."""
    if _classes_have(classes, msgtype):
        return classes[msgtype](**fields)
    store = typestore()
    if msgtype.startswith("vision_msgs/") and msgtype not in store.types:
        register_vision_msgs()
    return store.types[msgtype](**fields)


def _float_array(values: np.ndarray, classes: MsgClasses | None, name: str) -> Any:
    """A fixed-size float64 array field: numpy for rosbags, a list for rclpy (which accepts both)."""
    arr = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
    return arr if not _classes_have(classes, name) else arr.tolist()


def pose_msg(T: np.ndarray, classes: MsgClasses | None = None) -> Any:
    """(4, 4) pose -> geometry_msgs/Pose (position + unit quaternion x y z w with w >= 0)."""
    if np.shape(T) != (4, 4):
        raise ShapeError(f"pose must be (4, 4), got {np.shape(T)}")
    q, t = matrix_to_quat_trans(T)
    return _new(classes, "geometry_msgs/msg/Pose",
                position=_new(classes, "geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2])),
                orientation=_new(classes, "geometry_msgs/msg/Quaternion", x=float(q[0]), y=float(q[1]),
                                 z=float(q[2]), w=float(q[3])))


def pose_msg_to_matrix(msg: Any) -> np.ndarray:
    """geometry_msgs/Pose -> (4, 4) float64 (the inverse of `pose_msg`)."""
    o, p = msg.orientation, msg.position
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.array([o.x, o.y, o.z, o.w], dtype=np.float64))
    T[:3, 3] = (p.x, p.y, p.z)
    return T


def covariance_field(cov: np.ndarray | None) -> np.ndarray:
    """(6, 6) covariance or None -> the 36 row-major values of the message (``[-1, 0, ...]`` when unknown)."""
    if cov is None:
        out = np.zeros(36)
        out[0] = UNKNOWN_COVARIANCE
        return out
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (6, 6):
        raise ShapeError(f"PoseEstimate.covariance must be (6, 6), got {cov.shape}")
    return cov.reshape(36).copy()


def covariance_from_field(values: Sequence[float] | np.ndarray) -> np.ndarray | None:
    """The message's 36 covariance values -> (6, 6), or None when they mark it unknown."""
    arr = np.asarray(values, dtype=np.float64).reshape(36)
    return None if arr[0] == UNKNOWN_COVARIANCE else arr.reshape(6, 6)


def roi_msg(box: tuple[float, float, float, float] | None, K: CameraIntrinsics | None,
            classes: MsgClasses | None = None) -> Any:
    """(x0, y0, x1, y1) pixel box -> sensor_msgs/RegionOfInterest, clipped to the image; zeros when unknown."""
    x0 = y0 = w = h = 0
    if box is not None:
        bx0, by0, bx1, by1 = (float(v) for v in box)
        if K is not None:
            bx0, bx1 = np.clip([bx0, bx1], 0, K.width)
            by0, by1 = np.clip([by0, by1], 0, K.height)
        x0, y0 = int(np.floor(bx0)), int(np.floor(by0))
        w, h = max(0, int(np.ceil(bx1)) - x0), max(0, int(np.ceil(by1)) - y0)
    return _new(classes, "sensor_msgs/msg/RegionOfInterest", x_offset=x0, y_offset=y0, height=h, width=w,
                do_rectify=False)


def instance_names(estimates: Sequence[PoseEstimate]) -> list[str]:
    """Unique names per image: the object name, then ``name_2``, ``name_3``... for further instances."""
    seen: dict[str, int] = {}
    out = []
    for est in estimates:
        k = seen.get(est.object_name, 0) + 1
        seen[est.object_name] = k
        out.append(est.object_name if k == 1 else f"{est.object_name}_{k}")
    return out


@dataclass(slots=True)
class PublishConfig:
    """What to build besides /object_poses, and how.

    ``mesh_resources``: object name -> URI RViz can load (``file:///abs/mesh.ply``, ``package://...``).
    ``object_sizes``: object name -> (3,) box size in metres (Detection3D bbox, cube markers).
    """

    detections: bool = True
    transforms: bool = True
    markers: bool = True
    overlay: bool = True
    tf_prefix: str = ""
    marker_lifetime_s: float = 0.5
    marker_color: tuple[float, float, float, float] = (0.1, 0.8, 0.3, 0.8)
    mesh_resources: dict[str, str] = field(default_factory=dict)
    object_sizes: dict[str, np.ndarray] = field(default_factory=dict)
    object_boxes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (min, max)

    @classmethod
    def from_models(cls, models: Sequence[ObjectModel], **kwargs: Any) -> PublishConfig:
        """Sizes, boxes and (where the model came from a file) ``file://`` mesh resources from object models."""
        cfg = cls(**kwargs)
        for m in models:
            lo, hi = m.bbox
            cfg.object_boxes.setdefault(m.name, (np.asarray(lo, float), np.asarray(hi, float)))
            cfg.object_sizes.setdefault(m.name, np.asarray(hi, float) - np.asarray(lo, float))
            if m.source_path:
                cfg.mesh_resources.setdefault(m.name, Path(m.source_path).resolve().as_uri())
        return cfg


def publish_config_for_bundle(bundle: str | Path, **kwargs: Any) -> PublishConfig:
    """`PublishConfig` with the meshes, boxes and sizes of the objects of model bundle ``bundle`` (read from the
    objects config its bundle.yaml names); without them (file missing) markers fall back to plain boxes."""
    from selfpose_core.config_io import load_yaml
    from selfpose_core.mesh.objects_config import load_objects_config
    spec_path = Path(bundle) / "bundle.yaml"
    try:
        raw = load_yaml(spec_path, "model bundle spec") or {}
        objects_config = Path(str(raw["objects_config"]))
    except (SelfposeError, KeyError, TypeError) as exc:
        log.warning("no objects config from %s (%s): markers and overlays show no meshes", spec_path, exc)
        return PublishConfig(**kwargs)
    if not objects_config.is_absolute():
        objects_config = (Path(bundle) / objects_config).resolve()
    try:
        models = load_objects_config(objects_config)
    except SelfposeError as exc:
        log.warning("cannot load %s named by %s (%s): markers and overlays show no meshes", objects_config,
                    spec_path, exc)
        return PublishConfig(**kwargs)
    return PublishConfig.from_models(models, **kwargs)


@dataclass(slots=True)
class PublishedMessages:
    """The messages for one image (None where disabled); ``transforms`` are geometry_msgs/TransformStamped."""

    poses: Any
    detections: Any | None = None
    markers: Any | None = None
    transforms: list[Any] = field(default_factory=list)
    overlay: np.ndarray | None = None  # RGB uint8 (H, W, 3)


class PoseMessageBuilder:
    """Build the estimator's messages for one image from its `PoseEstimate`s.

    Args:
        config: what to build.
        classes: ROS type name -> message class (None: rosbags dataclasses).
    """

    def __init__(self, config: PublishConfig | None = None, classes: MsgClasses | None = None) -> None:
        self.config = config or PublishConfig()
        self.classes = classes

    # ------------------------------------------------------------------ messages
    def object_pose(self, est: PoseEstimate, K: CameraIntrinsics | None = None) -> Any:
        """One selfpose_ros/msg/ObjectPose."""
        c = self.classes
        return _new(c, "selfpose_ros/msg/ObjectPose", name=est.object_name, id=int(est.object_id),
                    pose=pose_msg(est.T_cam_obj, c), confidence=float(est.score),
                    covariance=_float_array(covariance_field(est.covariance), c, "selfpose_ros/msg/ObjectPose"),
                    inliers=int(est.inliers), roi=roi_msg(est.box, K, c))

    def object_pose_array(self, estimates: Sequence[PoseEstimate], stamp_ns: int, frame_id: str,
                          K: CameraIntrinsics | None = None) -> Any:
        """selfpose_ros/msg/ObjectPoseArray stamped with the image's stamp and camera frame."""
        return _new(self.classes, OBJECT_POSE_ARRAY, header=make_header(stamp_ns, frame_id, self.classes),
                    objects=[self.object_pose(e, K) for e in estimates])

    def detection3d_array(self, estimates: Sequence[PoseEstimate], stamp_ns: int, frame_id: str) -> Any:
        """vision_msgs/msg/Detection3DArray: one Detection3D with one hypothesis per estimate."""
        c = self.classes
        dets = []
        for est, inst in zip(estimates, instance_names(estimates)):
            pose = pose_msg(est.T_cam_obj, c)
            pwc = _new(c, "geometry_msgs/msg/PoseWithCovariance", pose=pose,
                       covariance=_float_array(covariance_field(est.covariance), c,
                                               "geometry_msgs/msg/PoseWithCovariance"))
            hyp = _new(c, "vision_msgs/msg/ObjectHypothesisWithPose",
                       hypothesis=_new(c, "vision_msgs/msg/ObjectHypothesis", class_id=est.object_name,
                                       score=float(est.score)), pose=pwc)
            centre, size = self._box_in_camera(est)
            bbox = _new(c, "vision_msgs/msg/BoundingBox3D", center=pose_msg(centre, c),
                        size=_new(c, "geometry_msgs/msg/Vector3", x=float(size[0]), y=float(size[1]),
                                  z=float(size[2])))
            dets.append(_new(c, "vision_msgs/msg/Detection3D", header=make_header(stamp_ns, frame_id, c),
                             results=[hyp], bbox=bbox, id=inst))
        return _new(c, DETECTION_3D_ARRAY, header=make_header(stamp_ns, frame_id, c), detections=dets)

    def _box_in_camera(self, est: PoseEstimate) -> tuple[np.ndarray, np.ndarray]:
        """Centre pose (4, 4) in the camera frame and size (3,) of the object's box (zero size when unknown)."""
        box = self.config.object_boxes.get(est.object_name)
        T = np.asarray(est.T_cam_obj, dtype=np.float64)
        if box is None:
            return T, np.zeros(3)
        lo, hi = box
        offset = np.eye(4)
        offset[:3, 3] = (lo + hi) / 2
        return T @ offset, hi - lo

    def transforms(self, estimates: Sequence[PoseEstimate], stamp_ns: int, frame_id: str) -> list[Any]:
        """geometry_msgs/TransformStamped ``frame_id -> <tf_prefix><instance name>`` for each estimate."""
        prefix = self.config.tf_prefix
        msg = tf_message(((frame_id, f"{prefix}{name}", stamp_ns, e.T_cam_obj)
                          for e, name in zip(estimates, instance_names(estimates))), classes=self.classes)
        return list(msg.transforms)

    def marker_array(self, estimates: Sequence[PoseEstimate], stamp_ns: int, frame_id: str) -> Any:
        """visualization_msgs/msg/MarkerArray: DELETEALL, then a mesh (or box) and a text label per estimate."""
        c, cfg = self.classes, self.config
        header = make_header(stamp_ns, frame_id, c)
        lifetime = _new(c, "builtin_interfaces/msg/Duration", sec=int(cfg.marker_lifetime_s),
                        nanosec=int(round((cfg.marker_lifetime_s % 1) * 1e9)))
        r, g, b, a = cfg.marker_color
        markers = [self._marker(header, "selfpose", 0, _DELETEALL, np.eye(4), np.ones(3), (0, 0, 0, 0), lifetime)]
        for i, (est, name) in enumerate(zip(estimates, instance_names(estimates))):
            mesh = cfg.mesh_resources.get(est.object_name, "")
            centre, size = self._box_in_camera(est)
            if mesh:
                m = self._marker(header, "selfpose_meshes", i, _ADD, est.T_cam_obj, np.ones(3), (r, g, b, a),
                                 lifetime, type_=_MESH, mesh_resource=mesh)
            else:
                size = np.where(size > 0, size, 0.05)
                m = self._marker(header, "selfpose_boxes", i, _ADD, centre, size, (r, g, b, a * 0.6), lifetime,
                                 type_=_CUBE)
            label_T = centre.copy()
            label_T[1, 3] -= float(size[1]) / 2 + 0.03  # above the object: optical y points down
            text = self._marker(header, "selfpose_labels", i, _ADD, label_T, np.array([0.0, 0.0, 0.04]),
                                (1.0, 1.0, 1.0, 1.0), lifetime, type_=_TEXT, text=f"{name} {est.score:.2f}")
            markers += [m, text]
        return _new(c, MARKER_ARRAY, markers=markers)

    def _marker(self, header: Any, ns: str, mid: int, action: int, T: np.ndarray, scale: np.ndarray,
                rgba: Sequence[float], lifetime: Any, type_: int = _CUBE, mesh_resource: str = "",
                text: str = "") -> Any:
        c = self.classes
        zero = _new(c, "builtin_interfaces/msg/Duration", sec=0, nanosec=0)
        extra: dict[str, Any] = {}
        if not _classes_have(c, "visualization_msgs/msg/Marker"):
            # rosbags dataclasses need every field, rclpy messages take their defaults
            mesh_file = _new(c, "visualization_msgs/msg/MeshFile", filename="", data=np.zeros(0, np.uint8))
            extra = dict(points=[], colors=[], texture_resource="", texture=_new(
                c, "sensor_msgs/msg/CompressedImage", header=make_header(0, "", c), format="",
                data=np.zeros(0, np.uint8)), uv_coordinates=[], mesh_file=mesh_file)
        return _new(c, "visualization_msgs/msg/Marker", header=header, ns=ns, id=int(mid), type=int(type_),
                    action=int(action), pose=pose_msg(T, c),
                    scale=_new(c, "geometry_msgs/msg/Vector3", x=float(scale[0]), y=float(scale[1]),
                               z=float(scale[2])),
                    color=_new(c, "std_msgs/msg/ColorRGBA", r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]),
                               a=float(rgba[3])),
                    lifetime=lifetime if action == _ADD else zero, frame_locked=False, text=text,
                    mesh_resource=mesh_resource, mesh_use_embedded_materials=False, **extra)

    # ------------------------------------------------------------------ everything for one image
    def build(self, estimates: Sequence[PoseEstimate], stamp_ns: int, frame_id: str, K: CameraIntrinsics | None = None,
              rgb: np.ndarray | None = None) -> PublishedMessages:
        """All enabled messages for one image (``rgb`` is needed for the overlay)."""
        cfg = self.config
        out = PublishedMessages(poses=self.object_pose_array(estimates, stamp_ns, frame_id, K))
        if cfg.detections:
            out.detections = self.detection3d_array(estimates, stamp_ns, frame_id)
        if cfg.markers:
            out.markers = self.marker_array(estimates, stamp_ns, frame_id)
        if cfg.transforms:
            out.transforms = self.transforms(estimates, stamp_ns, frame_id)
        if cfg.overlay and rgb is not None and K is not None:
            out.overlay = draw_overlay(rgb, K, estimates, cfg.object_boxes)
        return out


# ---------------------------------------------------------------------- overlay image
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8)
_BOX_EDGES = np.array([[0, 1], [1, 3], [3, 2], [2, 0], [4, 5], [5, 7], [7, 6], [6, 4], [0, 4], [1, 5], [2, 6], [3, 7]])


def _project(K: CameraIntrinsics, T: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) of object points X (N, 3) under pose T, and whether each lies in front of the camera."""
    Xc = X @ T[:3, :3].T + T[:3, 3]
    z = Xc[:, 2]
    front = z > 1e-3
    zs = np.where(front, z, 1.0)
    uv = np.stack([K.fx * Xc[:, 0] / zs + K.cx, K.fy * Xc[:, 1] / zs + K.cy], axis=1)
    return uv, front


def draw_overlay(rgb: np.ndarray, K: CameraIntrinsics, estimates: Sequence[PoseEstimate],
                 object_boxes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 axis_length: float | None = None) -> np.ndarray:
    """The camera image (H, W, 3) uint8 RGB with each estimate drawn: its 3D box (when ``object_boxes`` knows the
    object), its axes (x red, y green, z blue), its 2D box and "name score". Returns a new image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ShapeError(f"overlay image must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    img = np.ascontiguousarray(rgb).copy()
    boxes = object_boxes or {}
    thick = max(1, int(round(min(img.shape[:2]) / 240)))
    font = 0.4 * thick
    for i, est in enumerate(estimates):
        color = tuple(int(v) for v in _PALETTE[(est.object_id or i) % len(_PALETTE)])
        T = np.asarray(est.T_cam_obj, dtype=np.float64)
        box = boxes.get(est.object_name)
        if box is not None:
            lo, hi = box
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            uv, front = _project(K, T, corners)
            for a, b in _BOX_EDGES:
                if front[a] and front[b]:
                    cv2.line(img, _pt(uv[a]), _pt(uv[b]), color, thick, cv2.LINE_AA)
            length = axis_length or 0.5 * float(np.max(hi - lo))
        else:
            length = axis_length or 0.05
        axes = np.array([[0, 0, 0], [length, 0, 0], [0, length, 0], [0, 0, length]], dtype=np.float64)
        uv, front = _project(K, T, axes)
        if front.all():
            for j, axis_color in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
                cv2.line(img, _pt(uv[0]), _pt(uv[j + 1]), axis_color, thick + 1, cv2.LINE_AA)
        anchor = uv[0]
        if est.box is not None:
            x0, y0, x1, y1 = est.box
            cv2.rectangle(img, _pt((x0, y0)), _pt((x1, y1)), color, thick)
            anchor = np.array([x0, y0])
        label = f"{est.object_name} {est.score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        x, y = _pt(anchor)
        x = int(np.clip(x, 0, max(0, img.shape[1] - tw)))
        y = int(np.clip(y - 4, th + base, img.shape[0] - 1))
        cv2.rectangle(img, (x, y - th - base), (x + tw, y + base // 2), color, -1)
        cv2.putText(img, label, (x, y - base // 2), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    return img


def _pt(p: Sequence[float] | np.ndarray) -> tuple[int, int]:
    return int(round(float(np.clip(p[0], -1e5, 1e5)))), int(round(float(np.clip(p[1], -1e5, 1e5))))
