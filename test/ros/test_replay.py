"""Replay: a simulator recording read with rosbags' ROS 2 message types drives the estimator node's classes
(FrameAssembler -> NewestFrameWorker -> PoseMessageBuilder) and `selfpose estimate --bag`; a test-double model
returns the simulator's ground truth. Writes the overlay image of docs/ros.md when SELFPOSE_WRITE_DOCS=1."""
from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from selfpose_core.cli import estimate as estimate_cli
from selfpose_core.cli.main import main as selfpose_main
from selfpose_core.data.image_codec import stamp_to_ns
from selfpose_core.data.recording import RecordingTopics
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.ros_types import register_msgdef, typestore
from selfpose_core.data.sim.generate import SimConfig, Simulator
from selfpose_core.estimate.publishing import (PoseMessageBuilder, PublishConfig, covariance_from_field,
                                               draw_overlay, pose_msg_to_matrix)
from selfpose_core.estimate.stream import NewestFrameWorker
from selfpose_core.mesh.loading import save_mesh
from selfpose_core.mesh.objects_config import write_objects_config
from selfpose_core.types import Frame, ObjectModel, PoseEstimate
from selfpose_ros.conversions import FrameAssembler

REPO = Path(__file__).resolve().parents[2]
TOPICS = RecordingTopics()


class GroundTruthEstimator:
    """Test double of PoseEstimator: the simulator's true poses of the objects in view, with 2D boxes."""

    def __init__(self, gt: dict[int, list[tuple[int, np.ndarray]]], models: list[ObjectModel]) -> None:
        self.gt = gt
        self.models = {m.obj_id: m for m in models}
        self.calls: list[int] = []

    def estimate(self, frame: Frame) -> list[PoseEstimate]:
        self.calls.append(frame.stamp_ns)
        out = []
        for k, (obj_id, T) in enumerate(self.gt[frame.stamp_ns]):
            m = self.models[obj_id]
            X = m.vertices @ T[:3, :3].T + T[:3, 3]
            uv = X[:, :2] / X[:, 2:] * [frame.K.fx, frame.K.fy] + [frame.K.cx, frame.K.cy]
            box = (*uv.min(0), *uv.max(0))
            cov = np.diag([1e-4] * 3 + [1e-3] * 3) if k == 0 else None
            out.append(PoseEstimate(m.name, T, 0.95 - 0.1 * k, obj_id, box=box, covariance=cov, inliers=40 - k))
        return out


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    """A 5-frame simulator recording (160x120, depth) with the ground truth per image stamp and the CAD models."""
    root = tmp_path_factory.mktemp("replay")
    cfg = SimConfig(seed=3, frames=5, test_frames=0, width=160, height=120, fx=150.0, fy=150.0, tests=())
    sim = Simulator(cfg)
    models = sim.cad_models()
    gt = {}
    with RecordingWriter(root / "recording") as writer:
        for view in sim.views(sim.trajectories[0]):
            writer.write_frame(view.frame)
            gt[view.frame.stamp_ns] = view.gt
    entries = [{"name": m.name, "mesh": str(save_mesh(m, root / "models" / f"{m.name}.ply")), "units": "m",
                "obj_id": m.obj_id} for m in models]
    write_objects_config(root / "objects.yaml", entries)
    (root / "bundle").mkdir()
    (root / "bundle" / "bundle.yaml").write_text(yaml.safe_dump({"objects_config": "../objects.yaml"}))
    return root, gt, models


def read_messages(bag: Path) -> dict[str, list]:
    """topic -> deserialized messages (rosbags' ROS 2 types; unknown types from the bag's own definitions)."""
    store = typestore()
    out = defaultdict(list)
    with Reader(bag) as reader:
        for conn in reader.connections:
            if conn.msgtype not in store.types:
                register_msgdef(store, conn.msgtype, conn.msgdef.data)
        for conn, _, raw in reader.messages():
            out[conn.topic].append(store.deserialize_cdr(raw, conn.msgtype))
    return out


def synchronised(msgs: dict[str, list]) -> list[tuple]:
    """(colour, camera_info, depth) triples with equal stamps, in stamp order (what the synchroniser hands over)."""
    by_stamp = defaultdict(dict)
    for key, topic in (("color", TOPICS.color), ("info", TOPICS.camera_info), ("depth", TOPICS.depth)):
        for m in msgs[topic]:
            by_stamp[stamp_to_ns(m.header.stamp)][key] = m
    return [(v["color"], v["info"], v["depth"]) for _, v in sorted(by_stamp.items())]


