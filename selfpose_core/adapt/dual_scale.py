"""Stage ``dual_scale``: DSC-PoseNet's self-supervision (Yang et al. CVPR 2021, Sec. 3.2, Eq. 6-15).

1. Weak segmentation from the boxes (:mod:`selfpose_core.adapt.weak_segmentation`): pseudo masks y^ with
   uncertain pixels, on fixed crops, re-cut for every training view.
2. Two views of each real instance: the *un-normalised* scale U (a window of fixed image size around the object,
   ``context_fraction`` x the image height, so the object keeps its apparent size) and the *normalised* scale N
   (the square box ``normalized_padding`` x the object box, resized to the crop size D_N: object scale removed).
   Our pose networks take fixed-size crops, so U is a fixed-size window rather than DSC's whole 480 x 640 image.
3. Dual-scale keypoint consistency (Eq. 10-11): keypoints predicted in U(x) and N(x) (no augmentation, no
   gradient) are mapped back to the image (N^-1), averaged, turned into a pose by PnP and the 3D keypoints
   re-projected: k_bar. The network's keypoints on augmented views A(U(x)) and A(N(x)) (random crop shift/scale +
   colour jitter), mapped back by A^-1 N^-1, are pulled to k_bar by smooth-l1 normalised by sigma * S (S = longest
   side of the object box).
4. Visible silhouette alignment (Eq. 12-14): the object rendered at the pose of each augmented view (differentiable
   PnP + soft silhouette), times the network's own foreground probability, against y^ with the Dice loss over the
   certain pixels; the network's mask head is also trained on y^ (certain pixels).
5. Eq. 15 adds the synthetic keypoint (Eq. 4) and offset (Eq. 5) losses: a batch of synthetic crops each step.

The correspondence network has no keypoints: its keypoints are the object keypoints projected at its
differentiable-PnP pose (the same Eq. 10 then applies). Inference ensemble (:func:`selfpose_core.estimate.dual_scale_views.dual_scale_estimate`): U view,
the normalised box from the predicted mask's bounding box, N view, keypoints (or correspondences) of both scales
combined in the image, PnP-RANSAC. Departures: no in-plane rotation augmentation (the crop cameras stay pinhole);
the synthetic terms at the normalised scale only; loss weights lambda_1 = lambda_2 = 1 (not given in the paper).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.network_pose import network_pose, plausible
from selfpose_core.adapt.recording_crops import CropJitter, FrameStore, RecordingInstance, crop_batch
from selfpose_core.adapt.stage import StageResult
from selfpose_core.adapt.stage_training import ObjectTensors, prepare_stage, train_stage
from selfpose_core.adapt.weak_segmentation import SegmentationLabels, WeakSegmentationConfig, weak_segmentation
from selfpose_core.config_io import require_at_least
from selfpose_core.data.crops import crop_to_image
from selfpose_core.estimate.dual_scale_views import view_boxes
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.pnp_diff import solve_pnp_differentiable
from selfpose_core.geometry.projection import project
from selfpose_core.geometry.se3 import make_T, transform_points
from selfpose_core.models.bundle import BundleObject
from selfpose_core.models.correspondences import network_correspondences
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.pretrain import PretrainConfig, pose_losses
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render.renderer import render

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DualScaleConfig:
    """``dual_scale`` section of config/adapt.yaml (defaults: DSC-PoseNet where it says)."""

    segmentation: WeakSegmentationConfig = field(default_factory=WeakSegmentationConfig)
    batch_size: int = 16  # DSC: 16
    synthetic_batch: int = 8
    dual_weight: float = 1.0  # lambda_1
    align_weight: float = 1.0  # lambda_2
    mask_weight: float = 1.0  # the pose network's mask head on the pseudo masks
    keypoint_sigma: float = 0.1
    max_error: float = 10.0  # keypoint errors are clamped at this many sigma * S (outliers of untrained poses)
    context_fraction: float = 0.5  # un-normalised window side, fraction of the image height
    normalized_padding: float = 1.3
    shift_std: float = 0.05  # augmentation A: crop shift (fraction of the crop side), scale, colour jitter
    scale_jitter: tuple[float, float] = (0.85, 1.15)
    colour_jitter: float = 0.2
    dice_eps: float = 1.0
    plausible_offset: float = 0.5  # poses whose object centre projects this x crop size outside the crop, or
    plausible_size: tuple[float, float] = (0.15, 3.0)  # whose projected diameter is outside this x crop: skipped
    min_confidence: float = 0.3  # pseudo-label confidence of the real crops
    min_detector_score: float = 0.3  # without pseudo labels: detector score of the real crops
    max_frames: int = 0  # without pseudo labels: detect on at most this many frames (0 = all)
    symmetry_samples: int = 36
    # DSC: Adam, 1e-3 decayed to 1e-5 (x0.85 every 5 epochs, 120 epochs) (here: cosine to lr * final_lr_ratio)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=1000, lr=1e-4, final_lr_ratio=0.01,
                                                                         warmup_steps=20, checkpoint_every=100))

    def validate(self, where: str = "dual_scale") -> None:
        self.segmentation.validate(f"{where}.segmentation")
        require_at_least(self, ("batch_size", "symmetry_samples"), 1, where)
        require_at_least(self, ("synthetic_batch", "max_error", "dual_weight", "align_weight", "mask_weight", "shift_std",
                    "colour_jitter", "dice_eps"), 0, where)
        if not 0 < self.context_fraction <= 2:
            raise ConfigError(f"{where}.context_fraction must be in (0, 2], got {self.context_fraction}")
        if not self.normalized_padding >= 1:
            raise ConfigError(f"{where}.normalized_padding must be >= 1, got {self.normalized_padding}")
        if not 0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            raise ConfigError(f"{where}.scale_jitter must be [min, max] with 0 < min <= max, got {self.scale_jitter}")
        if not (self.plausible_offset >= 0 and 0 <= self.plausible_size[0] < self.plausible_size[1]):
            raise ConfigError(f"{where}: plausible_offset must be >= 0 and plausible_size [min, max] with "
                              f"0 <= min < max, got {self.plausible_offset}, {self.plausible_size}")
        self.trainer.validate(f"{where}.trainer")


def augment_box(crop_box: np.ndarray, rng: np.random.Generator, shift_std: float,
                scale: tuple[float, float]) -> np.ndarray:
    """Augmentation A of a square crop box: centre shifted by N(0, shift_std) x side, side scaled by U(scale)."""
    side = crop_box[2] - crop_box[0]
    c = (crop_box[:2] + crop_box[2:]) / 2 + rng.normal(0, shift_std, 2) * side
    s = side * rng.uniform(*scale) / 2
    return np.array([c[0] - s, c[1] - s, c[0] + s, c[1] + s])


def view_keypoints(net: torch.nn.Module, out: dict[str, torch.Tensor], obj_index: torch.Tensor, K: torch.Tensor,
                   objects: Sequence[BundleObject]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keypoints (B, N, 2) in crop pixels of one view, differentiable, and the view's pose (R, t, valid):
    the keypoint net's Eq. 3 keypoints, or the correspondence net's object keypoints projected at its PnP pose."""
    R, t, valid = network_pose(net, out, obj_index, K, objects)
    if isinstance(net, KeypointNet):
        kp = network_correspondences(net, out, obj_index, objects).pts2d
    else:
        X = torch.as_tensor(np.stack([objects[int(k)].keypoints for k in obj_index]), dtype=R.dtype,
                            device=R.device)
        kp = project(K, transform_points(make_T(R, t), X))
    return kp, R, t, valid


