"""Stage ``pose_consistency``: self-supervised pose consistency between real crops and renderings (Sock et al.,
Sec. 3.2, Eq. 1-3, Fig. 2).

Per training step, for B real crops I_r (recording frames, boxes from the pseudo labels or the detector):

1. noise patches on I_r (cross-domain occlusion augmentation), ``h1 = net(I_r)``, pose ``T1`` by differentiable PnP;
2. render the CAD model at ``T1`` in the crop camera: soft silhouette ``m1`` and a shaded image ``r1`` (Lambertian
   head-light shading of the mesh normals, albedo = the mean colour of I_r inside the silhouette, black
   background), noise patches on ``r1``;
3. silhouette masking: ``I_r * m1`` with the real patch pixels excluded; ``h2 = net(masked)``, ``h3 = net(r1)``;
4. losses (Eq. 3): ``L_pose`` (Eq. 1: mean distance of the model vertices moved by ``T2`` and ``T3``, over the
   diameter, minimum over the object's symmetries), ``L_sup`` (Eq. 2: the network's own supervised losses on
   ``r1`` against the labels of pose ``T1`` -- keypoints or object coordinates and the rendered mask -- plus the
   pre-training losses on a batch of synthetic crops: the joint synthetic + real batch that prevents collapse),
   ``L_percep`` (MS-SSIM + gradient substitute for the VGG distance between ``r1`` and the masked real image,
   :mod:`selfpose_core.adapt.perceptual`).

Gradients reach the network through h1 (via PnP, the renderer's silhouette and shading, and the masked image), h2
and h3. Works for both pose networks (module :mod:`selfpose_core.adapt.network_pose`). Departures: VGG is replaced
(above); the paper's renderer output is an untextured rendering whose appearance it does not specify -- ours is
shaded with the crop's mean colour; the paper's Huber loss is the networks' own smooth-l1 (keypoints) / L1
(coordinates, masks) losses of pre-training; the loss weights are not in the paper (defaults 1, 1, 0.1).
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
from selfpose_core.adapt.occlusion_patches import fill_noise, random_patches
from selfpose_core.adapt.perceptual import perceptual_loss
from selfpose_core.adapt.recording_crops import CropJitter, RecordingInstance, crop_batch
from selfpose_core.adapt.stage import StageResult
from selfpose_core.adapt.stage_training import ObjectTensors, prepare_stage, train_stage
from selfpose_core.config_io import require_at_least
from selfpose_core.data.crops import pose_targets
from selfpose_core.errors import ConfigError
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.losses import coordinate_losses, keypoint_losses, mask_loss
from selfpose_core.models.pretrain import PretrainConfig, pose_losses
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render.renderer import render
from selfpose_core.types import CameraIntrinsics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PoseConsistencyConfig:
    """``pose_consistency`` section of config/adapt.yaml (defaults: Sock et al. supplementary where it says)."""

    batch_size: int = 16  # supplementary: 16
    synthetic_batch: int = 16  # synthetic crops per step (the synthetic-set term of Eq. 2)
    pose_weight: float = 1.0
    sup_weight: float = 1.0
    percep_weight: float = 0.1
    gradient_weight: float = 1.0  # weight of the gradient term inside the perceptual substitute
    ms_ssim_scales: int = 5
    crop_padding: float = 1.3  # supplementary: crops 1.3 x the box
    shift_std_px: float = 3.0  # supplementary: box centre ~ N(0, 3 px)
    scale_jitter: tuple[float, float] = (0.9, 1.1)  # supplementary: "randomly rescaled"
    colour_jitter: float = 0.15  # supplementary: contrast normalisation, noise, blur
    noise_std: float = 0.02
    blur_prob: float = 0.2
    occlusion_prob: float = 0.5
    max_patches: int = 2
    patch_size: tuple[float, float] = (0.1, 0.35)
    vertex_samples: int = 256
    ambient: float = 0.3  # shading of the rendering
    keypoint_sigma: float = 0.1
    plausible_offset: float = 0.5  # poses whose object centre projects this x crop size outside the crop, or
    plausible_size: tuple[float, float] = (0.15, 3.0)  # whose projected diameter is outside this x crop: skipped
    min_confidence: float = 0.3  # pseudo-label confidence of the real crops
    min_detector_score: float = 0.3  # without pseudo labels: detector score of the real crops
    max_frames: int = 0  # without pseudo labels: detect on at most this many frames (0 = all)
    symmetry_samples: int = 36
    # supplementary: Adam, 1e-5 for 15 epochs then 1e-6 for 10 (here: cosine from lr to lr * final_lr_ratio)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=1000, lr=1e-5, final_lr_ratio=0.1,
                                                                         warmup_steps=20, checkpoint_every=100))

    def validate(self, where: str = "pose_consistency") -> None:
        require_at_least(self, ("batch_size", "synthetic_batch", "vertex_samples", "ms_ssim_scales", "max_patches",
                    "symmetry_samples"), 1, where)
        require_at_least(self, ("pose_weight", "sup_weight", "percep_weight", "gradient_weight", "shift_std_px", "noise_std",
                    "colour_jitter"), 0, where)
        if not self.crop_padding >= 1.0:
            raise ConfigError(f"{where}.crop_padding must be >= 1, got {self.crop_padding}")
        if not 0 < self.scale_jitter[0] <= self.scale_jitter[1]:
            raise ConfigError(f"{where}.scale_jitter must be [min, max] with 0 < min <= max, got {self.scale_jitter}")
        if not 0 < self.patch_size[0] <= self.patch_size[1] <= 1:
            raise ConfigError(f"{where}.patch_size must be [min, max] within (0, 1], got {self.patch_size}")
        for key in ("occlusion_prob", "blur_prob", "ambient", "min_confidence", "min_detector_score"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        if not (self.plausible_offset >= 0 and 0 <= self.plausible_size[0] < self.plausible_size[1]):
            raise ConfigError(f"{where}: plausible_offset must be >= 0 and plausible_size [min, max] with "
                              f"0 <= min < max, got {self.plausible_offset}, {self.plausible_size}")
        self.trainer.validate(f"{where}.trainer")

    def jitter(self) -> CropJitter:
        return CropJitter(self.crop_padding, self.shift_std_px, tuple(self.scale_jitter), self.colour_jitter,
                          self.blur_prob, self.noise_std)


def shaded_render(objs: ObjectTensors, obj_index: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                  size: int, albedo_from: torch.Tensor | None = None, ambient: float = 0.3
                  ) -> dict[str, torch.Tensor]:
    """Render B objects at poses (B, 3, 3), (B, 3) into ``size`` crops with cameras ``K`` (B, 3, 3).

    Returns ``image`` (B, 3, S, S) (head-light Lambertian shading x albedo x soft silhouette; albedo = mean colour
    of ``albedo_from`` (B, 3, S, S) inside the mask, grey without), ``silhouette`` (B, S, S) differentiable,
    ``mask`` (B, S, S) bool, ``coords`` (B, S, S, 3) object coordinates (metres), ``depth`` (B, S, S).
    """
    out = render(objs.meshes_of(obj_index), R, t, K.to(R.dtype), (size, size), coords=True, attributes=True,
                 silhouette=True, visibility=False)
    n_cam = out.attributes @ R.transpose(-1, -2)[:, None]  # (B, S, S, 3)
    shade = ambient + (1 - ambient) * (n_cam[..., 2].abs() / n_cam.norm(dim=-1).clamp_min(1e-6))
    mask = out.mask
    if albedo_from is not None:
        m = mask[:, None].to(albedo_from.dtype)
        albedo = ((albedo_from * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1.0)).detach()
        albedo = torch.where(m.sum(dim=(2, 3)) > 0, albedo, torch.full_like(albedo, 0.5))
    else:
        albedo = torch.full((len(R), 3), 0.5, dtype=R.dtype)
    image = albedo.to(R.dtype)[:, :, None, None] * (shade * out.silhouette)[:, None]
    return {"image": image, "silhouette": out.silhouette, "mask": mask, "coords": out.coords, "depth": out.depth}


def render_labels(objs: ObjectTensors, obj_index: torch.Tensor, T: np.ndarray, K: np.ndarray, mask: np.ndarray,
                  coords: np.ndarray, visible: np.ndarray, size: int, stride: int) -> dict[str, torch.Tensor]:
    """Supervised targets (Sock et al. Eq. 2, pi(y, M, K)) of B renderings made at poses ``T`` (B, 4, 4) with crop
    cameras ``K`` (B, 3, 3): keys as :class:`~selfpose_core.data.synthetic.SyntheticCrops` (silhouette, visible,
    coords, keypoints, scale), symmetry variants padded to the objects' largest count."""
    keys = ("silhouette", "visible", "coords", "keypoints", "scale")
    rows: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for i, k in enumerate(obj_index.tolist()):
        g = objs.geometries[k]
        t = pose_targets(g, CameraIntrinsics.from_K(K[i], size, size), T[i], size, stride, visible[i] > 0,
                         render={"mask": mask[i].astype(np.float32), "coords": coords[i]})
        pad = objs.n_sym - len(t["coords"])
        if pad:
            t["coords"] = np.concatenate([t["coords"], np.repeat(t["coords"][:1], pad, 0)])
            t["keypoints"] = np.concatenate([t["keypoints"], np.repeat(t["keypoints"][:1], pad, 0)])
        for key in keys:
            rows[key].append(t[key])
    return {k: torch.as_tensor(np.stack(v)) for k, v in rows.items()}


