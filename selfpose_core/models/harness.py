"""The training harness: every training job of selfpose runs here.

A job (:class:`TrainingJob`) is a typed config, a data recipe -- ``batches(start_step)``, the batches of optimiser
steps ``start_step``, ``start_step + 1``, ... so that a resumed run sees the data an uninterrupted one would -- and a
loss function ``losses(batch, step) -> {"loss": ..., scalars}``. :func:`run_job` trains it on the one loop of
:class:`~selfpose_core.models.trainer.Trainer` (iteration, gradient accumulation, checkpoints, resume, logging) and
writes one :class:`TrainingRecord` into the bundle's provenance. Batches that mix synthetic and real samples come
from :class:`StepBatches`, turned into a data recipe by :func:`step_batches`; the joint detector + pose network
jobs (pre-training, pseudo-label fine-tuning, NOL) share :func:`joint_losses`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from selfpose_core.config_io import yaml_safe
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.losses import coordinate_losses, detector_losses, keypoint_losses, mask_loss
from selfpose_core.models.trainer import StepFn, Trainer

Batches = Callable[[int], Iterator[Any]]


@dataclass(slots=True)
class LossWeights:
    """Weights of the loss terms. Eq. 4-5 sum 18 normalised coordinates each and would drown the mask loss in the
    shared layers (the mask then stays unlearned and Eq. 3 averages over the wrong pixels), hence 0.1."""

    mask: float = 1.0
    keypoint: float = 0.1
    offset: float = 0.1
    coords: float = 3.0
    error: float = 1.0
    heatmap: float = 1.0
    box: float = 1.0
    detector_mask: float = 1.0


@dataclass(slots=True)
class TrainingRecord:
    """One training job in bundle.yaml's ``provenance.stages``: which job, how many optimiser steps, its config,
    its final losses (mean of the last logging window) and job-specific details (sample counts, inputs)."""

    stage: str
    steps: int
    config: dict[str, Any]
    final_losses: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps": self.steps, "config": self.config,
                "final_losses": {k: round(v, 6) for k, v in self.final_losses.items()}, "details": self.details}


@dataclass(slots=True)
class TrainingJob:
    """A job for :func:`run_job`: ``modules`` are trained (and left in eval mode) by ``losses`` on ``batches``."""

    name: str
    config: Any  # the job's config dataclass, recorded in the provenance
    modules: dict[str, nn.Module]
    batches: Batches
    losses: StepFn
    details: dict[str, Any] = field(default_factory=dict)


def run_job(job: TrainingJob, trainer: Trainer, provenance: dict[str, Any], *, resume: bool) -> TrainingRecord:
    """Train ``job`` with ``trainer`` (built on ``job.modules``), continuing from its checkpoint with ``resume``;
    append the job's :class:`TrainingRecord` to ``provenance["stages"]`` and return it."""
    last = trainer.fit(job.batches, job.losses, resume=resume)
    for m in job.modules.values():
        m.eval()
    record = TrainingRecord(job.name, int(trainer.config.steps), yaml_safe(asdict(job.config)),
                            {k: float(v) for k, v in last.items()}, yaml_safe(job.details))
    provenance.setdefault("stages", []).append(record.to_yaml())
    return record