def dice_loss(target: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """Eq. 14: (B,) ``1 - (2 sum(y^ V) + eps) / (sum(y^ + V) + eps)`` over the pixels of (B, h, w) maps
    (``weight`` (B, h, w) restricts the sums, e.g. to the certain pixels)."""
    w = torch.ones_like(pred) if weight is None else weight.to(pred.dtype)
    inter = (2 * target * pred * w).sum(dim=(1, 2))
    total = ((target + pred) * w).sum(dim=(1, 2))
    return 1 - (inter + eps) / (total + eps)


def average_reprojection(kp_a: torch.Tensor, kp_b: torch.Tensor, pts3d: torch.Tensor, K: torch.Tensor
                         ) -> torch.Tensor:
    """Eq. 11: re-projection (B, N, 2) of the 3D keypoints ``pts3d`` (B, N, 3) at the PnP pose of the mean of two
    keypoint sets (B, N, 2) (image pixels, camera ``K`` (B, 3, 3)); no gradient."""
    with torch.no_grad():
        mean = (kp_a + kp_b) / 2
        R, t = solve_pnp_differentiable(pts3d.double(), mean.double(), K.double())
        return project(K.double(), transform_points(make_T(R, t), pts3d.double())).to(kp_a.dtype)


class DualScale:
    """Stage ``dual_scale`` (module docstring)."""

    name: ClassVar[str] = "dual_scale"
    Config: ClassVar[type] = DualScaleConfig

    def run(self, ctx: AdaptContext, cfg: DualScaleConfig) -> StageResult:
        seg_cfg = cfg.segmentation
        n_seg = seg_cfg.iterations * seg_cfg.steps_per_round
        setup = prepare_stage(ctx, self.name, cfg, extra_synthetic=n_seg * seg_cfg.synthetic_batch)
        spec = ctx.bundle.spec
        size = spec.pose_net.crop_size
        labels_path = ctx.stage_dir(self.name) / "segmentation.npz"
        if ctx.resume and labels_path.is_file():
            labels = SegmentationLabels.load(labels_path)
        else:
            base, n = setup.n_batches * cfg.synthetic_batch, seg_cfg.synthetic_batch  # after the training crops
            slog = ctx.scalar_log(self.name)
            try:
                labels = weak_segmentation(
                    setup.net, setup.store, setup.instances, seg_cfg, seed=setup.seed, device=ctx.device,
                    synthetic=lambda i: setup.synthetic_crops(base + i * n, n),
                    log_scalars=lambda step, d: slog.add(step, {f"{self.name}/{k}": v for k, v in d.items()}))
            finally:
                slog.close()
            labels.save(labels_path)

        def batches(start_step: int) -> Iterator[dict[str, Any]]:
            for b in range(start_step * setup.trainer.grad_accum, setup.n_batches):
                rng = np.random.default_rng([setup.seed, b])
                idx = rng.integers(0, len(setup.instances), cfg.batch_size)
                out = dual_scale_batch(setup.store, [setup.instances[i] for i in idx], idx, labels, size, cfg, rng)
                syn = setup.synthetic_batch(b)
                if syn is not None:
                    out["syn"] = syn
                yield out

        result = train_stage(ctx, self.name, cfg, setup, batches, lambda model, batch: dual_scale_losses(
            model, batch, setup.objs, spec.objects, cfg, setup.pretrain, ctx.device))
        certain = np.abs(labels.prob - 0.5) >= labels.sigma - 0.5
        result.details["segmentation"] = {"certain_fraction": round(float(certain.mean()), 4),
                                          "foreground_fraction": round(float((labels.prob >= 0.5).mean()), 4)}
        result.artefacts["segmentation_labels"] = labels_path
        return result


def dual_scale_batch(store: FrameStore, instances: Sequence[RecordingInstance], index: np.ndarray,
                     labels: SegmentationLabels, size: int, cfg: DualScaleConfig, rng: np.random.Generator
                     ) -> dict[str, Any]:
    """The four views of every instance: clean U and N (``u``, ``n``), augmented A(U), A(N) (``ua``, ``na``), each a
    crop batch (``crop_batch`` keys); ``index`` the instances' indices into ``labels`` (the pseudo masks, re-cut
    per view in the loss), ``box`` (B, 4) object boxes and ``K_image`` (B, 3, 3) the frames' cameras."""
    clean_u, clean_n, aug_u, aug_n = [], [], [], []
    for inst in instances:
        u, n = view_boxes(inst.box, store.intrinsics[inst.frame].height, cfg.context_fraction, cfg.normalized_padding)
        clean_u.append(u)
        clean_n.append(n)
        aug_u.append(augment_box(u, rng, cfg.shift_std, tuple(cfg.scale_jitter)))
        aug_n.append(augment_box(n, rng, cfg.shift_std, tuple(cfg.scale_jitter)))
    plain = CropJitter(1.0, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0)
    colour = CropJitter(1.0, 0.0, (1.0, 1.0), cfg.colour_jitter, 0.1, 0.02)
    views = {"u": crop_batch(store, instances, size, rng, plain, augment=False, boxes=clean_u),
             "n": crop_batch(store, instances, size, rng, plain, augment=False, boxes=clean_n),
             "ua": crop_batch(store, instances, size, rng, colour, augment=True, boxes=aug_u),
             "na": crop_batch(store, instances, size, rng, colour, augment=True, boxes=aug_n)}
    out: dict[str, Any] = dict(views)
    out["index"] = np.asarray(index)
    out["box"] = torch.as_tensor(np.stack([i.box for i in instances]), dtype=torch.float32)
    out["K_image"] = torch.as_tensor(np.stack([store.intrinsics[i.frame].K for i in instances]), dtype=torch.float32)
    out["labels"] = labels
    return out


def dual_scale_losses(net: torch.nn.Module, batch: dict[str, Any], objs: ObjectTensors, objects: list,
                      cfg: DualScaleConfig, pcfg: PretrainConfig, device: str = "cpu") -> dict[str, torch.Tensor]:
    """One step's Eq. 15: ``loss`` and the terms ``dual`` (Eq. 10), ``align`` (Eq. 13, both scales), ``mask``,
    ``synthetic`` (Eq. 4 + 5 + mask on synthetic crops) and ``valid`` (fraction of views with a pose)."""
    size = int(batch["u"]["image"].shape[-1])
    oi = batch["u"]["obj_index"].to(device)
    B = len(oi)
    K_img = batch["K_image"].to(device)
    pts3d = torch.as_tensor(np.stack([objects[int(k)].keypoints for k in oi.cpu()]), dtype=torch.float32,
                            device=device)
    labels: SegmentationLabels = batch["labels"]
    with torch.no_grad():  # k_bar of Eq. 11 from the clean views
        out_c = net(torch.cat([batch["u"]["image"], batch["n"]["image"]]).to(device), torch.cat([oi, oi]))
        K_c = torch.cat([batch["u"]["K"], batch["n"]["K"]]).to(device)
        kp_c, R_c, t_c, v_c = view_keypoints(net, out_c, torch.cat([oi, oi]), K_c, objects)
        pl = dict(max_offset=cfg.plausible_offset, size_range=tuple(cfg.plausible_size))
        v_c = v_c & plausible(R_c, t_c, K_c, size, objs.diameters[torch.cat([oi, oi]).cpu()].to(device), **pl)
        boxes_c = torch.cat([batch["u"]["crop_box"], batch["n"]["crop_box"]]).to(device)
        kp_img = crop_to_image(kp_c.double(), boxes_c, size)
        k_bar = average_reprojection(kp_img[:B], kp_img[B:], pts3d, K_img).float()
        ok_bar = v_c[:B] & v_c[B:] & torch.isfinite(k_bar).flatten(1).all(-1)
    images = torch.cat([batch["ua"]["image"], batch["na"]["image"]]).to(device)
    K_a = torch.cat([batch["ua"]["K"], batch["na"]["K"]]).to(device)
    oi2 = torch.cat([oi, oi])
    out = net(images, oi2)
    kp_a, R, t, v_a = view_keypoints(net, out, oi2, K_a, objects)
    v_a = v_a & plausible(R, t, K_a, size, objs.diameters[oi2.cpu()].to(device), **pl)
    boxes_a = torch.cat([batch["ua"]["crop_box"], batch["na"]["crop_box"]]).to(device)
    kp_a_img = crop_to_image(kp_a, boxes_a, size)  # A^-1 (N^-1) of Eq. 10
    box = batch["box"].to(device)
    scale = (box[:, 2:] - box[:, :2]).amax(-1).clamp_min(1.0).repeat(2)
    err = (kp_a_img - k_bar.repeat(2, 1, 1)) / (cfg.keypoint_sigma * scale)[:, None, None]
    err = err.clamp(-cfg.max_error, cfg.max_error)  # a keypoint off by more than max_error * sigma * S: no gradient
    dual = F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none").sum(dim=(1, 2))  # (2B,)
    ok = ok_bar.repeat(2)
    dual = (dual * ok).sum() / ok.sum().clamp_min(1)
    # Eq. 12-14 at both scales, and the mask head on the pseudo masks
    h = out["mask_logits"].shape[-1]
    lab, cer = labels.in_crops(np.concatenate([batch["index"], batch["index"]]),
                               torch.cat([batch["ua"]["crop_box"], batch["na"]["crop_box"]]).numpy(), h, size)
    lab, cer = lab.to(device), cer.to(device)
    sil = render(objs.meshes_of(oi2.cpu()), R.cpu(), t.cpu(), K_a.cpu().to(R.dtype), (size, size), coords=False,
                 attributes=False, silhouette=True, visibility=False).silhouette.to(device)
    sil_h = F.adaptive_avg_pool2d(sil[:, None], (h, h))[:, 0]
    prob = torch.sigmoid(out["mask_logits"])
    align = dice_loss(lab, sil_h * prob, cer, cfg.dice_eps)
    align = (align * v_a).sum() / v_a.sum().clamp_min(1)
    mask = F.binary_cross_entropy_with_logits(out["mask_logits"], lab, reduction="none")
    mask = (mask * cer).sum() / cer.sum().clamp_min(1)
    res = {"dual": dual, "align": align, "mask": mask, "valid": v_a.float().mean()}
    loss = cfg.dual_weight * dual + cfg.align_weight * align + cfg.mask_weight * mask
    if "syn" in batch:
        s = pose_losses(net, {k: v.to(device) for k, v in batch["syn"].items()}, pcfg, step=1 << 30)["pose_loss"]
        res["synthetic"] = s
        loss = loss + s
    res["loss"] = loss
    return res
