"""Training sets for the NOL network: procedural textured meshes rendered from random views (paper Sec. 3.2).

The paper renders YCB-Video meshes with random MS-COCO images as textures, 10 views per set on random backgrounds;
one view is the target, K = 8 others are the sources, which get colour augmentation and pose perturbations
(supplementary Table B.1). Offline we have neither dataset, so both are generated: shapes from the simulator's
procedural builders (boxes, surfaces of revolution with random profiles, box + cylinder compounds; see
:mod:`selfpose_core.data.sim.shapes`) and textures from the procedural clutter of
:mod:`selfpose_core.data.backgrounds` with printed text and emblems from :mod:`selfpose_core.data.sim.textures`.

Every view is rendered directly in a square crop camera (object centred up to a jitter), like the crops NOL sees at
run time. A set is a pure function of (seed, index), so DataLoader workers and resumed runs repeat exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from selfpose_core.data.backgrounds import add_occluders, random_background
from selfpose_core.data.sim import textures as tx
from selfpose_core.data.sim.shapes import PartMesh, box, merge, revolve
from selfpose_core.errors import ConfigError
from selfpose_core.geometry.se3 import so3_exp
from selfpose_core.render import RenderMesh, render


@dataclass(slots=True)
class NolTrainingConfig:
    """Views, augmentation (Table B.1; colour values in 0..255 units) and pose perturbation ranges."""

    crop_size: int = 64
    n_sources: int = 8
    fill: tuple[float, float] = (0.55, 0.9)  # projected diameter / crop side
    centre_jitter: float = 0.08  # object centre offset, fraction of the crop side
    distance: tuple[float, float] = (2.5, 8.0)  # camera distance in object diameters (perspective strength)
    near_sources: float = 0.5  # fraction of sources within 80 deg of the target's viewing direction
    color_add: tuple[float, float] = (-15.0, 15.0)
    contrast: tuple[float, float] = (0.8, 1.3)
    multiply: tuple[float, float] = (0.8, 1.2)
    blur_sigma: tuple[float, float] = (0.0, 0.5)
    noise_std: float = 10.0
    max_translation_error: float = 0.01  # metres, uniform per axis
    max_rotation_error: float = 0.05  # radians, uniform per rotation-vector component
    occlusion_prob: float = 0.3
    # source masks like the pipeline's pseudo masks: rendered at the (perturbed) pose instead of the true one, and
    # sometimes unaware of occluders -- outliers the integration must learn to reject
    mask_at_perturbed_pose: float = 0.5
    mask_includes_occluders: float = 0.5
    diameter: tuple[float, float] = (0.08, 0.3)  # metres

    def validate(self, where: str = "nol_training") -> None:
        if self.crop_size < 16:
            raise ConfigError(f"{where}.crop_size must be >= 16, got {self.crop_size}")
        if self.n_sources < 1:
            raise ConfigError(f"{where}.n_sources must be >= 1, got {self.n_sources}")
        for key in ("fill", "distance", "diameter", "contrast", "multiply"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi:
                raise ConfigError(f"{where}.{key} must be 0 < low <= high, got {getattr(self, key)}")


def _random_profile(rng: np.random.Generator) -> np.ndarray:
    """(P, 2) closed (r, z) profile of a bottle/can/vase-like solid, height 1, radius <= 0.5."""
    n = int(rng.integers(2, 6))
    z = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.1, 0.9, n - 2)]))
    r = rng.uniform(0.15, 0.5, n)
    if rng.random() < 0.4:  # a straight can
        r[:] = r[0]
    body = np.stack([r, z], 1)
    return np.concatenate([[[0.0, 0.0], [r[0], 0.0]], body, [[r[-1], 1.0], [0.0, 1.0]]])


def random_shape(rng: np.random.Generator) -> PartMesh:
    """A random household-like solid (box, surface of revolution or box + cylinder), centred, unscaled (~1)."""
    kind = int(rng.integers(3))
    if kind == 0:
        mesh = box(tuple(rng.uniform(0.25, 1.0, 3)))
    elif kind == 1:
        mesh = revolve(_random_profile(rng), int(rng.integers(16, 40)))
        T = np.eye(4)
        T[:3, 3] = (0.0, 0.0, -0.5)
        mesh = mesh.transformed(T)
    else:
        a = box(tuple(rng.uniform(0.3, 0.8, 3))).with_uv((0.5, 1.0), (0.0, 0.0))
        top = a.vertices[:, 2].max()
        r, h = rng.uniform(0.08, 0.25), rng.uniform(0.2, 0.6)
        cyl = revolve(np.array([[0, 0], [r, 0], [r, 0], [r, h], [r, h], [0, h]]), 24).with_uv((0.5, 1.0), (0.5, 0.0))
        T = np.eye(4)
        T[:3, 3] = (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), top)
        if rng.random() < 0.5:  # lying on its side
            T[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
        mesh = merge([a, cyl.transformed(T)])
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    T = np.eye(4)
    T[:3, 3] = -(lo + hi) / 2
    return mesh.transformed(T)


def random_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8 "photo" texture: procedural clutter with, sometimes, printed text and an emblem."""
    img = (random_background(size, size, rng) * 255).astype(np.uint8)
    if rng.random() < 0.6:
        y = int(rng.integers(0, size // 2))
        tx.put_text(img, "".join(rng.choice(list("ABCDEFGHKMNPRSTUVWXZ"), int(rng.integers(2, 7)))),
                    (8, y, size - 8, y + size // 4), tx.random_color(rng), 2)
    if rng.random() < 0.5:
        tx.logo(img, (int(rng.integers(30, size - 30)), int(rng.integers(30, size - 30))), int(rng.integers(12, 40)),
                rng)
    return img


def look_at_rotation(direction: np.ndarray, roll: float) -> np.ndarray:
    """(3, 3) ``R_cam_obj`` of a camera on the ray ``direction`` (unit, object -> camera) looking at the origin,
    rolled by ``roll`` radians about its optical axis."""
    z = -np.asarray(direction, np.float64)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.999 else np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)  # image x to the right, image y towards -up (object frame z up appears upright)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R_obj_cam = np.stack([x, y, z], 1)
    c, s = np.cos(roll), np.sin(roll)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return (R_obj_cam @ Rz).T


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def augment_colour(img: np.ndarray, rng: np.random.Generator, cfg: NolTrainingConfig) -> np.ndarray:
    """Table B.1 colour augmentation of a float (H, W, 3) image in [0, 1]: add, contrast normalisation, multiply,
    Gaussian blur, additive Gaussian noise (ranges in 0..255 units)."""
    x = img * 255.0 + rng.uniform(*cfg.color_add, 3)
    x = (x - 128.0) * rng.uniform(*cfg.contrast) + 128.0
    x = x * rng.uniform(*cfg.multiply)
    sigma = rng.uniform(*cfg.blur_sigma)
    if sigma > 0.05:
        x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    x = x + rng.normal(0.0, cfg.noise_std, x.shape)
    return (np.clip(x, 0, 255) / 255.0).astype(np.float32)


def perturb_pose(T: np.ndarray, rng: np.random.Generator, max_translation: float, max_rotation: float) -> np.ndarray:
    """``T`` (4, 4) with a uniform translation error (per axis) and rotation error (per rotation-vector component),
    the rotation applied in the camera frame."""
    out = T.copy()
    out[:3, :3] = np.asarray(so3_exp(rng.uniform(-max_rotation, max_rotation, 3))) @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + rng.uniform(-max_translation, max_translation, 3)
    return out


class NolTrainingSets(Dataset):
    """Item i -> one training set (dict of tensors), ``S`` = crop size, ``K`` = n_sources:

    ``vertices`` (V, 3), ``faces`` (F, 3) int64, ``normals`` (V, 3); ``src_images`` (K, 3, S, S) in [0, 1] (colour
    augmented, with occluders), ``src_masks`` (K, S, S) bool (the visible object; or, like a pseudo mask, the
    silhouette at the perturbed pose, with or without the occluders cut out), ``src_K`` (K, 3, 3), ``src_T``
    (K, 4, 4) perturbed poses, ``src_T_true`` (K, 4, 4); ``tgt_image`` (3, S, S), ``tgt_mask`` (S, S) bool,
    ``tgt_K`` (3, 3), ``tgt_T`` (4, 4); ``diameter`` ().
    """

    def __init__(self, length: int, seed: int = 0, config: NolTrainingConfig | None = None) -> None:
        self.length = int(length)
        self.seed = int(seed)
        self.config = config or NolTrainingConfig()
        self.config.validate()

    def __len__(self) -> int:
        return self.length

    def _views(self, rng: np.random.Generator, diameter: float) -> tuple[np.ndarray, np.ndarray]:
        """Poses (N, 4, 4) and crop intrinsics (N, 3, 3) of the target (first) and the sources."""
        c = self.config
        n = c.n_sources + 1
        dirs = _unit(rng, n)
        near = rng.random(n) < c.near_sources
        for i in np.nonzero(near[1:])[0] + 1:  # sources near the target: within 80 deg
            while float(dirs[i] @ dirs[0]) < np.cos(np.deg2rad(80.0)):
                dirs[i] = _unit(rng, 1)[0]
        S = c.crop_size
        T = np.tile(np.eye(4), (n, 1, 1))
        K = np.tile(np.eye(3), (n, 1, 1))
        for i in range(n):
            dist = rng.uniform(*c.distance) * diameter
            f = rng.uniform(*c.fill) * S * dist / diameter
            T[i, :3, :3] = look_at_rotation(dirs[i], rng.uniform(-np.pi, np.pi))
            T[i, :3, 3] = [*(rng.uniform(-c.centre_jitter, c.centre_jitter, 2) * S * dist / f), dist]
            K[i, :2, :3] = [[f, 0, (S - 1) / 2], [0, f, (S - 1) / 2]]
        return T, K

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        diameter = rng.uniform(*c.diameter)
        part = random_shape(rng)
        scale = diameter / float(np.linalg.norm(part.vertices.max(0) - part.vertices.min(0)))
        part = part.scaled(scale)
        texture = random_texture(rng)
        mesh = RenderMesh(torch.as_tensor(part.vertices, dtype=torch.float32), torch.as_tensor(part.faces),
                          torch.as_tensor(part.normals, dtype=torch.float32),
                          torch.as_tensor(part.uv, dtype=torch.float32), torch.as_tensor(texture / 255.0,
                                                                                         dtype=torch.float32))
        T, K = self._views(rng, diameter)
        S = c.crop_size
        with torch.no_grad():
            out = render(mesh, torch.as_tensor(T[:, :3, :3], dtype=torch.float32),
                         torch.as_tensor(T[:, :3, 3], dtype=torch.float32), torch.as_tensor(K, dtype=torch.float32),
                         (S, S), coords=False, silhouette=False, visibility=False)
        light = _unit(rng, 1)[0]
        ambient = rng.uniform(0.35, 0.7)
        shade = ambient + (1 - ambient) * (out.attributes.numpy() @ light).clip(0, 1)
        obj = out.texture.numpy() * shade[..., None]
        masks = out.mask.numpy()
        images = np.empty((len(T), S, S, 3), np.float32)
        vis = masks.copy()
        for i in range(len(T)):
            m = masks[i][..., None]
            img = random_background(S, S, rng) * (1 - m) + obj[i] * m
            if i > 0:
                if rng.random() < c.occlusion_prob:
                    ys, xs = np.nonzero(masks[i])
                    if len(xs):
                        r = 0.5 * max(xs.max() - xs.min(), ys.max() - ys.min(), 2)
                        vis[i] &= ~add_occluders(img, rng, (xs.mean(), ys.mean(), r), 1)
                img = augment_colour(img, rng, c)
            images[i] = img
        T_src = np.stack([perturb_pose(T[i], rng, c.max_translation_error, c.max_rotation_error)
                          for i in range(1, len(T))])
        src_masks = vis[1:].copy()
        at_pose = rng.random(len(T_src)) < c.mask_at_perturbed_pose
        if at_pose.any():
            with torch.no_grad():
                sil = render(mesh, torch.as_tensor(T_src[at_pose, :3, :3], dtype=torch.float32),
                             torch.as_tensor(T_src[at_pose, :3, 3], dtype=torch.float32),
                             torch.as_tensor(K[1:][at_pose], dtype=torch.float32), (S, S), coords=False,
                             attributes=False, silhouette=False, visibility=False).mask.numpy()
            occluded = masks[1:][at_pose] & ~vis[1:][at_pose]
            keep_occ = rng.random(len(sil)) < c.mask_includes_occluders
            src_masks[at_pose] = sil & ~(occluded & ~keep_occ[:, None, None])
        f32 = torch.float32
        return {"vertices": mesh.vertices, "faces": mesh.faces, "normals": mesh.attributes,
                "src_images": torch.from_numpy(np.ascontiguousarray(images[1:].transpose(0, 3, 1, 2))),
                "src_masks": torch.from_numpy(src_masks), "src_K": torch.as_tensor(K[1:], dtype=f32),
                "src_T": torch.as_tensor(T_src, dtype=f32), "src_T_true": torch.as_tensor(T[1:], dtype=f32),
                "tgt_image": torch.from_numpy(np.ascontiguousarray(images[0].transpose(2, 0, 1))),
                "tgt_mask": torch.from_numpy(masks[0]), "tgt_K": torch.as_tensor(K[0], dtype=f32),
                "tgt_T": torch.as_tensor(T[0], dtype=f32), "diameter": torch.tensor(diameter, dtype=f32)}
