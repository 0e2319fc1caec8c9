"""Adaptation benchmark: ADD(-S)@0.1d on the embedded scene's held-out trajectories for the lower bound (synthetic
pre-training only), after each adaptation stage in turn, and the upper bound (the same pre-training with the
training loop's ground-truth poses mixed in), plus the consensus pose error per object.

    selfpose simulate --out SIM
    selfpose pretrain --objects SIM/objects.yaml --bag SIM/recording --out M_pre
    selfpose bench adapt --sim SIM --model M_pre [--upper M_up] [--config config/adapt.yaml] [--set KEY=VALUE]
    selfpose bench adapt --sim SIM --model M_pre --consensus-noise 0.01,3,0.2   # the consensus alone

Without ``--upper`` the upper bound is trained here with the pre-training config recorded in M_pre's provenance
(same steps), ``real_fraction`` 0.5 of real crops at the ground-truth poses of split ``train_loop``. Figures: the
recall per row, the share of the lower-to-upper gap each row closes (goal: all stages >= 70 %, absolute >= 80 %)
and the consensus error (goal <= 1 cm / 2 deg per object).

``--consensus-noise M,DEG,OUTLIERS`` studies multiview consensus alone, independent of how good M_pre is: the
per-frame estimates are the training loop's true poses with Gaussian noise (M metres, DEG degrees per axis) and a
share OUTLIERS of gross errors, seen through the recording's drifting odometry; with the scene registration off, it
prints the consensus error for each drift handling (``drift: depth``, ``correct``, ``weight``).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch
import yaml

import numpy as np

from selfpose_core.adapt.config import AdaptConfig, load_adapt_config
from selfpose_core.adapt.consensus import FrameEstimates, MultiviewConsensus
from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.pipeline import STAGES, run_pipeline
from selfpose_core.config_io import parse_overrides
from selfpose_core.eval.adaptation import camera_errors, consensus_errors, make_evaluator
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.geometry.se3 import make_T, so3_exp
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.config_io import dataclass_from_mapping
from selfpose_core.models.pretrain import PretrainConfig, pretrain

log = logging.getLogger(__name__)

KEY = "ad_di_recall"  # ADD for asymmetric, ADD-S for symmetric objects, at 0.1 x diameter, mean over objects


def _recall(metrics: dict[str, Any]) -> float:
    v = (metrics.get("mean") or {}).get(KEY)
    return float("nan") if v is None else float(v)


def _print_by_trajectory(sim: Path, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """ADD(-S)@0.1d per held-out trajectory (one BOP test scene each; names from SIM/scene.yaml)."""
    names, loop = {}, ""
    scene_yaml = sim / "scene.yaml"
    for t in yaml.safe_load(scene_yaml.read_text()).get("trajectories", []) if scene_yaml.is_file() else []:
        elevation = f"{t['elevation_deg'][0]:.0f}-{t['elevation_deg'][1]:.0f} deg"
        if t.get("bop", {}).get("split") == "test":
            names[int(t["bop"]["scene_id"])] = f"{t['name']} ({elevation})"
        else:
            loop = f"; the recording saw {elevation}"
    scenes = sorted({int(k) for _, m in rows for k in (m.get("ad_di_recall_by_scene") or {})})
    if not scenes:
        return
    head = [names.get(sc, f"scene {sc}") for sc in scenes]
    print(f"\nper held-out trajectory (camera elevation above the table{loop})")
    print(f"{'model':34s}" + "".join(f"{h:>22s}" for h in head))
    for name, m in rows:
        by = {int(k): v for k, v in (m.get("ad_di_recall_by_scene") or {}).items()}
        print(f"{name:34s}" + "".join(f"{100 * by[sc]:21.1f}%" if sc in by else f"{'-':>22s}" for sc in scenes))


def train_upper_bound(sim: Path, model: Path, out: Path, steps: int | None) -> Path:
    """Pre-train like ``model`` (its provenance config) with the training loop's ground truth mixed in."""
    if (out / "bundle.yaml").is_file():
        return out
    pre = ModelBundle.load(model)
    stage = next((s for s in pre.spec.provenance.get("stages", []) if str(s.get("stage", "")).startswith("pretrain")),
                 None)
    raw = dict(stage["config"]) if stage and "config" in stage else {}
    cfg = dataclass_from_mapping(PretrainConfig(), raw, f"{model}/bundle.yaml provenance")
    cfg.real_fraction = 0.5
    if steps:
        cfg.trainer.steps = steps
    camera = Recording(sim / "recording").intrinsics(0)
    objects = load_objects_config(sim / "objects.yaml")
    resume = (out / "train" / "checkpoint.pt").is_file()
    pretrain(objects, camera, out, cfg, objects_config=sim / "objects.yaml", real=BopDataset(sim / "bop", "train_loop"),
             resume=resume, provenance={"command": "selfpose bench adapt (upper bound)", "supervision": "ground truth"})
    return out