def supervised_terms(net: torch.nn.Module, out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                     sigma: float) -> torch.Tensor:
    """(B,) the network's supervised loss on its output ``out`` against ``labels`` (render_labels' keys):
    mask BCE + keypoint (Eq. 4) + offset (Eq. 5) losses, or mask + coordinate + error losses."""
    b = out["mask_logits"].shape[0]
    res = []
    for i in range(b):  # per sample so that invalid samples can be dropped by the caller
        o = {k: v[i:i + 1] for k, v in out.items()}
        lab = {k: v[i:i + 1] for k, v in labels.items()}
        loss = mask_loss(o["mask_logits"], lab["visible"])
        if isinstance(net, KeypointNet):
            kp = KeypointNet.keypoints(o, lab["visible"])
            l_key, l_off = keypoint_losses(kp, o["votes"], lab["keypoints"], lab["scale"], lab["visible"], sigma)
            loss = loss + l_key + l_off
        else:
            l_c, l_e = coordinate_losses(o["coords"], o["error"], lab["coords"], lab["silhouette"], lab["visible"])
            loss = loss + 3.0 * l_c + l_e
        res.append(loss)
    return torch.stack(res)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w v) / max(sum(w), eps); 0 (with a gradient path) when every weight is 0."""
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1e-6)


def sample_instances(instances: list[RecordingInstance], n: int, rng: np.random.Generator) -> list[RecordingInstance]:
    """``n`` instances drawn uniformly with replacement."""
    return [instances[int(i)] for i in rng.integers(0, len(instances), n)]


class PoseConsistency:
    """Stage ``pose_consistency`` (module docstring)."""

    name: ClassVar[str] = "pose_consistency"
    Config: ClassVar[type] = PoseConsistencyConfig

    def run(self, ctx: AdaptContext, cfg: PoseConsistencyConfig) -> StageResult:
        setup = prepare_stage(ctx, self.name, cfg, vertex_samples=cfg.vertex_samples)
        spec = ctx.bundle.spec
        size, stride = spec.pose_net.crop_size, spec.pose_net.backbone.out_stride
        jitter = cfg.jitter()

        def batches(start_step: int) -> Iterator[dict[str, Any]]:
            for b in range(start_step * setup.trainer.grad_accum, setup.n_batches):
                rng = np.random.default_rng([setup.seed, b])
                chosen = sample_instances(setup.instances, cfg.batch_size, rng)
                real = crop_batch(setup.store, chosen, size, rng, jitter)
                yield {"real": real, "syn": setup.synthetic_batch(b), "index": b}

        def losses(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(setup.seed * 7 + int(batch["index"]))
            return pose_consistency_losses(model, batch["real"], batch["syn"], setup.objs, spec.objects, cfg,
                                           setup.pretrain, gen, size, stride, ctx.device)

        return train_stage(ctx, self.name, cfg, setup, batches, losses, details={"frames": len(setup.store.images)})


def pose_consistency_losses(net: torch.nn.Module, real: dict[str, torch.Tensor],
                            syn: dict[str, torch.Tensor] | None, objs: ObjectTensors, objects: list,
                            cfg: PoseConsistencyConfig, pcfg: PretrainConfig, gen: torch.Generator, size: int,
                            stride: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    """One step's losses (Eq. 1-3) on a batch of real crops (``crop_batch`` keys) and synthetic crops (or None).

    Returns ``loss`` and the terms ``pose``, ``sup_render``, ``sup_synthetic``, ``percep`` and ``valid``
    (fraction of crops whose three poses are :func:`~selfpose_core.adapt.network_pose.plausible`; the others do
    not count).
    """
    image = real["image"].to(device)
    K = real["K"].to(device)
    oi = real["obj_index"].to(device)
    w = real["weight"].to(device)
    B = len(oi)
    patch_r = random_patches(B, size, size, gen, probability=cfg.occlusion_prob, max_patches=cfg.max_patches,
                             size=tuple(cfg.patch_size)).to(device)
    out1 = net(fill_noise(image, patch_r, gen), oi)
    R1, t1, v1 = network_pose(net, out1, oi, K, objects)
    r = shaded_render(objs, oi.cpu(), R1.cpu(), t1.cpu(), K.cpu(), size, image.cpu(), cfg.ambient)
    r = {k: v.to(device) for k, v in r.items()}
    patch_s = random_patches(B, size, size, gen, probability=cfg.occlusion_prob, max_patches=cfg.max_patches,
                             size=tuple(cfg.patch_size)).to(device)
    rendered = fill_noise(r["image"], patch_s, gen)
    keep = r["silhouette"] * (~patch_r).to(image.dtype)  # silhouette minus the real noise patches
    masked = image * keep[:, None]
    out23 = net(torch.cat([masked, rendered]), torch.cat([oi, oi]))
    out2 = {k: v[:B] for k, v in out23.items()}
    out3 = {k: v[B:] for k, v in out23.items()}
    R2, t2, v2 = network_pose(net, out2, oi, K, objects)
    R3, t3, v3 = network_pose(net, out3, oi, K, objects)
    diam = objs.diameters[oi.cpu()].to(device)
    valid = v1 & v2 & v3 & (r["mask"].flatten(1).sum(-1) > 0)
    pl = dict(max_offset=cfg.plausible_offset, size_range=tuple(cfg.plausible_size))
    valid = valid & plausible(R1, t1, K, size, diam, **pl) & plausible(R2, t2, K, size, diam, **pl) \
        & plausible(R3, t3, K, size, diam, **pl)
    pts = objs.points[oi.cpu()].to(device)
    syms = [objs.symmetries[int(k)].to(device) for k in oi.cpu()]
    l_pose = vertex_consistency(R2, t2, R3, t3, pts, syms, diam)
    T1 = np.tile(np.eye(4), (B, 1, 1))
    T1[:, :3, :3] = R1.detach().cpu().double().numpy()
    T1[:, :3, 3] = t1.detach().cpu().double().numpy()
    vis = (r["mask"] & ~patch_s).cpu().numpy()
    labels = render_labels(objs, oi.cpu(), T1, K.cpu().double().numpy(), r["mask"].cpu().numpy(),
                           r["coords"].detach().cpu().numpy(), vis, size, stride)
    l_sup_r = supervised_terms(net, out3, {k: v.to(device) for k, v in labels.items()}, cfg.keypoint_sigma)
    l_percep = perceptual_loss(r["image"], masked, keep, gradient_weight=cfg.gradient_weight,
                               scales=cfg.ms_ssim_scales)
    wv = w * valid.to(w.dtype)
    pose = weighted_mean(l_pose, wv)
    sup_r = weighted_mean(l_sup_r, valid.to(w.dtype))
    percep = weighted_mean(l_percep, wv)
    res = {"pose": pose, "sup_render": sup_r, "percep": percep, "valid": valid.float().mean()}
    sup = sup_r
    if syn is not None:
        s = pose_losses(net, {k: v.to(device) for k, v in syn.items()}, pcfg, step=1 << 30)["pose_loss"]
        res["sup_synthetic"] = s
        sup = sup + s
    res["loss"] = cfg.pose_weight * pose + cfg.sup_weight * sup + cfg.percep_weight * percep
    return res
