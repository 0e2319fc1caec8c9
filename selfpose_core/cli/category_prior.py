"""`selfpose category-prior --category mug --out P`: train a category's DeepSDF shape prior (SSC-6D, seed 003) on
the generated training instances of its shape family and write the prior directory (docs/categories.md).

``P`` gets ``prior.yaml`` + ``weights.pt`` and the training state in ``P/train`` (``--resume`` continues it). A
``P`` that holds a prior or a checkpoint is refused unless ``--overwrite`` or ``--resume``; while the run writes
there it holds ``P/.selfpose.lock`` (cli/output_dir.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from selfpose_core.cli.output_dir import OutputLock, check_model_output, check_run_flags
from selfpose_core.config_io import dataclass_from_mapping, parse_overrides, set_dotted
from selfpose_core.errors import OutputError
from selfpose_core.mesh.categories import CATEGORIES
from selfpose_core.models.category_prior_training import CategoryPriorConfig, train_category_prior


def register(sub: argparse._SubParsersAction) -> None:
    defaults = CategoryPriorConfig()
    p = sub.add_parser("category-prior", help="train a category's DeepSDF shape prior on its generated shape family")
    p.add_argument("--category", required=True, choices=CATEGORIES, help="NOCS category")
    p.add_argument("--out", type=Path, required=True, help="prior directory to write (prior.yaml, weights.pt, train/)")
    p.add_argument("--instances", type=int, help=f"training instances of the family (default {defaults.instances})")
    p.add_argument("--steps", type=int, help=f"optimiser steps (default {defaults.trainer.steps})")
    p.add_argument("--seed", type=int, help=f"training seed (default {defaults.trainer.seed})")
    p.add_argument("--family-seed", type=int, help=f"shape family seed (default {defaults.family_seed})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set decoder.width=256 --set points_per_shape=1024")
    p.add_argument("--threads", type=int, help="torch threads of the training process")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the prior and checkpoint that --out holds")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def prior_config(args: argparse.Namespace) -> CategoryPriorConfig:
    """The training config: defaults, then ``--set`` values, then the named options."""
    raw: dict = {}
    for dotted, value in parse_overrides(args.set).items():
        set_dotted(raw, dotted, value)
    for option, key in (("instances", "instances"), ("family_seed", "family_seed"), ("steps", "trainer.steps"),
                        ("seed", "trainer.seed")):
        if getattr(args, option) is not None:
            set_dotted(raw, key, getattr(args, option))
    if args.no_progress:
        set_dotted(raw, "trainer.progress", False)
    config = dataclass_from_mapping(CategoryPriorConfig(), raw, "category-prior")
    config.validate("category-prior")
    return config


def _check_output(args: argparse.Namespace, checkpoint: Path) -> None:
    check_model_output(args.out, overwrite=args.overwrite, resume=args.resume, resumable=checkpoint)
    if (args.out / "prior.yaml").is_file() and not (args.overwrite or (args.resume and checkpoint.is_file())):
        raise OutputError(f"--out {args.out} already holds a category prior ({args.out / 'prior.yaml'}); pass "
                          "--overwrite to replace it, or choose another --out")


def command_line(args: argparse.Namespace) -> str:
    """The command as given (its options, for the provenance), e.g. ``selfpose category-prior --category mug ...``."""
    words = ["selfpose", "category-prior"]
    for key, value in vars(args).items():
        if key in ("func", "command", "debug") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        words += [flag] if value is True else [w for v in values for w in (flag, str(v))]
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    check_run_flags(args, "the training")
    config = prior_config(args)
    checkpoint = args.out / "train" / "checkpoint.pt"
    _check_output(args, checkpoint)
    with OutputLock(args.out):
        _check_output(args, checkpoint)
        if args.threads:
            torch.set_num_threads(args.threads)
        prior = train_category_prior(args.category, args.out, config, resume=args.resume, device=args.device,
                                     command=command_line(args))
    l1 = prior.metrics["final_losses"].get("sdf_l1", float("nan"))
    print(f"wrote {args.category} shape prior {args.out} ({config.instances} instances, latent "
          f"{prior.latent_size}, {config.trainer.steps} steps, clamped SDF L1 {l1:.4f})")
    return 0
