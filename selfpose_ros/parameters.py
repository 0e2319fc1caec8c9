"""The ROS parameters of selfpose's nodes: names, defaults, descriptions (plain Python, no rclpy).

The nodes declare exactly these (with descriptors), config/*.yaml hold the defaults users edit, the launch files may
override only these names, and docs/ros.md's tables list them; test/ros checks that all four agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfpose_core.config_io import load_yaml
from selfpose_core.errors import ConfigError

ESTIMATOR_NODE = "selfpose_estimator"
COLLECT_NODE = "collect_sequence"
ADAPT_SERVER_NODE = "adapt_server"
BUNDLE_TOPIC = "selfpose/adapted_bundle"


@dataclass(slots=True, frozen=True)
class ParamSpec:
    """One node parameter; its type is the type of ``default``. ``read_only``: fixed after start-up."""

    name: str
    default: Any
    description: str
    read_only: bool = True


def _topics(use_depth: bool) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("color_topic", "color/image_raw", "colour image topic (sensor_msgs/Image; with image_transport="
                  "compressed the node subscribes to <color_topic>/compressed)"),
        ParamSpec("camera_info_topic", "color/camera_info", "sensor_msgs/CameraInfo of the colour camera"),
        ParamSpec("depth_topic", "aligned_depth_to_color/image_raw", "depth image registered to the colour image "
                  "(16UC1 mm or 32FC1 m), used when use_depth is true"),
        ParamSpec("use_depth", use_depth, "also synchronise the depth image"),
        ParamSpec("image_transport", "raw", "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage)"),
        ParamSpec("sync_slop", 0.02, "ApproximateTimeSynchronizer slop in seconds"),
        ParamSpec("sync_queue_size", 10, "ApproximateTimeSynchronizer queue size per topic"),
        ParamSpec("input_timeout", 5.0, "warn, naming the topics it listens on, when no synchronised frame "
                  "arrived for this long (s)"),
    )


ESTIMATOR_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "", "model bundle directory written by `selfpose adapt` (bundle.yaml + weights.pt); setting "
              "it while running loads that bundle and swaps it in between two frames (a bundle that does not load "
              "is refused, the old one keeps serving)", read_only=False),
    ParamSpec("autostart", True, "configure and activate at start-up (false: wait for the lifecycle transitions, "
              "e.g. from a lifecycle manager or `ros2 lifecycle set`)"),
    *_topics(use_depth=False),
    ParamSpec("score_threshold", 0.3, "publish only objects with confidence >= this", read_only=False),
    ParamSpec("max_rate", 0.0, "estimate at most this many frames per second of image time (0: as fast as the "
              "model runs; older frames are always dropped, never queued)"),
    ParamSpec("publish_detections", True, "also publish vision_msgs/Detection3DArray on object_detections_3d"),
    ParamSpec("publish_tf", True, "broadcast TF <camera frame> -> <tf_prefix><object name>"),
    ParamSpec("tf_prefix", "", "prefix of the object TF frames"),
    ParamSpec("publish_markers", True, "publish visualization_msgs/MarkerArray (meshes) on object_markers"),
    ParamSpec("publish_overlay", True, "publish the camera image with the poses drawn on selfpose/overlay"),
    ParamSpec("marker_lifetime", 0.5, "marker lifetime in seconds"),
    ParamSpec("device", "cpu", "torch device for the model: cpu, cuda, cuda:1 ..."),
    ParamSpec("num_threads", 0, "torch CPU threads (0: torch's default)"),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages"),
    ParamSpec("min_rate_warn", 0.0, "diagnostics warn when the estimation rate falls below this (Hz, 0: never)"),
    ParamSpec("reload_on_adapt", False, "load the bundle the adapt_server announces on bundle_topic when an "
              "adaptation succeeds"),
    ParamSpec("bundle_topic", BUNDLE_TOPIC, "std_msgs/String topic of adapted bundles (with reload_on_adapt)"),
)

COLLECT_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("output", "", "rosbag2 directory to create (refused if it exists); the ~/start service records to "
              "its current value", read_only=False),
    ParamSpec("autostart", True, "start recording at start-up (false: wait for the ~/start service)"),
    *_topics(use_depth=True),  # as collect.launch.py: keyframes with depth
    ParamSpec("world_frame", "odom", "fixed TF frame of the camera poses (odom or map)"),
    ParamSpec("camera_frame", "", "TF frame of the colour camera's optical frame ('' = the images' frame_id)"),
    ParamSpec("tf_timeout", 0.5, "how long (image time, s) a frame waits for its camera pose in TF"),
    ParamSpec("min_translation", 0.05, "keep a keyframe when the camera moved at least this far (m)"),
    ParamSpec("min_rotation", 5.0, "... or turned at least this much (degrees)"),
    ParamSpec("storage", "mcap", "bag storage: mcap (Iron and later default) or sqlite3 (Humble's default)"),
    ParamSpec("image_format", "raw", "colour in the bag: raw, jpeg or png"),
    ParamSpec("depth_format", "16UC1", "depth in the bag: 16UC1 (mm) or 32FC1 (m)"),
    ParamSpec("segment_frames", 30, "keyframes per closed bag segment (what an unclean kill can lose at most "
              "before `selfpose recover`)"),
    ParamSpec("min_free_gb", 1.0, "refuse to start, and stop, when less disk than this is free"),
    ParamSpec("progress_period", 2.0, "seconds between progress lines"),
    ParamSpec("adapt_on_finish", False, "send the Adapt goal for each recording closed by ~/stop"),
    ParamSpec("adapt_action", "adapt", "Adapt action of the adapt_server"),
    ParamSpec("adapt_objects", "", "objects.yaml of the Adapt goal"),
    ParamSpec("adapt_base_model", "", "pre-trained bundle of the Adapt goal"),
    ParamSpec("adapt_output", "", "bundle the Adapt goal writes ('' = <output>_model)"),
    ParamSpec("adapt_overrides", "", "config overrides of the Adapt goal: KEY=VALUE items separated by ';' (as "
              "selfpose adapt --set)"),
)

ADAPT_SERVER_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("action_name", "adapt", "name of the Adapt action"),
    ParamSpec("feedback_period", 1.0, "seconds between feedback messages"),
    ParamSpec("device", "", "torch device of the adaptation ('' = the config's)"),
    ParamSpec("cancel_grace", 30.0, "after a cancel, seconds before SIGTERM (and twice that before SIGKILL) if "
              "the run has not stopped"),
    ParamSpec("bundle_topic", BUNDLE_TOPIC, "std_msgs/String topic (latched) announcing each adapted bundle"),
)

NODE_PARAMETERS = {ESTIMATOR_NODE: ESTIMATOR_PARAMETERS, COLLECT_NODE: COLLECT_PARAMETERS,
                   ADAPT_SERVER_NODE: ADAPT_SERVER_PARAMETERS}


def declare(node: Any, specs: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """Declare ``specs`` on the rclpy ``node`` (descriptions, read-only flags) and return name -> value."""
    from rcl_interfaces.msg import ParameterDescriptor
    for spec in specs:
        node.declare_parameter(spec.name, spec.default,
                               ParameterDescriptor(description=spec.description, read_only=spec.read_only))
    return {spec.name: node.get_parameter(spec.name).value for spec in specs}


def defaults(specs: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """name -> default."""
    return {p.name: p.default for p in specs}


def load_node_yaml(path: str | Path, node: str) -> dict[str, Any]:
    """The ``<node>: ros__parameters:`` mapping of a ROS 2 parameter file, checked against the node's parameters
    (an unknown name or a value of the wrong type raises `ConfigError` naming the file and the key)."""
    path = Path(path)
    raw = load_yaml(path, "parameter file")  # one-line errors; duplicate keys, alias bombs refused
    section = (raw or {}).get(node, {}) if isinstance(raw, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
        raise ConfigError(f"{path}: no '{node}: ros__parameters:' section")
    values = section["ros__parameters"]
    known = {p.name: p for p in NODE_PARAMETERS[node]}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{path}: {node}.ros__parameters.{key} is not a parameter of {node} "
                              f"(known: {', '.join(sorted(known))})")
        want = type(known[key].default)
        if not (isinstance(value, want) and not (want is int and isinstance(value, bool))):
            raise ConfigError(f"{path}: {node}.ros__parameters.{key} must be {want.__name__}, got {value!r}")
    return values


def markdown_table(specs: tuple[ParamSpec, ...]) -> str:
    """The parameters as a Markdown table (name, default, description), as in docs/ros.md."""
    rows = ["| parameter | default | description |", "|---|---|---|"]
    for p in specs:
        default = ("true" if p.default else "false") if isinstance(p.default, bool) else (
            f'"{p.default}"' if isinstance(p.default, str) else repr(p.default))
        rows.append(f"| `{p.name}` | `{default}` | {p.description.replace('|', '/')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m selfpose_ros.parameters: the tables of docs/ros.md
    for node_name, node_specs in NODE_PARAMETERS.items():
        print(f"### {node_name}\n\n{markdown_table(node_specs)}\n")