def test_replay_through_the_node_classes_publishes_the_poses_with_image_stamps(sim_bag, tmp_path):
    root, gt, models = sim_bag
    triples = synchronised(read_messages(root / "recording"))
    assert len(triples) == 5
    model = GroundTruthEstimator(gt, models)
    assemble = FrameAssembler(TOPICS.color, TOPICS.camera_info, TOPICS.depth)
    builder = PoseMessageBuilder(PublishConfig.from_models(models))
    published = []

    def process(msgs):
        frame = assemble(*msgs)
        return frame, model.estimate(frame)

    def publish(msgs, result):
        frame, ests = result
        published.append((frame, builder.build(ests, frame.stamp_ns, frame.frame_id, frame.K, frame.rgb)))

    with NewestFrameWorker(process, publish) as worker:
        for msgs in triples:
            worker.submit(msgs, stamp_to_ns(msgs[0].header.stamp))
            worker.wait_idle(30)
    assert worker.stats.processed == 5 and worker.stats.dropped == 0
    store = typestore()
    for (frame, out), (color, _, _) in zip(published, triples):
        poses = store.deserialize_cdr(store.serialize_cdr(out.poses, out.poses.__msgtype__), out.poses.__msgtype__)
        assert poses.header.stamp == color.header.stamp and poses.header.frame_id == color.header.frame_id
        truth = gt[frame.stamp_ns]
        assert len(truth) >= 2 and [o.id for o in poses.objects] == [obj_id for obj_id, _ in truth]
        for o, (_, T) in zip(poses.objects, truth):
            np.testing.assert_allclose(pose_msg_to_matrix(o.pose), T, atol=1e-9)
        assert covariance_from_field(poses.objects[0].covariance)[3, 3] == pytest.approx(1e-3)
        assert covariance_from_field(poses.objects[1].covariance) is None
        assert all(t.header.stamp == color.header.stamp for t in out.transforms)
        assert frame.depth is not None and np.isfinite(frame.depth).any()
        assert out.overlay.shape == (120, 160, 3)
    overlay = published[0][1].overlay
    assert np.mean(np.any(overlay != published[0][0].rgb, axis=2)) > 0.02  # boxes, axes and labels drawn
    cv2.imwrite(str(tmp_path / "overlay.png"), overlay[..., ::-1])
    if os.environ.get("SELFPOSE_WRITE_DOCS") == "1":  # the same drawing on the image scaled x3, for docs/ros.md
        frame, _ = published[0]
        big = cv2.resize(frame.rgb, (480, 360), interpolation=cv2.INTER_CUBIC)
        ests = model.estimate(frame)
        for e in ests:
            e.box = tuple(3 * v + 1 for v in e.box)
        drawn = draw_overlay(big, frame.K.scaled(3.0), ests, builder.config.object_boxes)
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(REPO / "docs" / "img" / "ros_overlay.png"), drawn[..., ::-1])


def test_slow_model_on_a_replayed_stream_drops_old_frames(sim_bag):
    root, gt, models = sim_bag
    triples = synchronised(read_messages(root / "recording"))
    assemble = FrameAssembler(TOPICS.color, TOPICS.camera_info, TOPICS.depth)
    model = GroundTruthEstimator(gt, models)
    started, gate = threading.Semaphore(0), threading.Semaphore(0)
    published = []

    def slow_model(msgs):
        started.release()
        assert gate.acquire(timeout=30)
        return model.estimate(assemble(*msgs))

    with NewestFrameWorker(slow_model, lambda m, r: published.append(stamp_to_ns(m[0].header.stamp))) as worker:
        worker.submit(triples[0], stamp_to_ns(triples[0][0].header.stamp))
        assert started.acquire(timeout=30)
        for msgs in triples[1:]:  # the camera goes on while the model is busy
            worker.submit(msgs, stamp_to_ns(msgs[0].header.stamp))
        gate.release()
        assert started.acquire(timeout=30)
        gate.release()
        assert worker.wait_idle(30)
    stamps = [stamp_to_ns(t[0].header.stamp) for t in triples]
    assert published == [stamps[0], stamps[-1]]  # never the stale frames 1..3
    assert worker.stats.dropped == 3 and worker.stats.values()["frames dropped (model busy)"] == "3"


def test_selfpose_estimate_writes_poses_and_detections_into_a_new_bag(sim_bag, tmp_path, monkeypatch, capsys):
    root, gt, models = sim_bag
    model = GroundTruthEstimator(gt, models)
    monkeypatch.setattr(estimate_cli, "load_estimator", lambda bundle, device, threads: model)
    out = tmp_path / "poses"
    argv = ["estimate", "--bag", str(root / "recording"), "--model", str(root / "bundle"), "--out", str(out),
            "--overlay", "--score-threshold", "0.9"]
    assert selfpose_main(argv) == 0
    assert "5 frames" in capsys.readouterr().out
    msgs = read_messages(out)
    stamps = sorted(gt)
    assert [stamp_to_ns(m.header.stamp) for m in msgs["/object_poses"]] == stamps
    for m in msgs["/object_poses"]:
        assert len(m.objects) == 1  # only the first estimate scores >= 0.9
        obj_id, T = gt[stamp_to_ns(m.header.stamp)][0]
        assert m.objects[0].id == obj_id
        np.testing.assert_allclose(pose_msg_to_matrix(m.objects[0].pose), T, atol=1e-9)
    dets = msgs["/object_detections_3d"]
    assert len(dets) == 5 and dets[0].detections[0].bbox.size.x > 0  # boxes from the bundle's objects config
    assert len(msgs["/selfpose/overlay/compressed"]) == 5
    assert selfpose_main(argv) == 2  # never overwrites
    assert "exists already" in capsys.readouterr().err
