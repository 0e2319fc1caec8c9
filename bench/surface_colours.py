"""`selfpose bench surface_colours --data SIM/bop --model BUNDLE`: how far the learned surface colours carry to
held-out views.

A bundle's surface colours (``models/surface_colours.py``) hold each object's agreement: the mean normalised
cross-correlation (NCC) of the drive's own views with the pooled colours. This prints, per object, that agreement
next to the NCC at the true poses of the held-out images (visible at least half) and at a wrong pose of each
(the true pose moved by half the object's diameter along the camera's x axis and turned by 90 deg about the
object's z axis): the figures behind ``HELD_OUT_SHARE``, the share of the agreement that the search expects at a
true pose under other light.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from selfpose_core.data.bop import BopDataset
from selfpose_core.geometry.se3 import make_T, so3_exp
from selfpose_core.models.bundle import ModelBundle


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench surface_colours", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="BOP root with the held-out images (SIM/bop)")
    p.add_argument("--model", type=Path, required=True, help="a bundle written by selfpose adapt")
    p.add_argument("--every", type=int, default=4, help="every n-th image of each held-out scene (default 4)")
    args = p.parse_args(argv)
    bundle = ModelBundle.load(args.model)
    surface = bundle.appearance.surface if bundle.appearance is not None else None
    if surface is None:
        print(f"{args.model}: no surface colours (a bundle from selfpose adapt with multiview_consensus has them)")
        return 2
    dataset = BopDataset(args.data, "test")
    names = [o.name for o in bundle.spec.objects]
    ids = [o.obj_id for o in bundle.spec.objects]
    true_ncc: dict[int, list[float]] = {k: [] for k in range(len(names))}
    wrong_ncc: dict[int, list[float]] = {k: [] for k in range(len(names))}
    for scene in dataset.scene_ids:
        for im in dataset.image_ids(scene)[::args.every]:
            sample = dataset.sample(scene, im, load_masks=False)
            f = sample.frame
            for g in sample.gt:
                if g.obj_id not in ids or g.visib_fract < 0.5:
                    continue
                k = ids.index(g.obj_id)
                wrong = g.T_cam_obj @ make_T(so3_exp(np.array([0.0, 0.0, np.pi / 2])), np.zeros(3))
                wrong[0, 3] += 0.5 * bundle.spec.objects[k].diameter
                a, b = surface.score(k, f.rgb, f.depth, f.K.K, np.stack([g.T_cam_obj, wrong]))
                true_ncc[k].append(a)
                wrong_ncc[k].append(b)
    print(f"== surface colours of {args.model} on {args.data} (held-out targets visible >= 50 %) ==")
    print(f"{'object':<12} {'agreement':>9} {'targets':>8} {'NCC true p50':>13} {'p10':>6} {'NCC wrong p50':>14} "
          f"{'p90':>6}")
    for k, name in enumerate(names):
        t, w = np.array(true_ncc[k]), np.array(wrong_ncc[k])
        if not len(t):
            continue
        print(f"{name:<12} {surface.agreement[k]:>9.2f} {len(t):>8d} {np.median(t):>13.2f} "
              f"{np.percentile(t, 10):>6.2f} {np.median(w):>14.2f} {np.percentile(w, 90):>6.2f}")
    return 0
