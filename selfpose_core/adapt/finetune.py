"""Stage ``pseudo_label_finetune``: supervised fine-tuning on the pseudo labels of multiview consensus.

Real frames of the recording with their pseudo poses, boxes and visible masks train the pose network and the
detector exactly like ground truth would (same losses as pre-training), mixed in every batch with synthetic
renders (``real_fraction`` of the samples are real): the synthetic half anchors the networks to correct geometry
and guards against collapse onto pseudo-label errors (the joint synthetic + real batches of seed 003, Eq. 12).
Only instances with ``confidence >= min_confidence`` are used; frames without one are not shown to the detector.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from selfpose_core.config_io import require_at_least
from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.adapt.stage import StageResult
from selfpose_core.data.bop import BopSample, GtInstance
from selfpose_core.data.real_crops import RealCrops, RealInstance, RealScenes
from selfpose_core.data.recording import Recording
from selfpose_core.data.synthetic import SyntheticConfig, SyntheticCrops, SyntheticScenes
from selfpose_core.errors import ConfigError
from selfpose_core.models.harness import LossWeights, StepBatches, TrainingJob, joint_losses, step_batches
from selfpose_core.models.trainer import TrainerConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FinetuneConfig:
    """``pseudo_label_finetune`` section of config/adapt.yaml."""

    min_confidence: float = 0.3
    real_fraction: float = 0.5  # share of real (pseudo-labelled) samples per batch; the rest synthetic
    crop_batch: int = 32
    scene_batch: int = 8
    crop_pool: int = 2048  # synthetic samples rendered once and reused, as in pre-training (0: render every one)
    scene_pool: int = 512
    train_detector: bool = True
    background_swap: float = 0.5  # share of the real detector images shown on a random background (objects kept
                                  # by their pseudo visible masks): the detector learns the objects, not the room
    keypoint_sigma: float = 0.1
    symmetry_samples: int = 36
    frame_cache: int = 256  # decoded frames kept in memory
    losses: LossWeights = field(default_factory=LossWeights)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig.tabletop)  # the pre-training's view prior
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=1000, lr=1e-3, warmup_steps=20,
                                                                         checkpoint_every=100, log_every=10))

    def validate(self, where: str = "pseudo_label_finetune") -> None:
        if not 0.0 < self.real_fraction <= 1.0:
            raise ConfigError(f"{where}.real_fraction must be in (0, 1], got {self.real_fraction}")
        for key in ("min_confidence", "background_swap"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        require_at_least(self, ("crop_batch", "scene_batch", "frame_cache"), 1, where)
        if self.crop_pool < 0 or self.scene_pool < 0:
            raise ConfigError(f"{where}.crop_pool and scene_pool must be >= 0, got {self.crop_pool}, {self.scene_pool}")
        self.trainer.validate(f"{where}.trainer")


class PseudoLabelledFrames:
    """The recording's frames with their pseudo labels, readable like a BOP split (``sample(scene, im)``) so the
    real-crop datasets of pre-training serve them unchanged. Scene 1; image id = recording frame index."""

    def __init__(self, recording: Recording, pseudo: PseudoLabels, obj_ids: list[int], min_confidence: float,
                 cache_size: int = 256) -> None:
        self.recording = recording
        self.root = Path(recording.path)
        self.obj_ids = obj_ids
        self.by_frame: dict[int, list[Any]] = {}
        for p in pseudo.confident(min_confidence):
            if p.mask is not None:
                self.by_frame.setdefault(p.frame, []).append(p)
        self.scene_ids = [1]
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self.cache_size = cache_size

    def image_ids(self, scene_id: int) -> list[int]:
        return sorted(self.by_frame)

    def instances(self) -> list[RealInstance]:
        return [RealInstance(1, i, p.obj_index, p.T_cam_obj) for i in sorted(self.by_frame) for p in self.by_frame[i]]

    def sample(self, scene_id: int, im_id: int, *, load_depth: bool = True, load_masks: bool = True) -> BopSample:
        frame = self._cache.get(im_id)
        if frame is None:
            frame = self.recording[im_id]
            self._cache[im_id] = frame
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(im_id)
        gt = []
        for p in self.by_frame.get(im_id, []):
            ys, xs = np.nonzero(p.mask)
            bbox = np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]) if len(xs) else \
                np.full(4, -1)
            gt.append(GtInstance(self.obj_ids[p.obj_index], p.T_cam_obj, bbox.astype(np.int64), float(p.visib_fract),
                                 p.mask if load_masks else None))
        return BopSample(scene_id, im_id, frame, gt)


class PseudoLabelFinetune:
    """Stage ``pseudo_label_finetune`` (module docstring). Needs ``ctx.pseudo`` (run multiview_consensus first)."""

    name: ClassVar[str] = "pseudo_label_finetune"
    Config: ClassVar[type] = FinetuneConfig

    def run(self, ctx: AdaptContext, cfg: FinetuneConfig) -> StageResult:
        cfg.validate()
        if ctx.pseudo is None:
            raise ConfigError("pseudo_label_finetune needs pseudo labels: list multiview_consensus before it in "
                              "the stages of the adapt config")
        bundle = ctx.bundle
        spec = bundle.spec
        obj_ids = [o.obj_id for o in spec.objects]
        real = PseudoLabelledFrames(ctx.recording, ctx.pseudo, obj_ids, cfg.min_confidence, cfg.frame_cache)
        instances = real.instances()
        if not instances:
            reason = (f"no pseudo label has confidence >= {cfg.min_confidence}: the consensus found no object "
                      "(see its report section) or min_confidence is too high; the networks are unchanged")
            log.warning("pseudo_label_finetune: %s", reason)
            return StageResult(details={"skipped": reason, "instances": 0})
        tcfg = ctx.trainer_config(self.name, cfg.trainer)
        geoms = ctx.geometries(cfg.symmetry_samples)
        camera = ctx.camera
        crop, stride = spec.pose_net.crop_size, spec.pose_net.backbone.out_stride
        det_stride = spec.detector.backbone.out_stride
        dw = spec.detector.input_width
        dh = int(round(camera.height * dw / camera.width))
        steps = tcfg.steps * tcfg.grad_accum
        seed = ctx.data_seed(self.name)
        n_crops, n_scenes = steps * cfg.crop_batch, steps * cfg.scene_batch
        syn_crops = SyntheticCrops(geoms, camera, n_crops, seed, crop, stride, cfg.synthetic)
        syn_scenes = SyntheticScenes(geoms, camera, dw, dh, n_scenes, seed, det_stride, cfg.synthetic)
        real_crops = RealCrops(real, instances, geoms, n_crops, seed, crop, stride, cfg.synthetic,
                               n_sym=syn_crops.n_sym)
        real_scenes = RealScenes(real, obj_ids, geoms, dw, dh, n_scenes, seed, det_stride, cfg.synthetic,
                                 background_swap=cfg.background_swap)
        data = StepBatches(syn_crops, syn_scenes, cfg.crop_batch, cfg.scene_batch, steps, seed, real_crops,
                           real_scenes, cfg.real_fraction, cfg.crop_pool, cfg.scene_pool)
        log.info("pseudo_label_finetune: %d pseudo-labelled instances in %d frames, %.0f%% real samples",
                 len(instances), len(real.image_ids(1)), 100 * cfg.real_fraction)
        device = ctx.device
        det, net = bundle.detector.to(device), bundle.pose_net.to(device)
        net_f = ctx.wrap(net)
        det_f = ctx.wrap(det) if cfg.train_detector else None

        def losses(batch: dict[str, dict[str, torch.Tensor]], step: int) -> dict[str, torch.Tensor]:
            return joint_losses(net_f, det_f, batch, cfg.losses, cfg.keypoint_sigma, det_stride, device)

        modules = {"pose_net": net} | ({"detector": det} if cfg.train_detector else {})
        record, _ = ctx.train(TrainingJob(self.name, cfg, modules, step_batches(data, tcfg.grad_accum), losses,
                                          {"instances": len(instances)}), tcfg)
        det.eval()
        return StageResult(losses={k: round(v, 6) for k, v in record.final_losses.items()},
                           details={"instances": len(instances), "frames": len(real.image_ids(1)),
                                    "real_fraction": cfg.real_fraction})
