"""Adaptation benchmark: ADD(-S)@0.1d on the embedded scene's held-out trajectories for the lower bound (synthetic
pre-training only), after each adaptation stage in turn, and the upper bound (the same pre-training with the
training loop's ground-truth poses mixed in), plus the consensus pose error per object.

    selfpose simulate --out SIM
    selfpose pretrain --objects SIM/objects.yaml --bag SIM/recording --out M_pre
    selfpose bench adapt --sim SIM --model M_pre [--upper M_up] [--config config/adapt.yaml] [--set KEY=VALUE]

Without ``--upper`` the upper bound is trained here with the pre-training config recorded in M_pre's provenance
(same steps), ``real_fraction`` 0.5 of real crops at the ground-truth poses of split ``train_loop``. Figures: the
recall per row, the share of the lower-to-upper gap each row closes (goal: all stages >= 70 %, absolute >= 80 %)
and the consensus error (goal <= 1 cm / 2 deg per object).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch

from selfpose_core.adapt.config import load_adapt_config
from selfpose_core.adapt.pipeline import STAGES, run_pipeline
from selfpose_core.cli.adapt import DEFAULT_CONFIG, make_evaluator, parse_overrides
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.models.pretrain import PretrainConfig, _convert, pretrain

log = logging.getLogger(__name__)

KEY = "ad_di_recall"  # ADD for asymmetric, ADD-S for symmetric objects, at 0.1 x diameter, mean over objects


def _recall(metrics: dict[str, Any]) -> float:
    v = (metrics.get("mean") or {}).get(KEY)
    return float("nan") if v is None else float(v)


def train_upper_bound(sim: Path, model: Path, out: Path, steps: int | None) -> Path:
    """Pre-train like ``model`` (its provenance config) with the training loop's ground truth mixed in."""
    if (out / "bundle.yaml").is_file():
        return out
    pre = ModelBundle.load(model)
    stage = next((s for s in pre.spec.provenance.get("stages", []) if str(s.get("stage", "")).startswith("pretrain")),
                 None)
    raw = dict(stage["config"]) if stage and "config" in stage else {}
    cfg = _convert(PretrainConfig(), raw, f"{model}/bundle.yaml provenance")
    cfg.real_fraction = 0.5
    if steps:
        cfg.trainer.steps = steps
    camera = Recording(sim / "recording").intrinsics(0)
    objects = load_objects_config(sim / "objects.yaml")
    resume = (out / "train" / "checkpoint.pt").is_file()
    pretrain(objects, camera, out, cfg, objects_config=sim / "objects.yaml", real=BopDataset(sim / "bop", "train_loop"),
             resume=resume, provenance={"command": "selfpose bench adapt (upper bound)", "supervision": "ground truth"})
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", type=Path, required=True, help="output of selfpose simulate")
    p.add_argument("--model", type=Path, required=True, help="synthetic-only pre-trained bundle (lower bound)")
    p.add_argument("--upper", type=Path, default=None, help="GT-supervised bundle (default: trained here)")
    p.add_argument("--upper-steps", type=int, default=None, help="steps of the upper bound (default: as --model)")
    p.add_argument("--out", type=Path, default=None, help="work directory (default SIM/bench_adapt)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-images", type=int, default=None, help="held-out images per evaluation (0 = all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or args.sim / "bench_adapt"
    overrides = parse_overrides(args.set)
    if args.max_images is not None:
        overrides["eval.max_images"] = args.max_images
    config = load_adapt_config(args.config, STAGES, overrides)
    objects_yaml = args.sim / "objects.yaml"
    evaluator = make_evaluator(args.sim / "bop", objects_yaml, config, progress=not args.no_progress)
    with Recording(args.sim / "recording") as rec:
        result = run_pipeline(config, recording=rec, objects=load_objects_config(objects_yaml),
                              objects_config=objects_yaml, model=args.model, out=out / "adapted",
                              resume=(out / "adapted" / "work" / "state.yaml").is_file(), evaluator=evaluator,
                              progress=not args.no_progress, provenance={"command": "selfpose bench adapt"})
    upper_path = args.upper or train_upper_bound(args.sim, args.model, out / "upper", args.upper_steps)
    upper = evaluator(ModelBundle.load(upper_path), "upper", None)
    lower = _recall(result.results["pretrained"].metrics)
    up = _recall(upper)
    rows = [("lower bound (synthetic only)", lower)]
    rows += [(f"+ {name}", _recall(result.results[name].metrics)) for name in config.stages]
    rows.append(("upper bound (GT-supervised)", up))
    print(f"\nADD(-S)@0.1d on the held-out trajectories ({args.sim}/bop split {config.eval.split}), mean over objects")
    print(f"{'model':34s} {'ADD(-S)':>8s} {'gap closed':>11s}")
    for name, v in rows:
        gap = (v - lower) / (up - lower) if math.isfinite(up - lower) and up - lower > 1e-9 else float("nan")
        print(f"{name:34s} {100 * v:7.1f}% {100 * gap:10.1f}%")
    final = rows[-2][1]
    gap = (final - lower) / (up - lower) if up - lower > 1e-9 else float("nan")
    print(f"all stages: gap closed {100 * gap:.1f}% (goal >= 70%), absolute {100 * final:.1f}% (goal >= 80%)")
    cons = result.results.get("multiview_consensus")
    if cons is not None and cons.metrics.get("consensus"):
        print("\nconsensus pose error per object (goal <= 1 cm / 2 deg)")
        print(f"{'object':16s} {'world t[cm]':>11s} {'world r[deg]':>12s} {'frame t[cm]':>12s} {'frame r[deg]':>12s}")
        for name, e in cons.metrics["consensus"].items():
            print(f"{name:16s} {e.get('world_t_cm', float('nan')):11.2f} {e.get('world_r_deg', float('nan')):12.2f} "
                  f"{e.get('frame_t_cm_median', float('nan')):12.2f} {e.get('frame_r_deg_median', float('nan')):12.2f}")
    print(f"\nreport: {result.report_path}")
    return 0
