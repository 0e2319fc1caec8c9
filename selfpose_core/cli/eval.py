"""`selfpose eval`: score a model (or a BOP results file) on a BOP-format dataset; print the table, write the report.

    selfpose eval --model BUNDLE --data BOP_DIR [--split test] [--out DIR]   run the estimator, then score it
    selfpose eval --results CSV --data BOP_DIR [--split test] [--out DIR]    score a BOP results file, no model

Prints the accuracy table and the error breakdown (eval/breakdown.py: missed, wrong identity, mislocalised,
depth, in-plane, rotation per object). Writes into --out: the results CSV (model mode, BOP naming ``selfpose_<dataset>-<split>.csv``, scoreable by
bop_toolkit), ``metrics.yaml``, ``report.html`` and its PNG plots.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import yaml

from selfpose_core.data.bop import BopDataset
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.stream import load_estimator
from selfpose_core.eval.breakdown import breakdown_table
from selfpose_core.eval.evaluate import evaluate, evaluate_model
from selfpose_core.eval.report import write_report
from selfpose_core.eval.results import read_results, write_results

log = logging.getLogger(__name__)


def _scene_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scenes must be comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model or a BOP results file on a BOP dataset (table + report.html)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="model bundle directory (bundle.yaml + weights.pt) to run")
    src.add_argument("--results", type=Path, help="BOP results CSV (scene_id,im_id,obj_id,score,R,t,time) to score")
    p.add_argument("--data", type=Path, required=True, help="BOP-format dataset root (models/, <split>/)")
    p.add_argument("--split", default="test", help="dataset split folder (default: test)")
    p.add_argument("--scenes", type=_scene_ids, help="comma-separated scene ids (default: all)")
    p.add_argument("--max-images", type=int, help="with --model: evaluate at most this many images, evenly spread")
    p.add_argument("--out", type=Path, help="output folder (default: eval_<split>)")
    p.add_argument("--overlays", type=int, default=6, help="pose overlay images in the report (default: 6)")
    p.add_argument("--min-visib", type=float, default=0.1,
                   help="ground-truth instances less visible than this fraction are not targets (default: 0.1)")
    p.add_argument("--device", default="cpu", help="torch device for --model (default: cpu)")
    p.add_argument("--dual-scale", choices=("auto", "on", "off"), default="auto",
                   help="DSC's two-scale ensemble at inference (default auto: for bundles adapted by dual_scale)")
    p.add_argument("--no-depth", action="store_true",
                   help="with --model: ignore the dataset's depth (RGB only: no table-top search, no ICP)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be at least 1, got {args.max_images}")
    if not 0.0 <= args.min_visib <= 1.0:
        raise ConfigError(f"--min-visib must be in [0, 1], got {args.min_visib}")
    dataset = BopDataset(args.data, args.split)
    objects = dataset.objects
    out = args.out if args.out is not None else Path(f"eval_{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        estimator = load_estimator(str(args.model), args.device, dual_scale=args.dual_scale,
                                   use_depth=not args.no_depth)
        result, estimates = evaluate_model(estimator, dataset, scene_ids=args.scenes, max_images=args.max_images,
                                           min_visib_fract=args.min_visib, progress=not args.no_progress)
        csv = out / f"selfpose_{args.data.resolve().name}-{args.split}.csv"
        write_results(csv, estimates, times=result.image_times_s, objects=objects)
        print(f"results: {csv}")
    else:
        res = read_results(args.results, objects)
        estimates = res.estimates
        known = [t for t in res.times.values() if t >= 0]
        result = evaluate(estimates, dataset, scene_ids=args.scenes, min_visib_fract=args.min_visib,
                          time_per_image_s=float(np.mean(known)) if known else None)
    keys = sorted({(int(s), int(i)) for s, i in zip(result.targets["scene_id"], result.targets["im_id"])})
    picks = [keys[j] for j in np.unique(np.linspace(0, len(keys) - 1, args.overlays).round().astype(int))] \
        if keys and args.overlays > 0 else []
    overlay = [(dataset.sample(s, i, load_depth=False, load_masks=False), estimates.get((s, i), []))
               for s, i in picks]
    (out / "metrics.yaml").write_text(yaml.safe_dump(result.to_dict(), sort_keys=False))
    report = write_report(result, out, overlay, objects,
                          title=f"selfpose evaluation: {args.model or args.results} on {args.data} ({args.split})")
    print(result.table())
    print(breakdown_table(result))
    print(f"report: {report}")
    return 0
