"""`selfpose adapt --bag B --objects O --model M_pre --out M [--config C] [--resume] [--eval-gt BOP]`.

Runs the adaptation stages (the defaults of selfpose_core/adapt/config.py, which config/adapt.yaml documents; a
``--config`` file or ``--set`` overrides them) on an unlabelled recording, checkpointing each stage (``--resume`` continues
after an interruption, even kill -9), and writes the adapted bundle plus ``report.html`` to ``--out``. Under
``torchrun --nproc_per_node=N`` every process runs this same command; they form a process group (gloo on CPU, nccl
on CUDA) and the stages train with DistributedDataParallel. ``--eval-gt`` (a BOP directory with ground truth,
e.g. the simulator's DIR/bop) adds held-out accuracy after each stage and the consensus error per object; only
this module's evaluator reads it, never a stage.

``--out`` is never the input model; one that already holds a bundle is refused unless ``--overwrite`` (which also
discards an earlier run's work/) or ``--resume`` (of the run that wrote it). While a run writes to ``--out`` it holds
``OUT/.selfpose.lock`` (see cli/output_dir.py): a second run into the same directory is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from selfpose_core.adapt.config import AdaptConfig, load_adapt_config
from selfpose_core.adapt.context import DistInfo
from selfpose_core.adapt.pipeline import STAGES, run_pipeline
from selfpose_core.cli.output_dir import OutputLock, check_model_output, check_run_flags
from selfpose_core.cli.recording_options import add_topic_options, topics_from_args
from selfpose_core.config_io import parse_overrides
from selfpose_core.data.recording import Recording
from selfpose_core.eval.adaptation import make_evaluator
from selfpose_core.mesh.objects_config import load_objects_config

log = logging.getLogger(__name__)

# `selfpose demo`'s reduced configuration (about 10 minutes on 2 CPU cores for the embedded scene)
DEMO_OVERRIDES: dict[str, Any] = {"stages": ["multiview_consensus", "pseudo_label_finetune"]}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="adapt a pre-trained model to an unlabelled recording (self-supervised stages)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", type=Path, required=True, help="rosbag2 recording (frames + camera poses in TF)")
    p.add_argument("--objects", type=Path, required=True, help="objects.yaml with the untextured meshes")
    p.add_argument("--model", type=Path, required=True, help="pre-trained model bundle (e.g. from selfpose pretrain)")
    p.add_argument("--out", type=Path, required=True, help="output bundle directory (with report.html and work/)")
    p.add_argument("--config", type=Path, default=None,
                   help="adapt config overriding the built-in defaults (config/adapt.yaml lists them)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model bundle (and the earlier run's work/) that --out holds")
    p.add_argument("--eval-gt", type=Path, default=None,
                   help="BOP directory with ground truth for held-out evaluation after each stage (never used "
                        "for adaptation)")
    p.add_argument("--eval-split", default=None,
                   help="held-out split of --eval-gt that is scored (default: the config's eval.split)")
    p.add_argument("--eval-recording-split", default="train_loop",
                   help="split of --eval-gt holding the recording's own ground truth (im_id = frame index), for the "
                        "consensus and camera errors (default train_loop)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. multiview_consensus.refine_iterations=20 or "
                        "stages=[multiview_consensus] (YAML values; repeatable)")
    p.add_argument("--device", default=None, help="torch device (default: the config's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_topic_options(p)


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); single-process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size())


def demo_adapt(out: Path, sim: Path, model: Path, seed: int = 0, progress: bool = True) -> Path:
    """The adapt step of `selfpose demo`: DEMO_OVERRIDES on the simulator output ``sim`` -> ``out/model_adapted``
    (reused when complete, resumed when interrupted)."""
    adapted = out / "model_adapted"
    if (adapted / "bundle.yaml").is_file() and (adapted / "report.html").is_file():
        print(f"  reusing {adapted}")
        return adapted
    config = load_adapt_config(None, STAGES, {**DEMO_OVERRIDES, "seed": seed})
    objects_yaml = sim / "objects.yaml"
    with Recording(sim / "recording") as recording:
        run_pipeline(config, recording=recording, objects=load_objects_config(objects_yaml),
                     objects_config=objects_yaml, model=model, out=adapted,
                     resume=(adapted / "work" / "state.yaml").is_file(), progress=progress,
                     provenance={"command": f"selfpose demo --out {out}"})
    return adapted


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "the run")
    state_file = args.out / "work" / "state.yaml"
    check_model_output(args.out, overwrite=args.overwrite, model=args.model, resume=args.resume,
                       resumable=state_file)
    # under torchrun every process runs this command: rank 0 holds the lock for all of them
    lock = OutputLock(args.out) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        check_model_output(args.out, overwrite=args.overwrite, model=args.model, resume=args.resume,
                           resumable=state_file)  # again: a run may have finished while this one started
        if args.overwrite and state_file.is_file() and isinstance(lock, OutputLock):
            log.warning("--overwrite: removing the earlier run's %s", args.out / "work")
            shutil.rmtree(args.out / "work")
        return _run_locked(args)


def adapt_config(args: argparse.Namespace) -> AdaptConfig:
    """The run's config: the built-in defaults, overridden by ``--config``, ``--set`` and ``--device``."""
    config = load_adapt_config(args.config, STAGES, parse_overrides(args.set))
    if args.device:
        config.device = args.device
    return config


def _run_locked(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = adapt_config(args)
    dist = init_distributed(config.device)
    objects = load_objects_config(args.objects)
    recording = Recording(args.bag, topics_from_args(args))
    try:
        if args.eval_split:
            config.eval.split = args.eval_split
        evaluator = make_evaluator(args.eval_gt, args.objects, config, progress=False,
                                   train_split=args.eval_recording_split) \
            if args.eval_gt is not None and dist.is_main else None
        result = run_pipeline(config, recording=recording, objects=objects, objects_config=args.objects,
                              model=args.model, out=args.out, resume=args.resume, evaluator=evaluator, dist=dist,
                              progress=not args.no_progress,
                              provenance={"command": "selfpose adapt", "bag": str(args.bag)})
    finally:
        recording.close()
        if dist.enabled:
            torch.distributed.destroy_process_group()
    if dist.is_main:
        print(f"adapted model: {result.bundle_path}")
        if result.report_path is not None:
            print(f"report: {result.report_path}")
        for name, r in result.results.items():
            mean = r.metrics.get("mean") or {}
            if mean:
                print(f"  {name:24s} AD{{D|I}}@0.1d {100 * (mean.get('ad_di_recall') or 0):5.1f}%")
    return 0
