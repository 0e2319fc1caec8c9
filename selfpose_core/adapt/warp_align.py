"""Stage ``warp_align``: photometric warp-alignment fine-tuning (Sock et al., Sec. 3.3, Eq. 4-5, Fig. 3).

For a pair of real crops of the same object (source s, target t) the network predicts both poses; the object
surface seen in the target crop (depth rendered at the predicted target pose) is moved into the source camera by
the relative motion of Eq. 4, ``T_s<-t = T_s T_t^-1`` (the predicted poses' camera motion), projected into the
source crop and the source image sampled there (inverse warping: the same correspondence as the paper's forward
warp of the source pixels, without splatting). Eq. 5: ``1 - MS-SSIM`` between the warped source and the target
crop masked by the predicted silhouette, over the pixels that are valid (inside the target silhouette, seen by
the source camera, not self-occluded there per the depth rendered at the predicted source pose).

Pairs: the robot gives the camera motion for free, so pairs are chosen by the angle of the relative camera rotation
(odometry, drift-corrected by the consensus when it ran) instead of the predicted pose difference: every step
samples ``sample_frames`` instances and keeps the ``batch_size`` closest same-object pairs under ``max_angle_deg``
(supplementary: 25 images, the 25 closest pairs, < 60 deg). The predicted relative motion is also checked against
the odometry: the mean distance of the object's keypoints moved by ``T_t`` and by ``T_t<-s(odometry) T_s``, over
the diameter, is logged and, with ``odometry_weight`` > 0 (0 = the paper), trained. A batch of synthetic crops
with the pre-training losses is added every step (``sup_weight``) against collapse.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.network_pose import network_pose, plausible, vertex_consistency
from selfpose_core.adapt.perceptual import ms_ssim_loss
from selfpose_core.adapt.pose_consistency import weighted_mean
from selfpose_core.adapt.recording_crops import CropJitter, RecordingInstance, crop_batch
from selfpose_core.adapt.stage import StageResult
from selfpose_core.adapt.stage_training import ObjectTensors, prepare_stage, train_stage
from selfpose_core.config_io import require_at_least
from selfpose_core.errors import ConfigError, DatasetError
from selfpose_core.geometry.se3 import invert, rotation_angle
from selfpose_core.models.pretrain import PretrainConfig, pose_losses
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render
from selfpose_core.render.warp import warp_image

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WarpAlignConfig:
    """``warp_align`` section of config/adapt.yaml (defaults: Sock et al. supplementary where it says)."""

    sample_frames: int = 25  # supplementary: 25 real images per minibatch
    batch_size: int = 25  # supplementary: the 25 closest pairs
    max_angle_deg: float = 60.0  # Sec. 4.1: pairs less than 60 deg apart
    min_angle_deg: float = 0.0
    odometry_weight: float = 0.5  # 0 = the paper; > 0: also train the predicted relative motion towards the odometry
    sup_weight: float = 1.0  # synthetic crops with the pre-training losses (joint batches against collapse)
    synthetic_batch: int = 8
    ms_ssim_scales: int = 5
    occlusion_tolerance: float = 0.02  # relative depth difference above which a source pixel is occluded
    crop_padding: float = 1.3
    shift_std_px: float = 3.0
    scale_jitter: tuple[float, float] = (0.9, 1.1)
    keypoint_sigma: float = 0.1
    plausible_offset: float = 0.5  # poses whose object centre projects this x crop size outside the crop, or
    plausible_size: tuple[float, float] = (0.15, 3.0)  # whose projected diameter is outside this x crop: skipped
    min_confidence: float = 0.3  # pseudo-label confidence of the real crops
    min_detector_score: float = 0.3  # without pseudo labels: detector score of the real crops
    max_frames: int = 0  # without pseudo labels: detect on at most this many frames (0 = all)
    symmetry_samples: int = 36
    # supplementary: Adam, lr 1e-4 dropped by 0.1 every 25 epochs (here: cosine from lr to lr * final_lr_ratio)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=1000, lr=1e-4, final_lr_ratio=0.1,
                                                                         warmup_steps=20, checkpoint_every=100))

    def validate(self, where: str = "warp_align") -> None:
        require_at_least(self, ("sample_frames", "batch_size", "synthetic_batch", "ms_ssim_scales", "symmetry_samples"), 1, where)
        if self.sample_frames < 2:
            raise ConfigError(f"{where}.sample_frames must be >= 2, got {self.sample_frames}")
        if not 0 <= self.min_angle_deg < self.max_angle_deg <= 180:
            raise ConfigError(f"{where}: need 0 <= min_angle_deg < max_angle_deg <= 180, got "
                              f"{self.min_angle_deg}, {self.max_angle_deg}")
        require_at_least(self, ("odometry_weight", "sup_weight", "occlusion_tolerance", "shift_std_px"), 0, where)
        if not 0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            raise ConfigError(f"{where}.scale_jitter must be [min, max] with 0 < min <= max, got {self.scale_jitter}")
        if not (self.plausible_offset >= 0 and 0 <= self.plausible_size[0] < self.plausible_size[1]):
            raise ConfigError(f"{where}: plausible_offset must be >= 0 and plausible_size [min, max] with "
                              f"0 <= min < max, got {self.plausible_offset}, {self.plausible_size}")
        self.trainer.validate(f"{where}.trainer")

    def jitter(self) -> CropJitter:
        # no photometric augmentation: the two crops are compared photometrically
        return CropJitter(self.crop_padding, self.shift_std_px, tuple(self.scale_jitter), 0.0, 0.0, 0.0)


def relative_angles(T_world_cam: np.ndarray) -> np.ndarray:
    """(N, N) angles (radians) of the relative rotations between the cameras ``T_world_cam`` (N, 4, 4)."""
    R = T_world_cam[:, :3, :3]
    return rotation_angle(R[:, None], R[None, :])


def closest_pairs(instances: list[RecordingInstance], T_world_cam: np.ndarray, candidates: np.ndarray, n: int,
                  max_angle: float, min_angle: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``n`` (source, target) index pairs among ``candidates`` (indices into ``instances``): same object,
    different frames, camera rotation angle in [min_angle, max_angle) radians, smallest angles first; the
    direction of each pair is random."""
    frames = np.array([instances[i].frame for i in candidates])
    objs = np.array([instances[i].obj_index for i in candidates])
    ang = relative_angles(T_world_cam[frames])
    iu, ju = np.triu_indices(len(candidates), 1)
    ok = (objs[iu] == objs[ju]) & (frames[iu] != frames[ju]) & (ang[iu, ju] < max_angle) & (ang[iu, ju] >= min_angle)
    ok &= np.isfinite(ang[iu, ju])
    iu, ju = iu[ok], ju[ok]
    order = np.argsort(ang[iu, ju], kind="stable")[:n]
    flip = rng.random(len(order)) < 0.5
    return [(int(candidates[ju[k]]), int(candidates[iu[k]])) if f else (int(candidates[iu[k]]), int(candidates[ju[k]]))
            for k, f in zip(order, flip)]


