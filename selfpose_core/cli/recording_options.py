"""Command-line options naming a recording's topics and TF frames (shared by the subcommands that read bags)."""
from __future__ import annotations

import argparse

from selfpose_core.data.recording import RecordingTopics


def add_topic_options(p: argparse.ArgumentParser) -> None:
    """Add --color-topic, --depth-topic, --info-topic, --tf-topic, --tf-static-topic, --world-frame, --camera-frame."""
    d = RecordingTopics()
    g = p.add_argument_group("recording topics and frames (defaults: what selfpose records)")
    g.add_argument("--color-topic", default=d.color, help="sensor_msgs/Image or CompressedImage topic")
    g.add_argument("--depth-topic", default=d.depth, help="depth image topic ('' for none)")
    g.add_argument("--info-topic", default=d.camera_info, help="sensor_msgs/CameraInfo topic")
    g.add_argument("--tf-topic", default=d.tf)
    g.add_argument("--tf-static-topic", default=d.tf_static)
    g.add_argument("--world-frame", default=d.world_frame, help="TF frame the camera poses are expressed in")
    g.add_argument("--camera-frame", default=d.camera_frame,
                   help="TF frame of the camera (optical frame); '' = the colour images' header.frame_id")


def topics_from_args(args: argparse.Namespace) -> RecordingTopics:
    """The `RecordingTopics` the options describe."""
    return RecordingTopics(color=args.color_topic, depth=args.depth_topic or None, camera_info=args.info_topic,
                           world_frame=args.world_frame, camera_frame=args.camera_frame, tf=args.tf_topic,
                           tf_static=args.tf_static_topic)
