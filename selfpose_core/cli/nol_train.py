"""`selfpose nol-train`: train the Neural Object Learning network on procedural textured meshes (no download).

Writes ``OUT/nol.pt`` (weights + config + provenance, loadable with ``torch.load(weights_only=True)``) and the
training state in ``OUT/train`` (``--resume`` continues it). See docs/nol.md.
"""
from __future__ import annotations

import argparse

import torch

from selfpose_core.data.nol_training_set import NolTrainingConfig
from selfpose_core.errors import ConfigError
from selfpose_core.models.nol import NolConfig, train_nol
from selfpose_core.models.trainer import TrainerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nol-train", help="train the NOL novel-view network on procedural textured meshes")
    p.add_argument("--out", required=True, help="output directory (nol.pt + train/)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    p.add_argument("--sets-per-step", type=int, default=4,
                   help="training sets averaged per step (gradient accumulation; default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3, as the paper)")
    p.add_argument("--crop-size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="data-loader processes (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small convolutions gain little from more, and lose a lot "
                        "on a busy machine)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train/checkpoint.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.sets_per_step < 1:
        raise ConfigError(f"--steps and --sets-per-step must be >= 1, got {args.steps}, {args.sets_per_step}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    net = NolConfig(crop_size=args.crop_size)
    data = NolTrainingConfig(crop_size=args.crop_size, n_sources=net.train_sources)
    trainer = TrainerConfig(steps=args.steps, lr=args.lr, grad_accum=args.sets_per_step, seed=args.seed,
                            warmup_steps=min(20, args.steps), checkpoint_every=50, log_every=10,
                            progress=not args.no_progress)
    last = train_nol(args.out, config=net, data=data, trainer=trainer, workers=args.workers, device=args.device,
                     resume=args.resume)
    print(f"NOL weights: {args.out}/nol.pt")
    print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
    return 0
