"""Pre-training of the detector and the pose network on synthetic renders (the lower bound), optionally mixed with
real frames at known poses (the supervised upper bound): a job on the training harness (models/harness.py) whose
steps draw a batch of pose crops and a batch of detector images.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfpose_core.data.bop import BopDataset
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.real_crops import RealCrops, RealScenes, index_bop
from selfpose_core.data.synthetic import SyntheticConfig, SyntheticCrops, SyntheticScenes
from selfpose_core.config_io import dataclass_from_mapping, read_yaml_mapping, require_at_least, set_dotted
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.symmetry import symmetry_transforms
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.models.harness import (LossWeights, StepBatches, TrainingJob, joint_losses, run_job, step_batches,
                                          supervised_pose_losses)
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.trainer import Trainer, TrainerConfig
from selfpose_core.types import CameraIntrinsics, ObjectModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PretrainConfig:
    """config/pretrain.yaml. ``real_fraction`` > 0 mixes in real frames with ground-truth poses (upper bound only)."""

    pose_net: str = "keypoint"
    crop_size: int = 64
    pose_backbone: BackboneConfig = field(default_factory=BackboneConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop_batch: int = 32
    scene_batch: int = 8
    keypoint_sigma: float = 0.1
    offset_warmup_steps: int = 150  # DSC-PoseNet: offset loss only at first, then the keypoint loss too
    symmetry_samples: int = 36  # rotations sampled for a continuous symmetry
    workers: int = 1
    # Render pools: > 0 draws each step's synthetic samples from the first ``crop_pool`` / ``scene_pool`` samples,
    # each rendered once and then reused (about 60 % of a step's CPU time is rendering); 0 renders every sample.
    crop_pool: int = 2048
    scene_pool: int = 512
    real_fraction: float = 0.0
    losses: LossWeights = field(default_factory=LossWeights)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=1500, lr=2e-3, checkpoint_every=250))

    def validate(self, where: str = "pretrain") -> None:
        if self.pose_net not in ("keypoint", "correspondence"):
            raise ConfigError(f"{where}.pose_net must be 'keypoint' or 'correspondence', got {self.pose_net!r}")
        if self.crop_size < 16 or self.crop_size % self.pose_backbone.out_stride:
            raise ConfigError(f"{where}.crop_size must be >= 16 and a multiple of pose_backbone.out_stride, "
                              f"got {self.crop_size}")
        if not 0.0 <= self.real_fraction <= 1.0:
            raise ConfigError(f"{where}.real_fraction must be in [0, 1], got {self.real_fraction}")
        require_at_least(self, ("crop_batch", "scene_batch"), 1, where)
        for key in ("crop_pool", "scene_pool"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0 (0: no pool), got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"{where}.workers must be >= 0, got {self.workers}")
        self.pose_backbone.validate(f"{where}.pose_backbone")
        self.detector.backbone.validate(f"{where}.detector.backbone")
        self.trainer.validate(f"{where}.trainer")


def load_pretrain_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Read a pretrain YAML (its top-level ``pretrain:`` section or the whole file) and apply ``overrides``."""
    raw: dict[str, Any] = {}
    where = "pretrain"
    if path is not None:
        loaded = read_yaml_mapping(path, "config file")
        raw = loaded.get("pretrain", loaded)
        where = f"{path}: pretrain"
    for dotted, v in (overrides or {}).items():
        set_dotted(raw, dotted, v)
    cfg = dataclass_from_mapping(PretrainConfig(), raw, where)
    cfg.validate(where)
    return cfg


def object_geometries(objects: Sequence[ObjectModel], symmetry_samples: int) -> list[ObjectGeometry]:
    """ObjectGeometry of each object with its symmetry transforms (identity first)."""
    return [ObjectGeometry.from_model(m, symmetry_transforms(m.symmetry, n_continuous=symmetry_samples))
            for m in objects]


