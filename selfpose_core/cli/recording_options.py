"""Command-line options naming a recording's topics and TF frames (shared by the subcommands that read bags).

The names come from ``--profile`` (a name or a file), else the bag's recording.yaml, else detection
(`selfpose_core.data.recording_profile`); each topic/frame option given on the command line overrides its field.
The choice is logged, so a user sees which camera a command reads.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from selfpose_core.data.recording import RecordingTopics
from selfpose_core.data.recording_profile import PROFILE_FILE, PROFILES, profile_for_bag

log = logging.getLogger(__name__)

# option destination -> RecordingTopics field
_FIELDS = {"color_topic": "color", "depth_topic": "depth", "info_topic": "camera_info", "tf_topic": "tf",
           "tf_static_topic": "tf_static", "world_frame": "world_frame", "camera_frame": "camera_frame"}


def add_topic_options(p: argparse.ArgumentParser) -> None:
    """Add --profile and --color-topic, --depth-topic, --info-topic, --tf-topic, --tf-static-topic, --world-frame,
    --camera-frame (each default: the profile's)."""
    d = RecordingTopics()
    g = p.add_argument_group(
        "recording topics and frames",
        f"from --profile, else BAG/{PROFILE_FILE}, else detected from the bag (selfpose's own topics, or its only "
        "colour image topic with a CameraInfo beside it); an option below overrides that one name")
    g.add_argument("--profile", help=f"topic/frame profile: {', '.join(PROFILES)}, or a YAML file like "
                                     f"{PROFILE_FILE} (keys: {', '.join(_FIELDS.values())})")
    g.add_argument("--color-topic", help=f"sensor_msgs/Image or CompressedImage topic (selfpose: {d.color})")
    g.add_argument("--depth-topic", help="depth image topic ('' for none)")
    g.add_argument("--info-topic", help="sensor_msgs/CameraInfo topic")
    g.add_argument("--tf-topic", help=f"(default {d.tf})")
    g.add_argument("--tf-static-topic", help=f"(default {d.tf_static})")
    g.add_argument("--world-frame", help="TF frame the camera poses are expressed in")
    g.add_argument("--camera-frame", help="TF frame of the camera (optical frame); '' = the colour images' "
                                          "header.frame_id")


def topics_from_args(args: argparse.Namespace, bag: str | Path | None = None) -> RecordingTopics:
    """The `RecordingTopics` for ``bag`` (default ``args.bag``): its profile (logged), then the options given."""
    bag = bag if bag is not None else args.bag
    choice = profile_for_bag(bag, args.profile)
    given = {field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest) is not None}
    if "depth" in given and not given["depth"]:
        given["depth"] = None
    topics = dataclasses.replace(choice.topics, **given)
    source = choice.source + (f"; options: {', '.join(sorted(given))}" if given else "")
    log.info("recording %s: %s", bag, dataclasses.replace(choice, topics=topics, source=source).describe())
    return topics
