"""The category shape families: time per instance, closed meshes, size ranges, held-out instances unlike training.

    selfpose bench category_shapes [--instances 200] [--heldout 20] [--seed 0]

Per category: milliseconds per instance (median over the instances, one thread), the fraction of instances whose
parts are all closed outward-wound surfaces, the range of the NOCS extents (x, y = up, z) and of the NOCS scale in
cm, the relative spread (std / mean) of the scale, and the smallest distance in parameter space (each parameter
divided by its training range) between a held-out instance and any training instance.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import trimesh

from selfpose_core.data.sim import category_shapes as cs
from selfpose_core.data.sim.shapes import weld
from selfpose_core.mesh.categories import CATEGORIES


def _closed(inst: cs.CategoryInstance) -> bool:
    for part in inst.parts:
        tm = trimesh.Trimesh(*weld(part), process=False)
        if not (tm.is_watertight and tm.is_winding_consistent and tm.volume > 0):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench category_shapes")
    p.add_argument("--instances", type=int, default=200, help="training instances per category (default 200)")
    p.add_argument("--heldout", type=int, default=20, help="held-out instances per category (default 20)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{'category':<8} {'ms/inst':>7} {'closed':>7}  {'x cm':>11} {'y (up) cm':>11} {'z cm':>11} "
          f"{'scale cm':>11} {'spread':>6} {'held-out gap':>12}")
    for cat in CATEGORIES:
        times, train = [], []
        for i in range(args.instances):
            t = time.perf_counter()
            train.append(cs.instance(cat, i, args.seed))
            times.append(time.perf_counter() - t)
        held = cs.heldout_instances(cat, args.heldout, args.seed)
        closed = np.mean([_closed(x) for x in train + held])
        size = 100 * np.array([x.size for x in train])
        scale = 100 * np.array([x.scale for x in train])
        P = np.array([list(x.params.values()) for x in train])
        H = np.array([list(x.params.values()) for x in held])
        span = np.maximum(P.max(0) - P.min(0), 1e-12)
        gap = np.min(np.linalg.norm((H[:, None] - P[None]) / span, axis=2))
        rng = [f"{lo:4.1f}..{hi:5.1f}" for lo, hi in zip(size.min(0), size.max(0))]
        print(f"{cat:<8} {1e3 * np.median(times):7.2f} {closed:7.0%}  {rng[0]:>11} {rng[1]:>11} {rng[2]:>11} "
              f"{scale.min():4.1f}..{scale.max():5.1f} {scale.std() / scale.mean():6.2f} {gap:12.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