def pose_losses(net: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: PretrainConfig,
                step: int) -> dict[str, torch.Tensor]:
    """:func:`supervised_pose_losses` of ``net`` (plain or DDP-wrapped) on a crop batch at training ``step``."""
    out = net(batch["image"], batch["obj_index"])
    is_kp = isinstance(getattr(net, "module", net), KeypointNet)
    return supervised_pose_losses(out, batch, is_kp, cfg.losses, cfg.keypoint_sigma,
                                  0.0 if step < cfg.offset_warmup_steps else 1.0)


def pretrain(objects: Sequence[ObjectModel], camera: CameraIntrinsics, out_dir: str | Path, config: PretrainConfig,
             *, objects_config: str | Path, real: BopDataset | None = None, resume: bool = False,
             provenance: dict[str, Any] | None = None, device: str = "cpu") -> ModelBundle:
    """Train a detector + pose network for ``objects`` and write the bundle to ``out_dir``.

    ``camera``: intrinsics of the robot's camera (synthetic images use it, so object sizes match); ``real``: a BOP
    split with true poses mixed in with ``config.real_fraction`` (upper-bound experiments only). Training state
    (checkpoint.pt, logs/) lives in ``out_dir/train``.
    """
    config.validate()
    out_dir = Path(out_dir)
    if not objects:
        raise ConfigError("pretrain needs at least one object")
    geoms = object_geometries(objects, config.symmetry_samples)
    spec = BundleSpec(
        [BundleObject.from_model(m) for m in objects], os.path.relpath(Path(objects_config).resolve(), out_dir.resolve()),
        PoseNetSpec(config.pose_net, config.crop_size, config.pose_backbone, 9), config.detector,
        (camera.width, camera.height), dict(provenance or {}))
    bundle = ModelBundle.create(spec)
    stride = config.pose_backbone.out_stride
    det_stride = config.detector.backbone.out_stride
    dw = config.detector.input_width
    dh = int(round(camera.height * dw / camera.width))
    steps = config.trainer.steps * config.trainer.grad_accum
    n_crops, n_scenes = steps * config.crop_batch, steps * config.scene_batch
    seed = config.trainer.seed
    syn_crops = SyntheticCrops(geoms, camera, n_crops, seed, config.crop_size, stride, config.synthetic)
    syn_scenes = SyntheticScenes(geoms, camera, dw, dh, n_scenes, seed, det_stride, config.synthetic)
    real_crops = real_scenes = None
    if real is not None and config.real_fraction > 0:
        ids = [m.obj_id for m in objects]
        inst = index_bop(real, ids)
        real_crops = RealCrops(real, inst, geoms, n_crops, seed, config.crop_size, stride, config.synthetic,
                               n_sym=syn_crops.n_sym)
        real_scenes = RealScenes(real, ids, geoms, dw, dh, n_scenes, seed, det_stride, config.synthetic)
        log.info("mixing %d real instances (%.0f%% of samples) into pre-training", len(inst),
                 100 * config.real_fraction)
    data = StepBatches(syn_crops, syn_scenes, config.crop_batch, config.scene_batch, steps, seed,
                       real_crops, real_scenes, config.real_fraction, config.crop_pool, config.scene_pool)
    det, net = bundle.detector.to(device), bundle.pose_net.to(device)

    def losses(batch: dict[str, dict[str, torch.Tensor]], step: int) -> dict[str, torch.Tensor]:
        return joint_losses(net, det, batch, config.losses, config.keypoint_sigma, det_stride, device,
                            0.0 if step < config.offset_warmup_steps else 1.0)

    job = TrainingJob("pretrain_synthetic" if real_crops is None else "pretrain_supervised_real", config,
                      {"detector": det, "pose_net": net}, step_batches(data, config.trainer.grad_accum, config.workers),
                      losses, {"real_fraction": config.real_fraction if real_crops is not None else 0.0})
    record = run_job(job, Trainer(job.modules, out_dir / "train", config.trainer, device=device, name="pretrain"),
                     spec.provenance, resume=resume)
    spec.metrics = {"final_losses": {k: round(v, 5) for k, v in record.final_losses.items()}}
    bundle.save(out_dir)
    return bundle