def noisy_estimates(bop: Path, noise_m: float, noise_deg: float, outliers: float, seed: int = 0) -> FrameEstimates:
    """True poses of split ``train_loop`` scene 1 (instances at least 30 % visible) with Gaussian noise and a share
    ``outliers`` of gross errors (random rotation, 10 cm translation noise); boxes and masks are the true visible
    ones."""
    rng = np.random.default_rng(seed)
    ds = BopDataset(bop, "train_loop")
    ids = [m.obj_id for m in ds.objects]
    rows = []
    for s in ds.samples(1, load_depth=False, load_masks=True):
        for g in s.gt:
            if g.obj_id not in ids or g.visib_fract < 0.3:
                continue
            T = g.T_cam_obj.copy()
            T[:3, :3] = T[:3, :3] @ so3_exp(rng.normal(0, np.radians(noise_deg), 3))
            T[:3, 3] += rng.normal(0, noise_m, 3)
            if rng.random() < outliers:
                T = make_T(so3_exp(rng.normal(0, 2.0, 3)), T[:3, 3] + rng.normal(0, 0.1, 3))
            x, y, w, h = g.bbox_visib
            rows.append((s.im_id, ids.index(g.obj_id), T, np.array([x, y, x + w, y + h], float), g.mask_visib))
    return FrameEstimates(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                          np.stack([r[2] for r in rows]), np.full(len(rows), 0.9), np.stack([r[3] for r in rows]),
                          [r[4] for r in rows])


def consensus_study(sim: Path, model: Path, out: Path, config: AdaptConfig, noise: str) -> int:
    """Print the consensus error on noisy true estimates (no scene registration) for each drift handling: depth
    odometry, the planar correction in the refinement, none (frames only down-weighted)."""
    try:
        noise_m, noise_deg, outliers = (float(v) for v in noise.split(","))
    except ValueError:
        print(f"--consensus-noise must be M,DEG,OUTLIERS (e.g. 0.01,3,0.2), got {noise!r}")
        return 2
    est = noisy_estimates(sim / "bop", noise_m, noise_deg, outliers, config.seed)
    objects_yaml = sim / "objects.yaml"
    objects = load_objects_config(objects_yaml)
    train = BopDataset(sim / "bop", "train_loop")
    print(f"consensus from {len(est)} noisy true estimates ({100 * noise_m:.1f} cm, {noise_deg:.1f} deg, "
          f"{100 * outliers:.0f}% outliers) through the drifting odometry of {sim}/recording")
    print(f"{'drift':8s} {'object':14s} {'world t[cm]':>11s} {'world r[deg]':>12s} {'frame t[cm]':>12s} "
          f"{'frame r[deg]':>12s}")
    for drift in ("depth", "correct", "weight"):
        cfg = config.sections["multiview_consensus"]
        cfg.drift = drift
        cfg.scene_registration = False  # the study is about averaging estimates, not about the depth registration
        with Recording(sim / "recording") as rec:
            ctx = AdaptContext(objects=objects, recording=rec, bundle=ModelBundle.load(model),
                               work_dir=out / f"consensus_{drift}", objects_config=objects_yaml, seed=config.seed,
                               progress=False)
            MultiviewConsensus(est).run(ctx, cfg)
            errors = consensus_errors(ctx.pseudo, objects, train)
        for name, e in errors.items():
            print(f"{drift:8s} {name:14s} {e.get('world_t_cm', np.nan):11.2f} {e.get('world_r_deg', np.nan):12.2f} "
                  f"{e.get('frame_t_cm_median', np.nan):12.2f} {e.get('frame_r_deg_median', np.nan):12.2f}")
        t = max(e.get("world_t_cm", np.inf) for e in errors.values())
        r = max(e.get("world_r_deg", np.inf) for e in errors.values())
        print(f"{drift:8s} worst object: {t:.2f} cm, {r:.2f} deg (goal <= 1 cm / 2 deg)")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", type=Path, required=True, help="output of selfpose simulate")
    p.add_argument("--model", type=Path, required=True, help="synthetic-only pre-trained bundle (lower bound)")
    p.add_argument("--upper", type=Path, default=None, help="GT-supervised bundle (default: trained here)")
    p.add_argument("--upper-steps", type=int, default=None, help="steps of the upper bound (default: as --model)")
    p.add_argument("--out", type=Path, default=None, help="work directory (default SIM/bench_adapt)")
    p.add_argument("--config", type=Path, default=None, help="adapt config (default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-images", type=int, default=None, help="held-out images per evaluation (0 = all)")
    p.add_argument("--consensus-noise", default=None, metavar="M,DEG,OUTLIERS",
                   help="study the consensus alone on noisy true estimates (see the module docstring)")
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
    if args.consensus_noise:
        return consensus_study(args.sim, args.model, out, config, args.consensus_noise)
    objects_yaml = args.sim / "objects.yaml"
    evaluator = make_evaluator(args.sim / "bop", objects_yaml, config, progress=not args.no_progress)
    with Recording(args.sim / "recording") as rec:
        recorded = rec.poses.copy()
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
    _print_by_trajectory(args.sim, [("lower bound", result.results["pretrained"].metrics)]
                         + [(f"+ {name}", result.results[name].metrics) for name in config.stages]
                         + [("upper bound", upper)])
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
    if cons is not None and cons.metrics.get("cameras"):
        train = BopDataset(args.sim / "bop", "train_loop")
        for name, e in (("recorded odometry", camera_errors(recorded, train)),
                        ("after the consensus", cons.metrics["cameras"])):
            print(f"camera poses, {name:20s}: {e['t_cm_median']:.2f} cm median, {e['t_cm_max']:.2f} cm / "
                  f"{e['r_deg_max']:.2f} deg at most")
    print(f"\nreport: {result.report_path}")
    return 0
