"""`selfpose estimate --bag B --model M --out B2`: the estimator node's work, offline over a recording.

Every frame of B goes through the classes the ROS node uses (`NewestFrameWorker`, `PoseMessageBuilder`); B2 gets
/object_poses (selfpose_ros/msg/ObjectPoseArray) and /object_detections_3d (vision_msgs/msg/Detection3DArray)
stamped with the image stamps, and with ``--overlay`` the overlay images on /selfpose/overlay/compressed (JPEG).
Offline nothing is dropped: each frame is waited for before the next is submitted.

The output is written like a recording (`BagWriter`): each frame's messages are flushed when written and a segment
is closed every ``--segment-frames`` frames. Ctrl-C or SIGTERM closes the bag after the frame being written (exit
130 / 143); after kill -9 the closed segments read as they are and `selfpose recover OUT` salvages the rest. When
every frame fails, the command exits with code 2 and the last error; when writing fails (a full disk) it stops at
once and exits 2 with the number of frames kept.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from selfpose_core.cli.recording_options import add_topic_options, topics_from_args
from selfpose_core.data.image_codec import array_to_compressed_msg
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import BagWriter
from selfpose_core.errors import ConfigError, RecordingError, SelfposeError
from selfpose_core.estimate.publishing import (DETECTION_3D_ARRAY, OBJECT_POSE_ARRAY, PoseMessageBuilder,
                                               PublishConfig, publish_config_for_bundle)
from selfpose_core.estimate.stream import Estimator, NewestFrameWorker, StreamStats, load_estimator, select_estimates
from selfpose_core.types import Frame, PoseEstimate

log = logging.getLogger(__name__)

SEGMENT_FRAMES = 100  # frames per closed segment of the output bag
POSES_TOPIC = "/object_poses"
DETECTIONS_TOPIC = "/object_detections_3d"
OVERLAY_TOPIC = "/selfpose/overlay/compressed"


@dataclass(slots=True)
class ReplayResult:
    """What a replay wrote."""

    frames: int
    poses: int  # ObjectPose entries written
    stats: StreamStats
    written: int = 0  # frames whose messages were written


def write_pose_bag(frames: Iterable[Frame], estimator: Estimator, out: str | Path, builder: PoseMessageBuilder,
                   score_threshold: float = 0.0, storage: str = "mcap",
                   segment_frames: int = SEGMENT_FRAMES) -> ReplayResult:
    """Run ``estimator`` on every frame and write the node's messages, stamped with the image stamps, to the new
    bag ``out`` (refused if it exists): each frame flushed, a segment closed every ``segment_frames`` frames."""
    if segment_frames < 1:
        raise ConfigError(f"segment_frames must be >= 1, got {segment_frames}")
    cfg = builder.config
    n_frames = n_poses = n_written = 0

    def process(frame: Frame) -> list[PoseEstimate]:
        return select_estimates(estimator.estimate(frame), score_threshold)

    def publish(frame: Frame, estimates: list[PoseEstimate]) -> None:
        nonlocal n_poses, n_written
        if bag.closed:  # a signal closed the bag while this frame was being estimated
            return
        msgs = builder.build(estimates, frame.stamp_ns, frame.frame_id, frame.K, frame.rgb)
        overlay = None if msgs.overlay is None else \
            array_to_compressed_msg(msgs.overlay, "jpeg", frame.stamp_ns, frame.frame_id, quality=85)
        with bag.atomic():  # a close() from the main thread waits for the frame's messages
            if bag.closed:
                return
            bag.write(POSES_TOPIC, OBJECT_POSE_ARRAY, msgs.poses, frame.stamp_ns)
            if msgs.detections is not None:
                bag.write(DETECTIONS_TOPIC, DETECTION_3D_ARRAY, msgs.detections, frame.stamp_ns)
            if overlay is not None:
                bag.write(OVERLAY_TOPIC, "sensor_msgs/msg/CompressedImage", overlay, frame.stamp_ns)
            # flushed (`selfpose recover` salvages it after kill -9); every segment_frames frames a closed segment
            bag.end_frame(split=(n_written + 1) % segment_frames == 0)
            n_written += 1
        n_poses += len(estimates)

    # SIGINT/SIGTERM (cli/signals.py) raise in the main thread; leaving this block closes the worker, then the bag,
    # whose close() waits for a frame the worker is writing
    with BagWriter(out, storage=storage, segment_messages=None) as bag, \
            NewestFrameWorker(process, publish) as worker:
        for frame in frames:
            worker.submit(frame, frame.stamp_ns)
            worker.wait_idle()
            n_frames += 1
            if bag.failure is not None:  # a full disk: nothing more can be written
                break
        if worker.stats.errors:
            log.warning("%d frames failed; last error: %s", worker.stats.errors, worker.stats.last_error)
    if bag.failure is not None:
        raise bag.failure
    log.info("estimated %d frames (%d poses) into %s; overlay %s", n_frames, n_poses, out,
             "written" if cfg.overlay else "off")
    return ReplayResult(n_frames, n_poses, worker.stats, n_written)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="run a model bundle over a recording and write /object_poses into a new bag")
    p.add_argument("--bag", type=Path, required=True, help="input rosbag2 recording")
    p.add_argument("--model", type=Path, required=True, help="model bundle directory (from `selfpose adapt`)")
    p.add_argument("--out", type=Path, required=True, help="output rosbag2 directory (must not exist)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="keep objects with confidence >= this")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--overlay", action="store_true", help="also write overlay images (JPEG) on " + OVERLAY_TOPIC)
    p.add_argument("--no-detections", action="store_true", help="do not write " + DETECTIONS_TOPIC)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output bag storage")
    p.add_argument("--segment-frames", type=int, default=SEGMENT_FRAMES,
                   help=f"frames per closed segment of the output bag (default {SEGMENT_FRAMES})")
    add_topic_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise RecordingError(f"{args.out} exists already; selfpose never overwrites a recording")
    if args.segment_frames < 1:
        raise ConfigError(f"--segment-frames must be >= 1, got {args.segment_frames}")
    if args.num_threads < 0:
        raise ConfigError(f"--num-threads must be >= 0 (0: torch's default), got {args.num_threads}")
    estimator = load_estimator(str(args.model), args.device, args.num_threads)
    config: PublishConfig = publish_config_for_bundle(args.model, detections=not args.no_detections,
                                                      transforms=False, markers=False, overlay=args.overlay)
    with Recording(args.bag, topics_from_args(args), require_pose=False) as rec:
        result = write_pose_bag(rec, estimator, args.out, PoseMessageBuilder(config), args.score_threshold,
                                args.storage, args.segment_frames)
    s = result.stats
    if result.frames and not result.written:
        raise SelfposeError(f"every frame failed ({s.errors} of {result.frames}), {args.out} holds no poses; last "
                            f"error: {s.last_error or 'none recorded'}")
    print(f"wrote {args.out}: {result.frames} frames, {result.poses} object poses on {POSES_TOPIC}; "
          f"model time {s.run_ms:.0f} ms/frame ({1000.0 / s.run_ms if s.run_ms else 0.0:.1f} frames/s)")
    return 0