class StepBatches(Dataset):
    """Item ``i`` = the whole batch of training step ``i``: {"crops": collated crops, "scenes": collated images},
    each sample drawn from the synthetic source or (with probability ``real_fraction``) the real one.

    With ``crop_pool`` / ``scene_pool`` > 0 the synthetic samples of a step are drawn at random (seeded by the step)
    from the first ``pool`` indices and kept in memory once rendered, so every sample is rendered once per process.
    """

    def __init__(self, crops: Dataset, scenes: Dataset, crop_batch: int, scene_batch: int, length: int, seed: int,
                 real_crops: Dataset | None = None, real_scenes: Dataset | None = None,
                 real_fraction: float = 0.0, crop_pool: int = 0, scene_pool: int = 0) -> None:
        self.crops, self.scenes = crops, scenes
        self.real_crops, self.real_scenes = real_crops, real_scenes
        self.crop_batch, self.scene_batch = crop_batch, scene_batch
        self.length, self.seed, self.real_fraction = length, seed, real_fraction
        self.pools = {10: crop_pool, 11: scene_pool}
        self._cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.length

    def _draw(self, syn: Dataset, real: Dataset | None, n: int, step: int, salt: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, salt])
        items = []
        pool = self.pools[salt]
        for j in range(n):
            index = step * n + j
            use_real = real is not None and rng.random() < self.real_fraction
            if use_real:
                items.append(real[index])
            elif pool > 0:
                key = (salt, int(rng.integers(pool)))
                if key not in self._cache:
                    self._cache[key] = syn[key[1]]
                items.append(self._cache[key])
            else:
                items.append(syn[index])
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def __getitem__(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        return {"crops": self._draw(self.crops, self.real_crops, self.crop_batch, step, 10),
                "scenes": self._draw(self.scenes, self.real_scenes, self.scene_batch, step, 11)}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def step_batches(data: Dataset, grad_accum: int, workers: int = 0) -> Batches:
    """The data recipe of a dataset whose item ``i`` is the ``i``-th batch (``grad_accum`` per optimiser step),
    read in order by ``workers`` DataLoader processes (0: in this process)."""

    def batches(start_step: int) -> Iterator[Any]:
        sub = Subset(data, range(start_step * grad_accum, len(data)))
        yield from DataLoader(sub, batch_size=None, shuffle=False, num_workers=workers,
                              worker_init_fn=_worker_init if workers else None,
                              prefetch_factor=4 if workers else None, persistent_workers=False)

    return batches


def supervised_pose_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], keypoint_net: bool,
                           w: LossWeights, sigma: float, keypoint_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Supervised losses of a pose network's output ``out`` on a crop batch (keys of SyntheticCrops); ``pose_loss``
    is their weighted sum (the keypoint term scaled by ``keypoint_scale``: 0 during the offset warm-up)."""
    res = {"mask": mask_loss(out["mask_logits"], batch["visible"])}
    if keypoint_net:
        kp = KeypointNet.keypoints(out, batch["visible"])
        l_key, l_off = keypoint_losses(kp, out["votes"], batch["keypoints"], batch["scale"], batch["visible"], sigma)
        res.update(keypoint=l_key, offset=l_off)
        res["pose_loss"] = w.mask * res["mask"] + keypoint_scale * w.keypoint * l_key + w.offset * l_off
    else:
        l_coord, l_err = coordinate_losses(out["coords"], out["error"], batch["coords"], batch["silhouette"],
                                           batch["visible"])
        res.update(coords=l_coord, error=l_err)
        res["pose_loss"] = w.mask * res["mask"] + w.coords * l_coord + w.error * l_err
    return res


def joint_losses(pose_net: nn.Module, detector: nn.Module | None, batch: dict[str, dict[str, torch.Tensor]],
                 w: LossWeights, sigma: float, det_stride: int, device: str | torch.device,
                 keypoint_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The loss of a :class:`StepBatches` batch for the pose network (plain or DDP-wrapped) and, unless
    ``detector`` is None, the detector: ``loss`` = pose_loss + weighted heatmap, box and mask terms (``det_*``)."""
    crops = {k: v.to(device) for k, v in batch["crops"].items()}
    is_kp = isinstance(getattr(pose_net, "module", pose_net), KeypointNet)
    res = supervised_pose_losses(pose_net(crops["image"], crops["obj_index"]), crops, is_kp, w, sigma, keypoint_scale)
    res["loss"] = res["pose_loss"]
    if detector is not None:
        scenes = {k: v.to(device) for k, v in batch["scenes"].items()}
        d = detector_losses(detector(scenes["image"]), scenes["boxes"], scenes["present"], scenes["masks"],
                            det_stride)
        res.update({f"det_{k}": v for k, v in d.items()})
        res["loss"] = res["loss"] + w.heatmap * d["heatmap"] + w.box * d["box"] + w.detector_mask * d["mask"]
    return res
