"""`selfpose bench nol`: image quality of NOL renderings on held-out views of the embedded scene, and speed.

Sources: frames of the training loop (BOP split ``train_loop``) with their ground-truth object poses and visible
masks -- exactly, or perturbed like an imperfect consensus (``--trans-noise`` metres / ``--rot-noise`` degrees per
axis, uniform) -- chosen by the SMOT rule (at most 16 per object). Targets: frames of the held-out trajectories
(split ``test``, other elevations and backgrounds) where the object is at least 90 % visible; every method renders
the object at the target's true pose in the target's crop camera and is compared with the real crop on the
object's visible pixels.

Methods: ``cad_flat`` (the CAD silhouette filled with the median colour of the source pixels), ``average`` (the
mean of the valid projections: the paper's "w/o LSTM"), ``nol`` (weighted rendering X_D) -- from exact source
poses, from perturbed poses, and from perturbed poses after refinement (Eq. 3).

Distance (documented choice, LPIPS needs ImageNet weights we cannot download): DSSIM = (1 - SSIM) / 2 with the
usual 11x11 Gaussian window (sigma 1.5) on each colour channel, averaged over the evaluated pixels (smaller is
better), plus the mean absolute error in [0, 1] units.

Speed: seconds per rendered hemisphere view with ``--threads`` torch threads (default 2 = the target machine),
per training image (a view gives 7 in-plane rotations), and seconds of source-pose refinement per object.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from selfpose_core.adapt.nol import (NolRenderer, centred_crop_intrinsics, choose_sources, crop_view,
                                     hemisphere_poses, prepare_sources)
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.nol_training_set import perturb_pose
from selfpose_core.errors import ConfigError
from selfpose_core.models.nol import load_nol

log = logging.getLogger("bench.nol")


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) SSIM (Wang et al. 2004) of two (H, W, 3) images in [0, 1], averaged over channels."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    a, b = a.astype(np.float64), b.astype(np.float64)
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return s.mean(-1)


def distances(render: np.ndarray, real: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(DSSIM, L1) of ``render`` vs ``real`` (H, W, 3) in [0, 1] over ``mask`` (H, W); outside it both are 0."""
    m = mask[..., None]
    s = _ssim_map(render * m, real * m)
    return float((1 - s[mask]).mean() / 2), float(np.abs(render - real)[mask].mean())


def _sources_of(ds: BopDataset, obj_id: int, min_visib: float):
    imgs, poses, masks, ids, K = [], [], [], [], None
    for s in ds.samples():
        for g in s.gt:
            if g.obj_id == obj_id and g.visib_fract >= min_visib and g.mask_visib is not None:
                imgs.append(s.frame.rgb)
                poses.append(g.T_cam_obj)
                masks.append(g.mask_visib)
                ids.append(s.im_id)
                K = s.frame.K
    return imgs, np.asarray(poses).reshape(-1, 4, 4), masks, ids, K


