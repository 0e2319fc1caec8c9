"""`selfpose pretrain --objects O --out M`: train the detector + pose network on synthetic renders of the CAD models
(the lower bound every adaptation stage is measured against) and write a model bundle.

With ``--real-bop DIR --real-fraction F`` real frames with ground-truth poses are mixed in: that is the supervised
upper bound of the experiments, never part of the label-free pipeline.

``--out`` holding a bundle or a training checkpoint is refused unless ``--overwrite`` or ``--resume``; while the run
writes there it holds ``OUT/.selfpose.lock`` (cli/output_dir.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from selfpose_core.cli.output_dir import OutputLock, check_model_output, check_run_flags
from selfpose_core.cli.recording_options import add_topic_options, topics_from_args
from selfpose_core.config_io import parse_overrides
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording, RecordingTopics
from selfpose_core.errors import ConfigError, RecordingError
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.pretrain import load_pretrain_config, pretrain
from selfpose_core.types import CameraIntrinsics

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train the detector and pose network on synthetic renders of the CAD "
                                        "models (lower bound) and write a model bundle")
    p.add_argument("--objects", type=Path, required=True, help="objects config (objects.yaml)")
    p.add_argument("--out", type=Path, required=True, help="model bundle directory to write")
    p.add_argument("--config", type=Path, help="pretrain YAML (default: built-in defaults, see config/pretrain.yaml)")
    p.add_argument("--pose-net", choices=("keypoint", "correspondence"), help="pose network (overrides the config)")
    p.add_argument("--steps", type=int, help="optimiser steps (overrides trainer.steps)")
    p.add_argument("--seed", type=int, help="random seed (overrides trainer.seed)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--bag", type=Path, help="take the camera intrinsics from this recording's camera_info")
    cam.add_argument("--camera", help="camera intrinsics 'fx,fy,cx,cy,width,height' (default 570,570,319.5,239.5,640,480)")
    p.add_argument("--real-bop", type=Path, help="UPPER BOUND ONLY: BOP dataset with true poses to mix in")
    p.add_argument("--real-split", default="train_loop", help="split of --real-bop (default: train_loop)")
    p.add_argument("--real-fraction", type=float, default=0.5, help="share of real samples with --real-bop (0.5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set crop_batch=16 --set trainer.lr=1e-3")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (overrides workers)")
    p.add_argument("--threads", type=int, help="torch threads of the training process")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the bundle and checkpoint that --out holds")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_topic_options(p)  # which camera_info of --bag
    p.set_defaults(func=run)


def parse_camera(text: str) -> CameraIntrinsics:
    """``'fx,fy,cx,cy,width,height'`` -> CameraIntrinsics."""
    parts = [v for v in text.replace(" ", ",").split(",") if v]
    if len(parts) != 6:
        raise ConfigError(f"--camera needs 6 values fx,fy,cx,cy,width,height, got {text!r}")
    try:
        fx, fy, cx, cy = (float(v) for v in parts[:4])
        return CameraIntrinsics(fx, fy, cx, cy, int(parts[4]), int(parts[5]))
    except ValueError as exc:
        raise ConfigError(f"--camera {text!r}: {exc}") from exc


def camera_from_recording(path: Path, topics: RecordingTopics | None = None) -> CameraIntrinsics:
    """Intrinsics of the first frame of a recording (topics: selfpose's unless given)."""
    for frame in Recording(path, topics, require_pose=False):
        return frame.K
    raise RecordingError(f"{path}: the recording holds no image with camera_info")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = parse_overrides(args.set)
    if args.pose_net:
        out["pose_net"] = args.pose_net
    if args.steps is not None:
        out["trainer.steps"] = args.steps
    if args.seed is not None:
        out["trainer.seed"] = args.seed
    if args.workers is not None:
        out["workers"] = args.workers
    if args.no_progress:
        out["trainer.progress"] = False
    if args.real_bop is not None:
        out["real_fraction"] = args.real_fraction
    return out


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "the training")
    checkpoint = args.out / "train" / "checkpoint.pt"
    check_model_output(args.out, overwrite=args.overwrite, resume=args.resume, resumable=checkpoint)
    with OutputLock(args.out):
        check_model_output(args.out, overwrite=args.overwrite, resume=args.resume, resumable=checkpoint)
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    config = load_pretrain_config(args.config, _overrides(args))
    if args.threads:
        torch.set_num_threads(args.threads)
    objects = load_objects_config(args.objects)
    camera = (camera_from_recording(args.bag, topics_from_args(args)) if args.bag else
              parse_camera(args.camera or "570,570,319.5,239.5,640,480"))
    real = BopDataset(args.real_bop, args.real_split) if args.real_bop is not None else None
    provenance = {"command": "selfpose " + " ".join(sys.argv[1:]) if sys.argv else "selfpose pretrain",
                  "objects_config": str(args.objects.resolve()), "camera": [camera.fx, camera.fy, camera.cx,
                                                                             camera.cy, camera.width, camera.height],
                  "supervision": "synthetic only" if real is None else f"synthetic + true poses of {args.real_bop}"}
    bundle = pretrain(objects, camera, args.out, config, objects_config=args.objects, real=real,
                      resume=args.resume, provenance=provenance, device=args.device)
    losses = bundle.spec.metrics.get("final_losses", {})
    print(f"wrote model bundle {args.out} ({config.pose_net} pose network, {len(objects)} objects, "
          f"{config.trainer.steps} steps, final loss {losses.get('loss', float('nan')):.4f})")
    return 0
