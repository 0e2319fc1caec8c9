"""Training a category's shape prior: a DeepSDF auto-decoder (Park et al., CVPR'19, Sec. 4-5) on the signed
distances of the category's generated training instances, a job on the training harness (models/harness.py).

The auto-decoder learns the decoder's weights and one latent per training instance together: each step draws
``shapes_per_batch`` instances and ``points_per_shape`` of their precomputed SDF samples; the loss is DeepSDF's
clamped L1, ``|clamp(F(p; z_i), d) - clamp(s, d)|``, plus the latent prior ``code_reg * |z_i|^2`` (ramped in over
``code_reg_ramp`` steps, as DeepSDF's code does). What SSC-6D trains for 2000 epochs with 512-wide layers is scaled
to a CPU here (docs/categories.md, "Shape prior").
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from selfpose_core.data.sdf_samples import SdfSampling, sdf_samples
from selfpose_core.data.sim.category_shapes import HELDOUT_START, training_instances
from selfpose_core.errors import ConfigError
from selfpose_core.mesh.categories import CATEGORIES
from selfpose_core.models.category_prior import CategoryPrior
from selfpose_core.models.harness import TrainingJob, run_job, step_batches
from selfpose_core.models.sdf_decoder import SdfDecoder, SdfDecoderConfig
from selfpose_core.models.trainer import Trainer, TrainerConfig, seed_everything

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CategoryPriorConfig:
    """One category's prior training (DeepSDF's values in comments, for shapes twice our normalised size)."""

    instances: int = 64  # training instances 0 .. instances - 1 of the family
    family_seed: int = 0
    decoder: SdfDecoderConfig = field(default_factory=SdfDecoderConfig)
    sampling: SdfSampling = field(default_factory=SdfSampling)
    shapes_per_batch: int = 8  # DeepSDF: 64
    points_per_shape: int = 256  # DeepSDF: 16384
    clamp: float = 0.05  # DeepSDF: 0.1
    code_reg: float = 1e-4  # DeepSDF's code: 1e-4
    code_reg_ramp: int = 100
    code_init_std: float = 0.01  # DeepSDF: latents start at N(0, 0.01^2)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        steps=1500, lr=2e-3, warmup_steps=20, checkpoint_every=100, log_every=20))

    def validate(self, where: str = "category_prior") -> None:
        for key, lo, hi in (("instances", 1, HELDOUT_START), ("shapes_per_batch", 1, 4096),
                            ("points_per_shape", 1, 1 << 20)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{where}.{key} must be an integer in {lo}..{hi}, got {value!r}")
        if not 0 < self.clamp <= 1:
            raise ConfigError(f"{where}.clamp must be in (0, 1], got {self.clamp}")
        if self.code_reg < 0 or self.code_reg_ramp < 0 or not self.code_init_std > 0:
            raise ConfigError(f"{where}: code_reg and code_reg_ramp must be >= 0, code_init_std > 0")
        self.decoder.validate(f"{where}.decoder")
        self.sampling.validate(f"{where}.sampling")
        self.trainer.validate(f"{where}.trainer")


class SdfBatches(Dataset):
    """Item ``i`` = the batch of optimiser step ``i``: {"instance": (B,), "points": (B, P, 3), "sdf": (B, P)} drawn
    from precomputed samples with a generator seeded by (seed, i), so a resumed run sees the same batches."""

    def __init__(self, points: torch.Tensor, sdf: torch.Tensor, shapes: int, per_shape: int, length: int,
                 seed: int) -> None:
        self.points, self.sdf = points, sdf  # (N, M, 3), (N, M)
        self.shapes, self.per_shape, self.length, self.seed = shapes, per_shape, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        n, m = self.sdf.shape
        inst = torch.from_numpy(rng.choice(n, self.shapes, replace=self.shapes > n))
        idx = torch.from_numpy(rng.integers(0, m, (self.shapes, self.per_shape)))
        return {"instance": inst, "points": self.points[inst[:, None], idx], "sdf": self.sdf[inst[:, None], idx]}


def instance_samples(category: str, config: CategoryPriorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """SDF samples of the training instances: points (N, M, 3) and distances (N, M), normalised frame. Instance
    ``i``'s samples come from ``default_rng([family_seed, 7, i])``: the same whatever the instance count."""
    pts, sdf = [], []
    for inst in training_instances(category, config.instances, config.family_seed):
        p, d = sdf_samples(inst, config.sampling, np.random.default_rng([config.family_seed, 7, inst.index]))
        pts.append(p)
        sdf.append(d)
    return torch.from_numpy(np.stack(pts)), torch.from_numpy(np.stack(sdf))


def train_category_prior(category: str, out_dir: str | Path, config: CategoryPriorConfig | None = None, *,
                         resume: bool = False, device: str = "cpu", command: str = "") -> CategoryPrior:
    """Train ``category``'s prior and write it to ``out_dir`` (prior.yaml, weights.pt); training state
    (checkpoint.pt, logs/) lives in ``out_dir/train`` and ``resume`` continues from it."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    config = config or CategoryPriorConfig()
    config.validate()
    out_dir = Path(out_dir)
    start = time.monotonic()
    points, sdf = instance_samples(category, config)
    log.info("%s prior: %d SDF samples of %d training instances in %.1f s", category, sdf.numel(), config.instances,
             time.monotonic() - start)
    tc = config.trainer
    seed_everything(tc.seed)
    decoder = SdfDecoder(config.decoder).to(device)
    latents = nn.Embedding(config.instances, config.decoder.latent_size).to(device)
    nn.init.normal_(latents.weight, 0.0, config.code_init_std)
    data = SdfBatches(points, sdf, config.shapes_per_batch, config.points_per_shape, tc.steps * tc.grad_accum,
                      tc.seed)
    d = config.clamp

    def losses(batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        z = latents(batch["instance"].to(device))
        pred = decoder(batch["points"].to(device), z)
        l1 = (pred.clamp(-d, d) - batch["sdf"].to(device).clamp(-d, d)).abs().mean()
        ramp = min(1.0, step / config.code_reg_ramp) if config.code_reg_ramp else 1.0
        reg = z.pow(2).sum(-1).mean()
        return {"loss": l1 + config.code_reg * ramp * reg, "sdf_l1": l1, "latent_sq_norm": reg}

    job = TrainingJob("category_prior", config, {"decoder": decoder, "latents": latents},
                      step_batches(data, tc.grad_accum), losses,
                      {"category": category, "instances": config.instances, "samples_per_instance": sdf.shape[1]})
    provenance: dict[str, Any] = {"command": command or f"train_category_prior({category!r})",
                                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    record = run_job(job, Trainer(job.modules, out_dir / "train", tc, device=device, name=f"prior_{category}"),
                     provenance, resume=resume)
    provenance["seconds"] = round(time.monotonic() - start, 1)
    training = {"family_seed": config.family_seed, "instances": config.instances,
                "instance_indices": f"0..{config.instances - 1}", "sampling": asdict(config.sampling),
                "clamp": config.clamp}
    prior = CategoryPrior(category, decoder.eval(), latents.weight.detach().clone(), training, provenance,
                          {"final_losses": {k: round(v, 6) for k, v in record.final_losses.items()}})
    prior.save(out_dir)
    return prior