def _targets_of(ds: BopDataset, obj_id: int, n: int, min_visib: float = 0.9):
    found = [(s, g) for s in ds.samples() for g in s.gt if g.obj_id == obj_id and g.visib_fract >= min_visib]
    if len(found) > n:
        found = [found[i] for i in np.linspace(0, len(found) - 1, n).round().astype(int)]
    return found


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selfpose bench nol", description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", required=True, help="output of `selfpose simulate --out DIR` (uses DIR/bop)")
    p.add_argument("--weights", required=True, help="nol.pt from `selfpose nol-train --out DIR`")
    p.add_argument("--objects", default=None, help="comma-separated object names (default all)")
    p.add_argument("--targets", type=int, default=8, help="held-out target views per object (default 8)")
    p.add_argument("--crop", type=int, default=64, help="crop size (default 64)")
    p.add_argument("--max-sources", type=int, default=16, help="source frames per object (default 16)")
    p.add_argument("--trans-noise", type=float, default=0.01, help="source translation noise, m (default 0.01)")
    p.add_argument("--rot-noise", type=float, default=3.0, help="source rotation noise, deg (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the speed figure (default 2)")
    p.add_argument("--speed-views", type=int, default=24, help="hemisphere views timed per object (default 24)")
    p.add_argument("--figure", default=None, help="write a PNG of examples (real | cad | average | nol)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    root = Path(args.sim) / "bop"
    if not root.is_dir():
        raise ConfigError(f"--sim {args.sim}: no bop/ folder (make it with `selfpose simulate --out {args.sim}`)")
    torch.set_num_threads(1)
    net = load_nol(args.weights)
    train, test = BopDataset(root, "train_loop"), BopDataset(root, "test")
    wanted = None if args.objects is None else set(args.objects.split(","))
    objects = [m for m in train.objects if wanted is None or m.name in wanted]
    rng = np.random.default_rng(args.seed)
    methods = ["cad_flat", "average/exact", "nol/exact", "average/noisy", "nol/noisy", "average/noisy+ref",
               "nol/noisy+ref"]
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    speed, refine_s, rows = [], [], []
    for model in objects:
        imgs, poses, masks, ids, K = _sources_of(train, model.obj_id, 0.1)
        targets = _targets_of(test, model.obj_id, args.targets)
        if not imgs or not targets:
            print(f"{model.name}: skipped ({len(imgs)} source frames, {len(targets)} held-out targets)")
            continue
        exact = prepare_sources(model, imgs, poses, K, masks, crop_size=args.crop, frame_ids=ids)
        exact = choose_sources(model, exact, max_sources=args.max_sources, seed=args.seed)
        noisy_T = np.stack([perturb_pose(T, rng, args.trans_noise, np.deg2rad(args.rot_noise))
                            for T in exact.T_cam_obj])
        noisy = exact.with_poses(noisy_T)
        r_exact = NolRenderer(net, model, exact, refine=False, seed=args.seed)
        r_noisy = NolRenderer(net, model, noisy, refine=False, seed=args.seed)
        r_ref = NolRenderer(net, model, noisy, refine=True, seed=args.seed)
        refine_s.append(r_ref.refinement.seconds)
        src_px = exact.images.permute(0, 2, 3, 1)[exact.masks]
        flat = src_px.median(0).values.numpy()
        for s, g in targets:
            crop, Kc, _ = crop_view(s.frame.rgb, s.frame.K, model, g.T_cam_obj, args.crop)
            vis = crop_view(g.mask_visib, s.frame.K, model, g.T_cam_obj, args.crop)[0]
            real = crop.astype(np.float32) / 255.0
            T1, K1 = g.T_cam_obj[None], Kc.K[None]
            outs = {}
            for tag, r in (("exact", r_exact), ("noisy", r_noisy), ("noisy+ref", r_ref)):
                for meth, lstm in (("average", False), ("nol", True)):
                    outs[f"{meth}/{tag}"] = r.render(T1, K1, args.crop, use_lstm=lstm)
            sil = outs["nol/exact"].silhouettes[0]
            m = sil & vis
            if m.sum() < 30:
                continue
            outs_img = {k: v.images[0] for k, v in outs.items()}
            outs_img["cad_flat"] = np.where(sil[..., None], flat, 0).astype(np.float32)
            for k in methods:
                scores[k].append(distances(outs_img[k], real, m))
            if len(rows) < 12:
                rows.append(np.concatenate([real, outs_img["cad_flat"], outs_img["average/noisy+ref"],
                                            outs_img["nol/noisy+ref"]], 1))
        torch.set_num_threads(args.threads)
        dist = float(np.median(np.linalg.norm(exact.T_cam_obj[:, :3, 3], axis=1)))
        hp = hemisphere_poses(dist)
        hp = hp[np.linspace(0, len(hp) - 1, args.speed_views).round().astype(int)]
        Kh = np.repeat(centred_crop_intrinsics(model.diameter, dist, args.crop)[None], len(hp), 0)
        t0, c0 = time.perf_counter(), time.process_time()
        r_ref.render(hp, Kh, args.crop)
        speed.append(((time.perf_counter() - t0) / len(hp), (time.process_time() - c0) / len(hp)))
        torch.set_num_threads(1)
        errs = r_ref.refinement.errors or [float("nan")]
        print(f"{model.name}: {len(exact)} sources, {len(targets)} targets, refinement "
              f"{r_ref.refinement.iterations} it {r_ref.refinement.seconds:.1f} s "
              f"(error {errs[0]:.4f} -> {min(errs):.4f})", flush=True)
    if not speed:
        print("no object had both source frames and held-out targets")
        return 1
    n = len(scores["nol/exact"])
    print(f"\nimage quality on {n} held-out views ({len(speed)} objects, crops {args.crop} px; source noise "
          f"{args.trans_noise * 1000:.0f} mm / {args.rot_noise:.1f} deg); smaller is better")
    print(f"{'method':<22}{'DSSIM':>8}{'L1':>8}")
    for k in methods:
        a = np.asarray(scores[k])
        print(f"{k:<22}{a[:, 0].mean():8.4f}{a[:, 1].mean():8.4f}")
    wall, cpu = np.mean(speed, axis=0)
    print(f"\nspeed ({args.threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): "
          f"{wall:.3f} s wall / {cpu:.3f} s CPU per NOL view; per training image (7 in-plane rotations per view) "
          f"{wall / 7:.3f} s wall / {cpu / 7:.3f} s CPU (goal <= 0.5 s; paper 3.6 s on a GTX 1080)")
    print(f"source-pose refinement: {np.mean(refine_s):.1f} s per object, once "
          f"({np.mean(refine_s) / (1296 * 7):.4f} s per image over a 1296-view x 7 hemisphere set)")
    if args.figure and rows:
        cv2.imwrite(args.figure, (np.concatenate(rows, 0)[..., ::-1] * 255).clip(0, 255).astype(np.uint8))
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
