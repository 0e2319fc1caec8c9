"""`selfpose simulate`: generate the embedded SMOT-like scene (recordings + BOP copy with ground truth)."""
from __future__ import annotations

import argparse

from selfpose_core.data.sim.catalog import TARGETS
from selfpose_core.data.sim.generate import DIFFICULTIES, SimConfig, render_montage, render_preview, simulate
from selfpose_core.errors import ConfigError
from selfpose_core.mesh.categories import CATEGORIES


def _objects(value: str | None) -> list[str]:
    """``--objects``: a count N (the first N targets) or comma-separated names."""
    names = list(TARGETS)
    if value is None:
        return names
    if value.strip().isdigit():
        n = int(value)
        if not 1 <= n <= len(names):
            raise ConfigError(f"--objects {n}: choose 1..{len(names)} objects (or names from {', '.join(names)})")
        return names[:n]
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in TARGETS]
    if unknown or not chosen:
        raise ConfigError(f"--objects: unknown object(s) {unknown}; available: {', '.join(names)}")
    return chosen


def _categories(value: str | None) -> list[str]:
    """``--categories``: comma-separated NOCS category names (a name twice: two instances)."""
    if value is None:
        return []
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in CATEGORIES]
    if unknown or not chosen:
        raise ConfigError(f"--categories: unknown category(ies) {unknown}; available: {', '.join(CATEGORIES)}")
    return chosen


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="generate the embedded SMOT-like scene: training recording, held-out test "
                                        "recordings and a BOP copy with ground truth")
    p.add_argument("--out", help="output directory (must be empty or new unless --force)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--objects", default=None,
                   help=f"number of target objects or comma-separated names from {', '.join(TARGETS)} (default all)")
    p.add_argument("--categories", default=None,
                   help=f"comma-separated categories from {', '.join(CATEGORIES)}: one held-out instance of each "
                        "(known to the learner by category only; without --objects, the only targets)")
    p.add_argument("--difficulty", choices=DIFFICULTIES, default="normal",
                   help="normal: upright objects apart, Kinect-like depth; hard: targets lying in other resting poses, "
                        "a pair in contact, look-alike distractors, RealSense-like depth (default normal)")
    p.add_argument("--frames", type=int, default=120, help="frames of the training loop (default 120)")
    p.add_argument("--test-frames", type=int, default=40, help="frames per held-out trajectory (default 40, 0: none)")
    p.add_argument("--width", type=int, default=640, help="image width in pixels (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height in pixels (default 480)")
    p.add_argument("--focal", type=float, default=None,
                   help="focal length fx = fy in pixels (default 570 scaled with the width from 640)")
    p.add_argument("--no-depth", action="store_true", help="do not simulate the depth camera")
    p.add_argument("--image-format", choices=("raw", "jpeg", "png"), default="raw",
                   help="colour images in the recordings: raw sensor_msgs/Image or CompressedImage (default raw)")
    p.add_argument("--clutter", type=int, default=3, help="distractor objects on the table (default 3)")
    p.add_argument("--no-shadows", action="store_true", help="skip shadow rays (faster, less realistic)")
    p.add_argument("--preview", metavar="PNG",
                   help="write a picture (real-domain frame next to a flat CAD render of the same view); "
                        "with no --out, only the picture is made")
    p.add_argument("--montage", metavar="PNG",
                   help="write a picture with the middle frame of every trajectory (no --out: only the picture)")
    p.add_argument("--force", action="store_true", help="replace the simulator's outputs in a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` described by the command-line options."""
    if args.width < 16 or args.height < 16:
        raise ConfigError(f"--width/--height must be >= 16, got {args.width}x{args.height}")
    focal = args.focal if args.focal is not None else 570.0 * args.width / 640.0
    categories = _categories(args.categories)
    objects = [] if categories and args.objects is None else _objects(args.objects)
    return SimConfig(seed=args.seed, difficulty=args.difficulty, objects=objects, categories=categories,
                     frames=args.frames,
                     test_frames=args.test_frames, width=args.width, height=args.height, fx=focal, fy=focal,
                     depth=not args.no_depth, image_format=args.image_format, n_clutter=args.clutter,
                     shadows=not args.no_shadows)


def run(args: argparse.Namespace) -> int:
    if args.out is None and args.preview is None and args.montage is None:
        raise ConfigError("give --out DIR (and/or --preview PNG, --montage PNG)")
    config = config_from_args(args)
    if args.preview:
        print(f"wrote {render_preview(config, args.preview)}")
    if args.montage:
        print(f"wrote {render_montage(config, args.montage)}")
    if args.out is None:
        return 0
    summary = simulate(args.out, config, force=args.force, progress=not args.no_progress)
    print(f"simulated {sum(t['frames'] for t in summary['trajectories'])} frames "
          f"({len(summary['trajectories'])} trajectories, {summary['bytes'] / 1e6:.0f} MB) into {args.out} in "
          f"{summary['seconds']:.1f} s ({summary['cpu_seconds']:.1f} s CPU)")
    for o in summary["objects"]:
        size = " x ".join(f"{100 * x:.1f}" for x in o["size_m"])
        kind = ", ".join(k for k in ("textureless", "symmetric") if o[k]) or "textured"
        print(f"  obj {o['obj_id']} {o['name']:<11} {size} cm  diameter {100 * o['diameter_m']:.1f} cm  "
              f"{o['faces']} faces  ({kind})")
        if "nocs_scale_m" in o:
            print(f"  {'':<17} category {o['category']}, held-out instance {o['instance_index']}, NOCS scale "
                  f"{100 * o['nocs_scale_m']:.1f} cm (its mesh is in bop/models for evaluation only)")
    for t in summary["trajectories"]:
        lo, hi = t["elevation_deg"]
        r0, r1 = t["radius_m"]
        print(f"  {t['name']:<12} {t['frames']:4d} frames  elevation {lo:5.1f}..{hi:5.1f} deg  "
              f"radius {r0:.2f}..{r1:.2f} m  -> {t['recording']}")
        if "odometry_drift_final" in t:
            d = t["odometry_drift_final"]
            print(f"  {'':<12} odometry drift at the last frame: {100 * d['translation_m']:.1f} cm, "
                  f"{d['yaw_deg']:+.2f} deg")
    return 0
