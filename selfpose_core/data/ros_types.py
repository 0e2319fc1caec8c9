"""The ROS 2 message typestore used to read and write bags without a ROS install.

Standard types (sensor_msgs, tf2_msgs, geometry_msgs, ...) are the ROS 2 Jazzy definitions shipped by `rosbags`
(identical to Humble's for every type selfpose uses, same CDR bytes). selfpose's own messages
``selfpose_ros/msg/ObjectPose`` and ``selfpose_ros/msg/ObjectPoseArray`` are registered from the ``.msg`` files in
``msg/`` of a source checkout or ``<prefix>/share/selfpose_ros/msg`` of an installation.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from selfpose_core.errors import RecordingError

PACKAGE = "selfpose_ros"
SELFPOSE_MSGS = ("ObjectPose", "ObjectPoseArray")
STORE = Stores.ROS2_JAZZY


def msg_dirs() -> list[Path]:
    """Directories searched for selfpose's .msg files, in order: $SELFPOSE_MSG_DIR, the source checkout's msg/,
    ``<sys.prefix>/share/selfpose_ros/msg`` and every ``$AMENT_PREFIX_PATH`` entry's share/selfpose_ros/msg."""
    dirs = []
    if os.environ.get("SELFPOSE_MSG_DIR"):
        dirs.append(Path(os.environ["SELFPOSE_MSG_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "msg")
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "msg")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        dirs.append(Path(prefix) / "share" / PACKAGE / "msg")
    return dirs


def find_msg_dir() -> Path | None:
    """The first of `msg_dirs` holding all of selfpose's .msg files, or None."""
    for d in msg_dirs():
        if all((d / f"{name}.msg").is_file() for name in SELFPOSE_MSGS):
            return d
    return None


def selfpose_types(msg_dir: Path) -> dict:
    """Parse selfpose's .msg files in ``msg_dir`` into a rosbags types dict (names ``selfpose_ros/msg/<Name>``)."""
    types: dict = {}
    for name in SELFPOSE_MSGS:
        path = msg_dir / f"{name}.msg"
        try:
            types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{name}"))
        except Exception as exc:  # rosbags raises its own parse errors
            raise RecordingError(f"cannot parse message definition {path}: {exc}") from exc
    return types


@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """The shared typestore: ROS 2 Jazzy types plus selfpose_ros/msg/ObjectPose(Array) when their .msg files exist."""
    store = get_typestore(STORE)
    msg_dir = find_msg_dir()
    if msg_dir is not None:
        store.register(selfpose_types(msg_dir))
    return store


def require_type(name: str) -> type:
    """The message class for ROS type ``name`` (e.g. "selfpose_ros/msg/ObjectPoseArray"); a clear
    `RecordingError` when it is unknown (for selfpose's own types: the .msg files were not found)."""
    store = typestore()
    if name in store.types:
        return store.types[name]
    if name.startswith(f"{PACKAGE}/"):
        raise RecordingError(f"message type {name} is unknown: no {', '.join(m + '.msg' for m in SELFPOSE_MSGS)} in "
                             f"{', '.join(str(d) for d in msg_dirs())} (set SELFPOSE_MSG_DIR)")
    raise RecordingError(f"message type {name} is not a ROS 2 {STORE.value} type known to rosbags")


def register_msgdef(store: Typestore, msgtype: str, msgdef: str) -> None:
    """Register ``msgtype`` from a bag's embedded definition (ros2msg text with ``===`` separated dependencies)."""
    types: dict = {}
    parts = msgdef.split("=" * 80 + "\n")
    types.update(get_types_from_msg(parts[0], msgtype))
    for part in parts[1:]:
        head, _, body = part.partition("\n")
        if head.startswith("MSG: "):
            name = head[5:].strip()
            if "/msg/" not in name:
                pkg, _, base = name.partition("/")
                name = f"{pkg}/msg/{base}"
            types.update(get_types_from_msg(body, name))
    store.register({k: v for k, v in types.items() if k not in store.types})
