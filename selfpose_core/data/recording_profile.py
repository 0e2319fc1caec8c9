"""Where a bag's camera is: the topic and TF frame names of a recording, stated once.

Three sources, in this order (`profile_for_bag`):

1. a named profile (`PROFILES`: ``selfpose`` = what collect_sequence writes, ``realsense`` = `ros2 bag record` of the
   RealSense ROS 2 wrapper under /camera/camera with the robot's ``odom``) or a profile file (YAML, the fields of
   `RecordingTopics`), given by the caller;
2. ``recording.yaml`` inside the bag directory (`write_profile` writes one; rosbag2 tools ignore it);
3. detection: selfpose's own topics when the bag has them, else the bag's only colour image topic that has a
   sensor_msgs/CameraInfo beside it (same namespace), its only depth image topic (or the ``aligned_depth...`` one),
   and as world frame the root of the TF tree above the images' frame. More than one candidate is an error that
   lists them (name one with a profile or the command's topic options).

Every source says what it chose (`ProfileChoice.source`), so the commands can log it.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import Reader

from selfpose_core.config_io import load_yaml
from selfpose_core.data.image_codec import COLOR_ENCODINGS, DEPTH_ENCODINGS
from selfpose_core.data.recording import RecordingTopics
from selfpose_core.data.ros_types import typestore
from selfpose_core.errors import ConfigError, RecordingError

log = logging.getLogger(__name__)

PROFILE_FILE = "recording.yaml"
PROFILES: dict[str, RecordingTopics] = {
    "selfpose": RecordingTopics(),
    "realsense": RecordingTopics(color="/camera/camera/color/image_raw",
                                 depth="/camera/camera/aligned_depth_to_color/image_raw",
                                 camera_info="/camera/camera/color/camera_info", world_frame="odom", camera_frame=""),
}
FIELDS = tuple(f.name for f in dataclasses.fields(RecordingTopics))
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_TYPE = "tf2_msgs/msg/TFMessage"


@dataclass(slots=True, frozen=True)
class ProfileChoice:
    """The topics and frames chosen for a bag, and where they come from (for the log)."""

    topics: RecordingTopics
    source: str

    def describe(self) -> str:
        t = self.topics
        return (f"colour {t.color}, camera_info {t.camera_info}, depth {t.depth or 'none'}, poses "
                f"{t.world_frame} <- {t.camera_frame or '<image frame_id>'} ({self.source})")


def load_profile(name_or_path: str | Path) -> RecordingTopics:
    """A named profile of `PROFILES`, or a profile file (YAML mapping of `RecordingTopics` fields; missing fields
    keep the selfpose defaults, ``depth: null`` or ``''`` ignores depth)."""
    text = str(name_or_path)
    if text in PROFILES:
        return PROFILES[text]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"recording profile {text!r} is neither a profile name ({', '.join(PROFILES)}) nor a file")
    raw = load_yaml(path, "recording profile") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recording profile is a mapping of {', '.join(FIELDS)}")
    for key, value in raw.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(FIELDS)})")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string, got {value!r}")
    values = {k: v for k, v in raw.items()}
    if "depth" in values and not values["depth"]:
        values["depth"] = None
    return dataclasses.replace(RecordingTopics(), **values)


def write_profile(bag: str | Path, topics: RecordingTopics) -> Path:
    """Write ``topics`` as ``<bag>/recording.yaml``; later commands on the bag then need no topic options."""
    path = Path(bag) / PROFILE_FILE
    data = {name: getattr(topics, name) for name in FIELDS}
    path.write_text("# topic and TF frame names of this recording (read by every selfpose command)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def profile_for_bag(bag: str | Path, profile: str | Path | None = None) -> ProfileChoice:
    """The topics of ``bag``: the given ``profile``, else its recording.yaml, else detected (module docstring)."""
    bag = Path(bag)
    if profile is not None:
        return ProfileChoice(load_profile(profile), f"profile {profile}")
    if (bag / PROFILE_FILE).is_file():
        return ProfileChoice(load_profile(bag / PROFILE_FILE), f"{bag / PROFILE_FILE}")
    return detect_topics(bag)


def _first_message(reader: Reader, conns: list) -> Any | None:
    for conn, _, raw in reader.messages(connections=conns):
        return typestore().deserialize_cdr(raw, conn.msgtype)
    return None


def _namespace(topic: str) -> str:
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    return topic.rsplit("/", 1)[0]


def detect_topics(bag: str | Path) -> ProfileChoice:
    """Detect the camera topics and the world frame of ``bag`` (see the module docstring)."""
    bag = Path(bag)
    if not (bag / "metadata.yaml").is_file():
        return ProfileChoice(RecordingTopics(), "selfpose defaults (no metadata.yaml to detect from)")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception:  # the recording reader reports a broken bag with its own hints
        return ProfileChoice(RecordingTopics(), "selfpose defaults (bag not readable to detect from)")
    try:
        return _detect(bag, reader)
    finally:
        reader.close()


def _detect(bag: Path, reader: Reader) -> ProfileChoice:
    types = {c.topic: c.msgtype for c in reader.connections}
    default = RecordingTopics()
    if types.get(default.color) in (IMAGE, COMPRESSED):
        return ProfileChoice(default, "selfpose's own topics")
    infos = {_namespace(t) + "/": t for t, ty in types.items() if ty == CAMERA_INFO}
    color, depth = [], []
    for topic, ty in sorted(types.items()):
        if ty == COMPRESSED:
            if "compressedDepth" not in topic:
                color.append(topic)
        elif ty == IMAGE:
            msg = _first_message(reader, [c for c in reader.connections if c.topic == topic])
            enc = getattr(msg, "encoding", "")
            if enc in DEPTH_ENCODINGS:
                depth.append(topic)
            elif enc in COLOR_ENCODINGS and enc != "mono8" or enc not in COLOR_ENCODINGS + DEPTH_ENCODINGS:
                color.append(topic)  # colour, or an encoding the codec names in its own error
    pairs = [(c, infos[_namespace(c) + "/"]) for c in color if _namespace(c) + "/" in infos]
    if len(pairs) != 1:
        what = (f"colour image topics with a CameraInfo beside them: {', '.join(c for c, _ in pairs)}" if pairs else
                f"no colour image topic with a sensor_msgs/CameraInfo in its namespace (image topics: "
                f"{', '.join(color) or 'none'}; camera_info topics: {', '.join(infos.values()) or 'none'})")
        raise RecordingError(f"bag {bag}: cannot choose its camera ({what}); name it with --profile (a name: "
                             f"{', '.join(PROFILES)}, or a {PROFILE_FILE}) or --color-topic/--info-topic")
    color_topic, info_topic = pairs[0]
    if len(depth) > 1:
        aligned = [d for d in depth if "aligned" in d]
        depth = aligned if len(aligned) == 1 else []
        if not depth:
            log.warning("bag %s: several depth topics, none chosen (name one with --depth-topic)", bag)
    depth_topic = depth[0] if depth else None
    msg = _first_message(reader, [c for c in reader.connections if c.topic == color_topic])
    frame_id = str(msg.header.frame_id) if msg is not None else ""
    world = _tf_root(reader, frame_id, types) or default.world_frame
    topics = RecordingTopics(color=color_topic, depth=depth_topic, camera_info=info_topic, world_frame=world,
                             camera_frame="")
    return ProfileChoice(topics, "detected from the bag")


def _tf_root(reader: Reader, frame: str, types: dict[str, str], max_messages: int = 2000) -> str | None:
    """The root of the TF tree above ``frame`` in the bag's /tf and /tf_static (first ``max_messages`` messages)."""
    conns = [c for c in reader.connections if c.msgtype == TF_TYPE]
    parent: dict[str, str] = {}
    for k, (conn, _, raw) in enumerate(reader.messages(connections=conns)):
        if k >= max_messages:
            break
        for ts in typestore().deserialize_cdr(raw, conn.msgtype).transforms:
            parent[str(ts.child_frame_id).lstrip("/")] = str(ts.header.frame_id).lstrip("/")
    node = frame.lstrip("/")
    if not node or node not in parent:
        return None
    seen = {node}
    while node in parent and parent[node] not in seen:
        node = parent[node]
        seen.add(node)
    return node
