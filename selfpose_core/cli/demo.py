"""`selfpose demo --out DIR`: the whole pipeline on the embedded scene, on a fresh machine, in one command.

simulate (small SMOT-like scene) -> pretrain on synthetic renders of the CAD models -> adaptation stages on the
unlabelled training recording -> estimate on the held-out trajectories, with depth (single frames, and each trajectory
as a sequence through the tracker) and from RGB alone -> evaluate against their ground truth.
Each stage writes into DIR and is skipped when its output is already complete (so an interrupted demo continues).
Budget: about 30 minutes on 2 CPU cores (simulation ~3 min, pre-training ~8 min, adaptation ~15 min, evaluation
~1 min).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import yaml

from selfpose_core.cli.adapt import demo_adapt
from selfpose_core.cli.pretrain import camera_from_recording
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.sim.catalog import TARGETS
from selfpose_core.data.sim.generate import DIFFICULTIES, SimConfig, simulate
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.estimate.tracking import PoseTracker
from selfpose_core.eval.breakdown import breakdown_table
from selfpose_core.eval.evaluate import EvalResult, evaluate_model, evaluate_sequences
from selfpose_core.eval.report import write_report
from selfpose_core.eval.results import write_results
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.models.pretrain import load_pretrain_config, pretrain

log = logging.getLogger(__name__)

DEMO_PRETRAIN_STEPS = 1500  # ~10 minutes on 2 idle CPU cores
MODES = {"RGB-D": "rgbd", "RGB-D tracked": "tracked", "RGB only": "rgb"}  # evaluation modes -> folder suffix


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate -> pretrain -> adapt -> estimate -> eval on the embedded scene "
                                    "(one command, ~30 min on 2 CPU cores)")
    p.add_argument("--out", type=Path, required=True, help="output directory (re-running continues where it stopped)")
    p.add_argument("--seed", type=int, default=0, help="scene and training seed (default 0)")
    p.add_argument("--pose-net", choices=("keypoint", "correspondence"), default="correspondence",
                   help="pose network (default correspondence: the better upper bound, docs/estimator.md)")
    p.add_argument("--difficulty", choices=DIFFICULTIES, default="normal",
                   help="embedded scene: normal or hard (docs/demo_scene.md; default normal)")
    p.add_argument("--frames", type=int, default=96, help="frames of the training loop (default 96)")
    p.add_argument("--test-frames", type=int, default=20, help="frames per held-out trajectory (default 20)")
    p.add_argument("--pretrain-steps", type=int, default=DEMO_PRETRAIN_STEPS,
                   help=f"synthetic pre-training steps (default {DEMO_PRETRAIN_STEPS})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _banner(step: int, total: int, text: str) -> None:
    print(f"\n[{step}/{total}] {text}", flush=True)


def stage_simulate(out: Path, args: argparse.Namespace) -> Path:
    """The embedded scene in ``out/sim`` (kept when a previous run completed it)."""
    sim = out / "sim"
    if (sim / "scene.yaml").is_file() and (sim / "bop" / "test").is_dir():
        made = yaml.safe_load((sim / "scene.yaml").read_text()).get("difficulty", "normal")
        if made != args.difficulty:
            raise ConfigError(f"{sim} holds a {made} scene, not {args.difficulty}: use another --out")
        print(f"  reusing {sim}")
        return sim
    config = SimConfig(seed=args.seed, difficulty=args.difficulty, objects=list(TARGETS), frames=args.frames,
                       test_frames=args.test_frames)
    summary = simulate(sim, config, force=True, progress=not args.no_progress)
    print(f"  {sum(t['frames'] for t in summary['trajectories'])} frames in {summary['seconds']:.0f} s -> {sim}")
    return sim


def stage_pretrain(out: Path, sim: Path, args: argparse.Namespace) -> Path:
    """Synthetic-only pre-training -> ``out/model_pretrained`` (the lower bound)."""
    model = out / "model_pretrained"
    if (model / "bundle.yaml").is_file() and (model / "weights.pt").is_file():
        print(f"  reusing {model}")
        return model
    # Tabletop view prior: the objects stand on a surface (objects.yaml meshes are z up), the robot's camera
    # sees them from above or slightly below the horizon with little roll (NOL renders the upper hemisphere too).
    overrides = {"pose_net": args.pose_net, "trainer.steps": args.pretrain_steps, "trainer.seed": args.seed,
                 "trainer.progress": not args.no_progress, "synthetic.elevation_deg": [-10.0, 90.0],
                 "synthetic.roll_deg": 25.0}
    config = load_pretrain_config(None, overrides)
    camera = camera_from_recording(sim / "recording")
    objects = load_objects_config(sim / "objects.yaml")
    resume = (model / "train" / "checkpoint.pt").is_file()
    pretrain(objects, camera, model, config, objects_config=sim / "objects.yaml", resume=resume,
             provenance={"command": f"selfpose demo --out {out}", "supervision": "synthetic only"})
    return model


def stage_evaluate(out: Path, sim: Path, model: Path, name: str, args: argparse.Namespace,
                   mode: str = "RGB-D") -> EvalResult:
    """Estimate on the held-out trajectories (BOP split ``test``) and score against their ground truth, in one of
    :data:`MODES`: with depth (the table-top search), with depth played as sequences through the tracker (camera
    poses of the trajectories), or from RGB alone."""
    dataset = BopDataset(sim / "bop", "test")
    estimator = PoseEstimator(model, config=EstimatorConfig(use_depth=mode != "RGB only"))
    if mode == "RGB-D tracked":
        result, estimates = evaluate_sequences(PoseTracker(estimator), dataset, progress=not args.no_progress)
    else:
        result, estimates = evaluate_model(estimator, dataset, progress=not args.no_progress)
    name = f"{name}_{MODES[mode]}"
    folder = out / f"eval_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder / "results.csv", estimates, objects=dataset.objects)
    keys = sorted(estimates)[:: max(1, len(estimates) // 4)][:4]
    overlays = [(dataset.sample(s, i, load_depth=False, load_masks=False), estimates[(s, i)]) for s, i in keys]
    report = write_report(result, folder, overlays, title=f"selfpose demo: {name}")
    (folder / "summary.json").write_text(json.dumps(result.to_dict(), indent=1))
    print(result.table())
    print(breakdown_table(result))
    print(f"  report: {report}")
    return result


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 5
    _banner(1, total, "simulate the embedded scene (training loop + held-out trajectories)")
    sim = stage_simulate(out, args)
    _banner(2, total, f"pre-train on synthetic renders of the CAD models ({args.pretrain_steps} steps)")
    model = stage_pretrain(out, sim, args)
    _banner(3, total, "adapt to the unlabelled training recording (multiview consensus + pseudo-label fine-tuning)")
    adapted = demo_adapt(out, sim, model, args.seed, not args.no_progress)
    _banner(4, total, "estimate on the held-out trajectories and evaluate, RGB-D, RGB-D tracked and RGB only: LOWER BOUND "
                      "(synthetic only), ADAPTED")
    results = {}
    for mode in MODES:
        print(f"\n  -- {mode}: lower bound")
        results[(mode, "lower")] = stage_evaluate(out, sim, model, "pretrained", args, mode)
        print(f"\n  -- {mode}: adapted")
        results[(mode, "adapted")] = stage_evaluate(out, sim, adapted, "adapted", args, mode)
    bundle = ModelBundle.load(model)
    bundle.spec.metrics["held_out_lower_bound"] = dict(results[("RGB-D", "lower")].to_dict()["mean"])
    bundle.spec.metrics["held_out_lower_bound_rgb"] = dict(results[("RGB only", "lower")].to_dict()["mean"])
    bundle.save(model)
    _banner(5, total, "summary: AD{D|I}@0.1d on the held-out trajectories (mean over objects)")
    print(f"  {'':<14}{'lower bound (synthetic only)':>30}{'adapted (no labels)':>22}{'detected':>12}")
    for mode in MODES:
        lo, ad = results[(mode, "lower")], results[(mode, "adapted")]
        ms = 1000.0 * (ad.time_per_image_s or 0.0)
        print(f"  {mode:<14}{100 * lo.mean.get('ad_di_recall', 0):>29.1f}%{100 * ad.mean.get('ad_di_recall', 0):>21.1f}%"
              f"{100 * ad.mean.get('detection_rate', 0):>11.1f}%   ({ms:.0f} ms per image adapted)")
    print(f"  report {adapted / 'report.html'}; total time {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return 0
