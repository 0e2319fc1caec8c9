"""Pre-training of the detector and the pose network on synthetic renders (the lower bound), optionally mixed with
real frames at known poses (the supervised upper bound). One loop trains both networks: each step draws a batch of
pose crops and a batch of detector images.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from selfpose_core.data.bop import BopDataset
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.real_crops import RealCrops, RealScenes, index_bop
from selfpose_core.data.synthetic import SyntheticConfig, SyntheticCrops, SyntheticScenes
from selfpose_core.config_io import dataclass_from_mapping, read_yaml_mapping, require_at_least, set_dotted, yaml_safe
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.symmetry import symmetry_transforms
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.losses import coordinate_losses, detector_losses, keypoint_losses, mask_loss
from selfpose_core.models.trainer import Trainer, TrainerConfig
from selfpose_core.types import CameraIntrinsics, ObjectModel

log = logging.getLogger(__name__)


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
    batches_ds = StepBatches(syn_crops, syn_scenes, config.crop_batch, config.scene_batch, steps, seed,
                             real_crops, real_scenes, config.real_fraction, config.crop_pool, config.scene_pool)

    def batches(start_step: int) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        first = start_step * config.trainer.grad_accum
        sub = torch.utils.data.Subset(batches_ds, range(first, steps))
        loader = DataLoader(sub, batch_size=None, shuffle=False, num_workers=config.workers,
                            worker_init_fn=_worker_init if config.workers else None,
                            prefetch_factor=4 if config.workers else None, persistent_workers=False)
        yield from loader

    det, net = bundle.detector.to(device), bundle.pose_net.to(device)
    w = config.losses

    def step_fn(batch: dict[str, dict[str, torch.Tensor]], step: int) -> dict[str, torch.Tensor]:
        crops = {k: v.to(device) for k, v in batch["crops"].items()}
        scenes = {k: v.to(device) for k, v in batch["scenes"].items()}
        res = pose_losses(net, crops, config, step)
        d = detector_losses(det(scenes["image"]), scenes["boxes"], scenes["present"], scenes["masks"], det_stride)
        det_loss = w.heatmap * d["heatmap"] + w.box * d["box"] + w.detector_mask * d["mask"]
        res.update({f"det_{k}": v for k, v in d.items()})
        res["loss"] = res["pose_loss"] + det_loss
        return res

    trainer = Trainer({"detector": det, "pose_net": net}, out_dir / "train", config.trainer, device=device,
                      name="pretrain")
    last = trainer.fit(batches, step_fn, resume=resume)
    spec.metrics = {"final_losses": {k: round(v, 5) for k, v in last.items()}}
    spec.provenance.setdefault("stages", []).append(
        {"stage": "pretrain_synthetic" if real_crops is None else "pretrain_supervised_real",
         "steps": config.trainer.steps, "real_fraction": config.real_fraction if real_crops is not None else 0.0,
         "config": yaml_safe(asdict(config))})
    det.eval()
    net.eval()
    bundle.save(out_dir)
    return bundle
