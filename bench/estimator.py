"""Pose estimator benchmark: end-to-end speed on 640x480 frames, and accuracy of trained bundles on held-out frames.

    selfpose bench estimator                       # speed: both pose networks, 1 and 3 visible objects, 1 thread
    selfpose bench estimator --threads 2 --depth --frames 200
    selfpose bench estimator --accuracy DIR/bop --models lower_kp=M1,lower_corr=M2,upper_kp=M3 [--gt-boxes]
    selfpose bench estimator --accuracy DIR/bop --models adapted=M --search align_iterations=0
    selfpose bench estimator --accuracy DIR/bop --models adapted=M --search use_appearance=false
    selfpose bench estimator --accuracy DIR/bop --models adapted=M --tracking

Speed uses bundles with random weights and a detection threshold of 0, so that exactly N objects are detected and
go through cropping, the pose network, PnP-RANSAC and (with --depth) ICP; the cost does not depend on the weights.
Figures: frames/s and p50/p95 latency of ``PoseEstimator.estimate`` (detector resize included), and the ratio to
the goals (>= 20 frames/s with one object, >= 15 with three; DSC-PoseNet reports 7 frames/s on a V100).
Accuracy runs each bundle on the BOP split ``test`` (the held-out trajectories), with depth (the table-top search
of the estimator) and from RGB alone (no depth anywhere), and prints per mode the eval table, AD{D|I} per
trajectory, the error breakdown and the estimator's latency (p50 / p95 wall ms per image), with the command that
produced the bundle (from its provenance). The search's cost depends on the scene (proposals x candidates), so
its timing comes from these real held-out frames, not from the synthetic speed frames. ``--tracking`` adds a
third mode: each held-out trajectory played as a sequence in its frame order through ``PoseTracker`` (causal:
the full search on the first frame, on schedule and when an object is lost; the tracked poses moved by the
camera poses in between), with the share of frames that ran the full search.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import trimesh
import yaml

from selfpose_core.config_io import dataclass_from_mapping, set_dotted
from selfpose_core.data.bop import BopDataset
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.estimate.tabletop_search import SearchConfig
from selfpose_core.estimate.tracking import PoseTracker
from selfpose_core.data.crops import amodal_box
from selfpose_core.eval.breakdown import breakdown_table, confidence_precision
from selfpose_core.eval.evaluate import evaluate, evaluate_model, evaluate_sequences
from selfpose_core.mesh.loading import object_model_from_arrays, save_mesh
from selfpose_core.mesh.objects_config import load_objects_config, write_objects_config
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.pretrain import PretrainConfig
from selfpose_core.types import CameraIntrinsics, Frame
from selfpose_ros.parameters import ESTIMATOR_NODE, NODE_PARAMETERS, defaults

NODE_SCORE_THRESHOLD = defaults(NODE_PARAMETERS[ESTIMATOR_NODE])["score_threshold"]

GOALS = {1: 20.0, 3: 15.0}


def _objects(folder: Path, n: int) -> Path:
    entries = []
    for i in range(n):
        mesh = trimesh.creation.cylinder(0.03 + 0.01 * i, 0.1, sections=64) if i % 2 else trimesh.creation.box(
            (0.08, 0.05 + 0.01 * i, 0.15))
        m = object_model_from_arrays(f"obj{i}", np.asarray(mesh.vertices), np.asarray(mesh.faces), obj_id=i + 1)
        save_mesh(m, folder / f"obj{i}.ply")
        entries.append({"name": f"obj{i}", "mesh": f"obj{i}.ply", "obj_id": i + 1})
    return write_objects_config(folder / "objects.yaml", entries)


def _bundle(folder: Path, objects_yaml: Path, kind: str) -> Path:
    cfg = PretrainConfig()
    objects = load_objects_config(objects_yaml)
    detector = cfg.detector
    detector.score_threshold = 0.0
    spec = BundleSpec([BundleObject.from_model(m) for m in objects], "../objects.yaml",
                      PoseNetSpec(kind, cfg.crop_size, cfg.pose_backbone, 9), detector, (640, 480))
    torch.manual_seed(0)
    return ModelBundle.create(spec).save(folder / f"bundle_{kind}")


def speed(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    K = CameraIntrinsics(570.0, 570.0, 319.5, 239.5, 640, 480)
    frames = []
    for _ in range(8):
        img = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
        depth = np.full((480, 640), 0.8, np.float32) + rng.normal(0, 0.01, (480, 640)).astype(np.float32)
        frames.append(Frame(img, K, depth=depth if args.depth else None))
    print(f"speed: {args.frames} frames of 640x480, torch threads {args.threads}, depth refinement "
          f"{'on' if args.depth else 'off'}; latency of PoseEstimator.estimate(frame)")
    print("(cpu ms = process CPU time per frame, all threads: on a machine shared with other jobs the wall-clock\n"
          " figures are inflated, and 1000 / cpu ms is what one otherwise idle core would reach)")
    print(f"{'pose net':<15} {'objects':>7} {'frames/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'cpu ms':>7} "
          f"{'goal fps':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 3):
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            objects_yaml = _objects(folder, n)
            for kind in ("keypoint", "correspondence"):
                est = PoseEstimator(_bundle(folder, objects_yaml, kind), config=EstimatorConfig(
                    refine_depth=args.depth, return_masks=True))
                for f in frames[:3]:
                    est.estimate(f)  # warm-up
                lat, found = [], 0
                cpu0 = time.process_time()
                for i in range(args.frames):
                    t0 = time.perf_counter()
                    found += len(est.estimate(frames[i % len(frames)]))
                    lat.append(time.perf_counter() - t0)
                cpu_ms = (time.process_time() - cpu0) / args.frames * 1000
                lat_ms = np.array(lat) * 1000
                fps = 1000.0 / lat_ms.mean()
                print(f"{kind:<15} {n:>7d} {fps:9.1f} {np.percentile(lat_ms, 50):8.1f} "
                      f"{np.percentile(lat_ms, 95):8.1f} {cpu_ms:7.1f} {GOALS[n]:9.0f} {fps / GOALS[n]:6.2f}"
                      f"   ({found / args.frames:.1f} poses/frame)")


def _image_keys(dataset: BopDataset, max_images: int | None) -> list[tuple[int, int]]:
    keys = [(s, i) for s in dataset.scene_ids for i in dataset.image_ids(s)]
    if max_images is not None and max_images < len(keys):
        keys = [keys[i] for i in np.linspace(0, len(keys) - 1, max_images).round().astype(int)]
    return keys


def gt_box_result(est: PoseEstimator, dataset: BopDataset, max_images: int | None, min_visib: float = 0.1):
    """Pose networks alone: the detector is replaced by the true amodal boxes of the visible objects."""
    ids = [o.obj_id for o in est.spec.objects]
    keys = _image_keys(dataset, max_images)
    estimates = {}
    for s, i in keys:
        sample = dataset.sample(s, i, load_masks=False)
        scores, boxes = np.zeros(len(ids)), np.zeros((len(ids), 4))
        for g in sample.gt:
            if g.obj_id in ids and (g.visib_fract < 0 or g.visib_fract >= min_visib):
                k = ids.index(g.obj_id)
                scores[k] = 1.0
                boxes[k] = amodal_box(sample.frame.K.K, g.T_cam_obj, est.models[k].vertices)
        est.detect = lambda rgb, sc=scores, bx=boxes: (sc, bx)
        estimates[(s, i)] = est.estimate(sample.frame)
    del est.detect
    return evaluate(estimates, dataset, images=keys, min_visib_fract=min_visib)


def _cpu_timed(estimate, total: list[float]):
    """``estimate`` adding the process CPU time of each call to ``total[0]``."""
    def timed(frame):
        start = time.process_time()
        try:
            return estimate(frame)
        finally:
            total[0] += time.process_time() - start
    return timed


def accuracy(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    raw: dict = {}
    for item in args.search:
        key, _, value = item.partition("=")
        set_dotted(raw, key.strip(), yaml.safe_load(value))
    search = dataclass_from_mapping(SearchConfig(), raw, "--search")
    dataset = BopDataset(args.accuracy, "test")
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        modes = [("RGB-D", True), ("RGB only", False)] + ([("RGB-D tracked", True)] if args.tracking else [])
        for mode, use_depth in modes:
            est = PoseEstimator(Path(path), config=EstimatorConfig(use_depth=use_depth, search=search))
            cpu = [0.0]  # process CPU seconds inside the estimate calls: comparable on a shared machine
            if mode == "RGB-D tracked":
                tracker = PoseTracker(est)
                tracker.estimate = _cpu_timed(tracker.estimate, cpu)
                result, _ = evaluate_sequences(tracker, dataset, progress=False)
                searched = tracker.searches
            else:
                est.estimate = _cpu_timed(est.estimate, cpu)
                result, _ = evaluate_model(est, dataset, progress=False, max_images=args.max_images)
            prov = est.spec.provenance
            appearance = "appearance model from the drive" if est.bundle.appearance is not None and \
                search.use_appearance else "no appearance model used"
            print(f"\n== {name} [{mode}]: {path} ({est.spec.pose_net.kind}; {prov.get('supervision', '?')}; "
                  f"{appearance})")
            print(f"   trained by: {prov.get('command', '?')}")
            print(result.table())
            by_traj = ", ".join(f"scene {s}: {100 * v:.1f} %" for s, v in result.recall_by_scene().items())
            print(f"   AD{{D|I}} per trajectory: {by_traj}")
            lat = np.array(list(result.image_times_s.values())) * 1000
            print(f"   estimator latency: p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms "
                  f"per 640x480 image ({args.threads} torch thread(s)); CPU {1000 * cpu[0] / len(lat):.0f} ms per image")
            if mode == "RGB-D tracked":
                print(f"   full search on {searched} of {len(lat)} frames")
            precision, n = confidence_precision(result, NODE_SCORE_THRESHOLD)
            print(f"   published confidence: {100 * precision:.1f} % of the {n} estimates with score >= "
                  f"{NODE_SCORE_THRESHOLD} (the estimator node's default score_threshold) are correct")
            print(breakdown_table(result))
        if args.gt_boxes:
            print("   pose network alone (true amodal boxes instead of the detector, RGB only):")
            print(gt_box_result(est, dataset, args.max_images).table())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench estimator", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenCV threads (default 1: faster than 2 for these small networks on 2 cores)")
    p.add_argument("--frames", type=int, default=100, help="timed frames per configuration (default 100)")
    p.add_argument("--depth", action="store_true", help="include depth refinement (ICP) in the timing")
    p.add_argument("--accuracy", type=Path, help="BOP dataset root (DIR/bop of `selfpose simulate`): evaluate --models")
    p.add_argument("--models", default="", help="name=bundle,... to evaluate with --accuracy")
    p.add_argument("--max-images", type=int, default=None, help="with --accuracy: at most this many images")
    p.add_argument("--search", action="append", default=[], metavar="KEY=VALUE",
                   help="with --accuracy: a table-top search setting (SearchConfig, e.g. align_iterations=0 or "
                        "proposals.stride=3; repeatable) for ablations")
    p.add_argument("--tracking", action="store_true",
                   help="with --accuracy: also play each held-out trajectory as a sequence through PoseTracker")
    p.add_argument("--gt-boxes", action="store_true", help="with --accuracy: also score the pose network given the "
                                                            "true boxes (separates detection from pose errors)")
    args = p.parse_args(argv)
    if args.accuracy is not None:
        if not args.models:
            p.error("--accuracy needs --models name=bundle,...")
        accuracy(args)
    else:
        speed(args)
    return 0
