"""The SSC-6D shape priors on a small CPU budget: how well a prior trained on a category's generated family
reconstructs held-out instances it never saw.

    selfpose bench category_prior [--categories mug,can,...] [--instances 24] [--steps 800] [--heldout 4]
                                  [--width 64] [--resolution 48]

Per category: a prior is trained (``train_category_prior`` with the defaults of ``selfpose category-prior`` but the
instance count, steps and width given here, one torch thread) on training instances 0..N-1; then for
held-out instances (indices from 1,000,000) the chamfer distance (SSC-6D Eq. 2: the two mean nearest-neighbour
distances added, mm) between 2000 points of the true surface and 2000 points of the marching-cubes mesh of:
a training instance's own latent ("train", what the auto-decoder reached), the mean latent ("mean shape"), the
latent fitted to 2000 surface points ("fit all", Eq. 4 + Eq. 6), and fitted to the points of the front half only
(z > 0, "fit one side"). Median over the held-out instances; "no surface" counts meshes the decoder did not close.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from selfpose_core.data.sdf_samples import surface_points
from selfpose_core.data.sim.category_shapes import heldout_instances, instance
from selfpose_core.errors import ModelError
from selfpose_core.eval.shape_metrics import chamfer_distance
from selfpose_core.mesh.categories import CATEGORIES
from selfpose_core.models.category_prior import CategoryPrior, LatentFitConfig, fit_latent, reconstruct_mesh
from selfpose_core.models.category_prior_training import CategoryPriorConfig, train_category_prior
from selfpose_core.models.sdf_decoder import SdfDecoderConfig

POINTS = 2000


def _chamfer_mm(prior: CategoryPrior, latent: torch.Tensor, truth: np.ndarray, scale: float, resolution: int,
                rng: np.random.Generator) -> float:
    """Chamfer (mm) between the normalised ``truth`` points and the mesh of ``latent``; NaN without a surface."""
    try:
        mesh = reconstruct_mesh(prior, latent, resolution)
    except ModelError:
        return float("nan")
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, POINTS, seed=rng)
    return 1000 * scale * chamfer_distance(pts, truth)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench category_prior")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="comma-separated (default: all six)")
    p.add_argument("--instances", type=int, default=24, help="training instances per category (default 24)")
    p.add_argument("--steps", type=int, default=800, help="training steps per category (default 800)")
    p.add_argument("--heldout", type=int, default=4, help="held-out instances per category (default 4)")
    p.add_argument("--width", type=int, default=64, help="decoder layer width (default 64)")
    p.add_argument("--resolution", type=int, default=48, help="marching-cubes grid (default 48)")
    p.add_argument("--fit-steps", type=int, default=150, help="latent fitting steps (default 150)")
    args = p.parse_args(argv)
    categories = [c for c in args.categories.split(",") if c]
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        p.error(f"unknown categories {unknown} (known: {', '.join(CATEGORIES)})")
    torch.set_num_threads(1)
    config = CategoryPriorConfig(instances=args.instances, decoder=SdfDecoderConfig(width=args.width))
    config.trainer.steps, config.trainer.checkpoint_every, config.trainer.progress = args.steps, args.steps, False
    fit = LatentFitConfig(steps=args.fit_steps, max_points=1024)
    print(f"{args.instances} training instances, {args.steps} steps, decoder 8 x {args.width}, latent 16, "
          f"{args.heldout} held-out instances, grid {args.resolution}^3; chamfer in mm (median)")
    print(f"{'category':<8} {'train s':>7} {'train':>7} {'mean shape':>10} {'fit all':>8} {'fit one side':>12} "
          f"{'fit s':>6} {'no surface':>10}")
    for cat in categories:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            prior = train_category_prior(cat, tmp, config)
            train_s = time.monotonic() - start
        rng = np.random.default_rng(0)
        rows, fit_times = [], []
        first = instance(cat, 0, config.family_seed)
        own = _chamfer_mm(prior, prior.latents[0], surface_points(first, POINTS, rng), first.scale,
                          args.resolution, rng)
        for inst in heldout_instances(cat, args.heldout):
            truth = surface_points(inst, POINTS, rng)
            row = [_chamfer_mm(prior, prior.mean_latent, truth, inst.scale, args.resolution, rng)]
            for points in (truth, truth[truth[:, 2] > 0]):
                t = time.monotonic()
                latent = fit_latent(prior, points, fit, rng).latent
                fit_times.append(time.monotonic() - t)
                row.append(_chamfer_mm(prior, latent, truth, inst.scale, args.resolution, rng))
            rows.append(row)
        table = np.array(rows)
        med = [float(np.nanmedian(c)) if np.isfinite(c).any() else float("nan") for c in table.T]
        print(f"{cat:<8} {train_s:7.0f} {own:7.1f} {med[0]:10.1f} {med[1]:8.1f} {med[2]:12.1f} "
              f"{np.median(fit_times):6.1f} {int(np.isnan(table).sum()) + int(np.isnan(own)):>10d}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