def warp_photometric_loss(src: torch.Tensor, tgt: torch.Tensor, K_src: torch.Tensor, K_tgt: torch.Tensor,
                          R_src: torch.Tensor, t_src: torch.Tensor, R_tgt: torch.Tensor, t_tgt: torch.Tensor,
                          meshes: list[RenderMesh], *, scales: int = 5, occlusion_tolerance: float = 0.02
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4-5: ``1 - MS-SSIM`` between the source crop warped into the target view and the masked target crop.

    Args:
        src, tgt: crops (B, C, H, W) (same size); K_src, K_tgt: their cameras (B, 3, 3).
        R_src, t_src, R_tgt, t_tgt: the object poses T_cam_obj in the two crops (B, 3, 3), (B, 3).
        meshes: the B objects' render meshes.

    Returns: loss (B,), warped source (B, C, H, W), valid pixels (B, H, W) bool. Differentiable in the poses (via
    the rendered target depth, the relative motion and the sampling positions) and the images.
    """
    B, _, H, W = tgt.shape
    dt = render(meshes, R_tgt, t_tgt, K_tgt.to(R_tgt.dtype), (H, W), coords=False, attributes=False,
                silhouette=False, visibility=False)
    with torch.no_grad():
        ds = render(meshes, R_src.detach(), t_src.detach(), K_src.to(R_src.dtype), (H, W), coords=False,
                    attributes=False, silhouette=False, visibility=False).depth
    R_st = R_src @ R_tgt.transpose(-1, -2)  # Eq. 4 (inverted: T_s<-t = T_s T_t^-1)
    t_st = t_src - (R_st @ t_tgt[..., None])[..., 0]
    warped, valid = warp_image(src, dt.depth, K_tgt.to(R_tgt.dtype), K_src.to(R_tgt.dtype), R_st, t_st,
                               depth_src=ds, occlusion_tol=occlusion_tolerance)
    valid = valid & dt.mask
    target = tgt * valid[:, None].to(tgt.dtype)
    return ms_ssim_loss(warped, target, valid, scales=scales), warped, valid


class WarpAlign:
    """Stage ``warp_align`` (module docstring)."""

    name: ClassVar[str] = "warp_align"
    Config: ClassVar[type] = WarpAlignConfig

    def run(self, ctx: AdaptContext, cfg: WarpAlignConfig) -> StageResult:
        setup = prepare_stage(ctx, self.name, cfg, synthetic=cfg.sup_weight > 0)
        instances, store = setup.instances, setup.store
        if not np.isfinite(store.T_world_cam[[i.frame for i in instances]]).all():
            instances = setup.instances = [i for i in instances if np.isfinite(store.T_world_cam[i.frame]).all()]
        spec = ctx.bundle.spec
        size = spec.pose_net.crop_size
        jitter = cfg.jitter()
        max_a, min_a = np.radians(cfg.max_angle_deg), np.radians(cfg.min_angle_deg)
        probe = closest_pairs(instances, store.T_world_cam, np.arange(len(instances)), 1, max_a, min_a,
                              np.random.default_rng(0))
        if not probe:
            raise DatasetError(f"recording {ctx.recording.path}: no two views of one object are between "
                               f"{cfg.min_angle_deg} and {cfg.max_angle_deg} deg apart; warp_align needs pairs")

        def batches(start_step: int) -> Iterator[dict[str, Any]]:
            for b in range(start_step * setup.trainer.grad_accum, setup.n_batches):
                rng = np.random.default_rng([setup.seed, b])
                pairs: list[tuple[int, int]] = []
                while not pairs:
                    cand = rng.choice(len(instances), min(cfg.sample_frames, len(instances)), replace=False)
                    pairs = closest_pairs(instances, store.T_world_cam, cand, cfg.batch_size, max_a, min_a, rng)
                src = [instances[i] for i, _ in pairs]
                tgt = [instances[j] for _, j in pairs]
                T_odo = np.stack([invert(store.T_world_cam[t.frame]) @ store.T_world_cam[s.frame]
                                  for s, t in zip(src, tgt)])  # T_tgt<-src of the cameras
                out = {"src": crop_batch(store, src, size, rng, jitter),
                       "tgt": crop_batch(store, tgt, size, rng, jitter),
                       "T_tgt_src": torch.as_tensor(T_odo, dtype=torch.float32)}
                syn = setup.synthetic_batch(b)
                if syn is not None:
                    out["syn"] = syn
                yield out

        return train_stage(ctx, self.name, cfg, setup, batches, lambda model, batch: warp_align_losses(
            model, batch, setup.objs, spec.objects, cfg, setup.pretrain, ctx.device))


def warp_align_losses(net: torch.nn.Module, batch: dict[str, Any], objs: ObjectTensors, objects: list,
                      cfg: WarpAlignConfig, pcfg: PretrainConfig, device: str = "cpu") -> dict[str, torch.Tensor]:
    """One step's losses on a batch of pairs (``src``/``tgt`` crop batches, ``T_tgt_src`` odometry (B, 4, 4),
    optional ``syn``): ``loss``, ``photometric`` (Eq. 5), ``odometry`` (keypoint residual of the predicted relative
    motion vs odometry, diameters), ``sup_synthetic``, ``valid`` (fraction of pairs with two poses)."""
    src, tgt = batch["src"], batch["tgt"]
    oi = src["obj_index"].to(device)
    B = len(oi)
    images = torch.cat([src["image"], tgt["image"]]).to(device)
    K = torch.cat([src["K"], tgt["K"]]).to(device)
    out = net(images, torch.cat([oi, oi]))
    R, t, v = network_pose(net, out, torch.cat([oi, oi]), K, objects)
    v = v & plausible(R, t, K, images.shape[-1], objs.diameters[torch.cat([oi, oi]).cpu()].to(device),
                      max_offset=cfg.plausible_offset, size_range=tuple(cfg.plausible_size))
    R_s, t_s, R_t, t_t = R[:B], t[:B], R[B:], t[B:]
    meshes = objs.meshes_of(oi.cpu())
    photo, _, valid_px = warp_photometric_loss(src["image"].cpu(), tgt["image"].cpu(), src["K"], tgt["K"], R_s.cpu(),
                                               t_s.cpu(), R_t.cpu(), t_t.cpu(), meshes, scales=cfg.ms_ssim_scales,
                                               occlusion_tolerance=cfg.occlusion_tolerance)
    photo = photo.to(device)
    valid = v[:B] & v[B:] & (valid_px.flatten(1).sum(-1) > 0).to(device)
    w = (src["weight"] * tgt["weight"]).to(device) * valid.to(photo.dtype)
    T_odo = batch["T_tgt_src"].to(device).to(R.dtype)
    R_o = T_odo[:, :3, :3] @ R_s
    t_o = (T_odo[:, :3, :3] @ t_s[..., None])[..., 0] + T_odo[:, :3, 3]
    kp = torch.as_tensor(np.stack([objects[int(k)].keypoints for k in oi.cpu()]), dtype=R.dtype, device=device)
    odo = vertex_consistency(R_t, t_t, R_o, t_o, kp, [objs.symmetries[int(k)].to(device) for k in oi.cpu()],
                             objs.diameters[oi.cpu()].to(device))
    res = {"photometric": weighted_mean(photo, w), "odometry": weighted_mean(odo, w), "valid": valid.float().mean()}
    loss = res["photometric"] + cfg.odometry_weight * res["odometry"]
    if "syn" in batch:
        s = pose_losses(net, {k: v.to(device) for k, v in batch["syn"].items()}, pcfg, step=1 << 30)["pose_loss"]
        res["sup_synthetic"] = s
        loss = loss + cfg.sup_weight * s
    res["loss"] = loss
    return res
