"""Synthetic training data from untextured CAD meshes, generated on the fly (domain randomisation).

The learner knows only the meshes, so appearance is randomised (as the synthetic baselines of Sock et al. and
DSC-PoseNet): a random flat colour per object, optionally modulated by a smooth random pattern, Lambertian + specular
shading from a random light, pasted on procedural backgrounds with random occluders, blur, noise and colour jitter.
Poses cover the whole view sphere (uniform random rotation) at distances giving random apparent sizes.

Two sample kinds, both pure functions of (seed, index) so that DataLoader workers and resumed runs are repeatable:
- pose crops (:class:`SyntheticCrops`): rendered directly in the camera of a jittered square crop around the
  object (Sock et al. supplementary: centre and scale jitter), with the pose network targets;
- detector images (:class:`SyntheticScenes`): several objects in one downscaled image, with amodal boxes and visible
  masks per object.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from selfpose_core.data.backgrounds import (add_occluders, occlude_object, photometric_augment, random_background,
                                             random_colour)
from selfpose_core.data.crops import ObjectGeometry, amodal_box, crop_sample, render_targets, square_box
from selfpose_core.render.rasterizer import rasterize
from selfpose_core.types import CameraIntrinsics


@dataclass(slots=True)
class SyntheticConfig:
    """Randomisation ranges. Sizes are the object's projected diameter in pixels of the full camera image."""

    size_px: tuple[float, float] = (40.0, 260.0)
    # View prior: the camera looks at the object from an elevation (degrees above the object's x-y plane, z up)
    # and any azimuth, rolled about the optical axis by up to roll_deg. (-90, 90) and 180 = the whole view sphere
    # with any in-plane rotation (uniform on SO(3)); the tabletop prior is (-10, 90) and 25 (tabletop()).
    elevation_deg: tuple[float, float] = (-90.0, 90.0)
    roll_deg: float = 180.0
    crop_padding: float = 1.3
    crop_scale_jitter: tuple[float, float] = (0.85, 1.2)
    crop_shift_std: float = 0.06  # centre jitter, fraction of the box side
    occlusion_prob: float = 0.5
    max_occluders: int = 3
    pattern_prob: float = 0.5
    blur_prob: float = 0.3
    noise_std: float = 0.04
    jitter: float = 0.3
    max_objects_per_scene: int = 4

    @classmethod
    def tabletop(cls) -> SyntheticConfig:
        """The view prior of a robot looking at a table: from above or slightly below the horizon, little roll."""
        return cls(elevation_deg=(-10.0, 90.0), roll_deg=25.0)


def random_rotation(rng: np.random.Generator, elevation_deg: tuple[float, float] = (-90.0, 90.0),
                    roll_deg: float = 180.0) -> np.ndarray:
    """(3, 3) R_cam_obj of a camera looking at the object from a random view direction (elevation in
    ``elevation_deg``, area-uniform on that band of the sphere, any azimuth) rolled by up to ``roll_deg``.

    With the full ranges the rotation is uniformly distributed on SO(3).
    """
    lo, hi = np.radians(np.clip(elevation_deg, -89.9, 89.9))
    elev = np.arcsin(rng.uniform(np.sin(lo), np.sin(hi)))
    azim = rng.uniform(0, 2 * np.pi)
    view = np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)])  # object -> camera
    z_c = -view
    down = np.array([0.0, 0.0, -1.0])
    y_c = down - down.dot(z_c) * z_c
    y_c /= np.linalg.norm(y_c)
    x_c = np.cross(y_c, z_c)
    R = np.stack([x_c, y_c, z_c])
    roll = np.radians(rng.uniform(-roll_deg, roll_deg))
    c, s = np.cos(roll), np.sin(roll)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R


def random_pose(rng: np.random.Generator, K: CameraIntrinsics, diameter: float, size_px: tuple[float, float],
                margin: float = 0.1, elevation_deg: tuple[float, float] = (-90.0, 90.0),
                roll_deg: float = 180.0) -> np.ndarray:
    """(4, 4) T_cam_obj: rotation from :func:`random_rotation`, depth giving a projected diameter in ``size_px``,
    centre anywhere in the image but ``margin``."""
    size = rng.uniform(*size_px)
    z = K.fx * diameter / size
    u = rng.uniform(margin, 1 - margin) * K.width
    v = rng.uniform(margin, 1 - margin) * K.height
    T = np.eye(4)
    T[:3, :3] = random_rotation(rng, elevation_deg, roll_deg)
    T[:3, 3] = [(u - K.cx) * z / K.fx, (v - K.cy) * z / K.fy, z]
    return T


def surface_pattern(coords: np.ndarray, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 1) smooth random albedo modulation in [0.5, 1.5]: random sinusoids of the object coordinates
    ``coords`` (h, w, 3), so the pattern sticks to the surface like a texture."""
    freq = rng.normal(size=(3, 3)) * rng.uniform(2, 12) / max(diameter, 1e-6)
    phase = rng.uniform(0, 2 * np.pi, 3)
    return (1.0 + 0.5 * np.sin(coords @ freq + phase).mean(axis=-1, keepdims=True)).astype(np.float32)


def shade(normals: np.ndarray, mask: np.ndarray, albedo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) Lambertian + Blinn-Phong shading of camera-frame ``normals`` under a random directional light.

    ``albedo`` is (3,) or (h, w, 3); ``light`` is the direction the light travels (from the camera's side into the
    scene, +z); the viewer looks along +z (approximately, for small objects).
    """
    light = np.array([rng.normal(), rng.normal(), abs(rng.normal()) + 0.5])
    light /= np.linalg.norm(light)
    ndotl = np.clip(-(normals @ light), 0, None)[..., None]
    ambient = rng.uniform(0.25, 0.6)
    half = -(light + np.array([0.0, 0.0, 1.0]))
    half /= np.linalg.norm(half)
    spec = np.clip(normals @ half, 0, None)[..., None] ** rng.uniform(5, 60) * rng.uniform(0, 0.6)
    img = albedo * (ambient + (1 - ambient) * ndotl) + spec
    return (img * mask[..., None]).astype(np.float32)


class SyntheticCrops(Dataset):
    """Pose-network crops. Item i -> dict of float32 tensors:

    ``image`` (3, S, S) in [0, 1], ``obj_index`` () int64, ``silhouette``/``visible`` (h, h), ``coords``
    (n_sym, 3, h, h), ``keypoints`` (n_sym, 9, 2), ``scale`` (), ``K`` (3, 3) crop camera, ``T`` (4, 4) T_cam_obj,
    with h = S / stride. Objects with different symmetry counts are padded by repeating the identity variant.
    """

    def __init__(self, objects: Sequence[ObjectGeometry], K: CameraIntrinsics, length: int, seed: int = 0,
                 crop_size: int = 64, stride: int = 2, config: SyntheticConfig | None = None) -> None:
        self.objects = list(objects)
        self.K = K
        self.length = int(length)
        self.seed = int(seed)
        self.crop_size = int(crop_size)
        self.stride = int(stride)
        self.config = config or SyntheticConfig()
        self.n_sym = max(len(o.symmetries) for o in self.objects)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.objects)))
        obj = self.objects[k]
        T = random_pose(rng, self.K, obj.diameter, c.size_px, 0.1, c.elevation_deg, c.roll_deg)
        box = square_box(amodal_box(self.K.K, T, obj.vertices.numpy().astype(np.float64)), c.crop_padding,
                         rng.uniform(*c.crop_scale_jitter), tuple(rng.normal(0, c.crop_shift_std, 2)))
        K_crop = self.K.crop_resize(tuple(box), self.crop_size)
        s = self.crop_size
        img = random_background(s, s, rng)
        r = render_targets(obj, K_crop.K, T, (s, s))
        albedo = random_colour(rng)
        if rng.random() < c.pattern_prob:
            albedo = albedo * surface_pattern(r["coords"], obj.diameter, rng)
        obj_img = shade(r["normals"], r["mask"], albedo, rng)
        m = r["mask"][..., None]
        img = img * (1 - m) + obj_img * m
        visible = r["mask"] > 0
        if rng.random() < c.occlusion_prob:
            visible = occlude_object(img, visible, rng, c.max_occluders)
        img = photometric_augment(img, rng, jitter=c.jitter, blur_prob=c.blur_prob, noise_std=c.noise_std)
        return crop_sample(obj, img, K_crop, T, k, self.stride, self.n_sym, visible, render=r)


class SyntheticScenes(Dataset):
    """Detector images of the camera ``K`` downscaled to ``(width, height)``. Item i -> dict:

    ``image`` (3, h, w) in [0, 1]; ``boxes`` (C, 4) amodal boxes (edge coordinates, image pixels); ``present`` (C,)
    bool (object in the image with >= 10 % of its box area visible); ``masks`` (C, h / stride, w / stride) visible
    masks; ``T`` (C, 4, 4) poses (identity when absent).
    """

    def __init__(self, objects: Sequence[ObjectGeometry], K: CameraIntrinsics, width: int, height: int,
                 length: int, seed: int = 0, stride: int = 4, config: SyntheticConfig | None = None) -> None:
        self.objects = list(objects)
        self.K_full = K
        self.K = K.scaled(width / K.width, height / K.height)
        self.length = int(length)
        self.seed = int(seed)
        self.stride = int(stride)
        self.config = config or SyntheticConfig()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index), 1])
        n_obj = len(self.objects)
        w, h = self.K.width, self.K.height
        chosen = rng.permutation(n_obj)[:int(rng.integers(1, min(n_obj, c.max_objects_per_scene) + 1))]
        img = random_background(h, w, rng)
        poses = np.tile(np.eye(4), (n_obj, 1, 1))
        verts, faces, normals, owner, offset = [], [], [], [], 0
        K = self.K.K
        for k in chosen:
            obj = self.objects[k]
            poses[k] = random_pose(rng, self.K_full, obj.diameter, c.size_px, 0.0, c.elevation_deg, c.roll_deg)
            R = torch.as_tensor(poses[k][:3, :3], dtype=torch.float32)
            verts.append(obj.vertices @ R.T + torch.as_tensor(poses[k][:3, 3], dtype=torch.float32))
            normals.append(obj.normals @ R.T)
            faces.append(obj.faces + offset)
            owner.append(torch.full((len(obj.faces),), int(k)))
            offset += len(obj.vertices)
        X = torch.cat(verts)
        z = X[:, 2].clamp_min(1e-6)
        xy = torch.stack([K[0, 0] * X[:, 0] / z + K[0, 2], K[1, 1] * X[:, 1] / z + K[1, 2]], -1).float()
        F = torch.cat(faces)
        frag = rasterize(xy[None], X[None, :, 2], F, (h, w))
        fid = frag.face_ids[0]
        hit = fid >= 0
        label = torch.where(hit, torch.cat(owner)[fid.clamp_min(0)], torch.full_like(fid, -1)).numpy()
        N = torch.cat(normals)
        nrm = (N[F[fid.clamp_min(0)]] * frag.barycentrics[0].unsqueeze(-1)).sum(-2)
        nrm = (nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-6)).numpy()
        for k in chosen:
            m = (label == k).astype(np.float32)
            obj_img = shade(nrm, m, random_colour(rng), rng)
            img = img * (1 - m[..., None]) + obj_img
        occluded = np.zeros((h, w), bool)
        if rng.random() < c.occlusion_prob:
            for k in chosen:
                ys, xs = np.nonzero(label == k)
                if len(xs) and rng.random() < 0.5:
                    radius = 0.5 * max(xs.max() - xs.min(), ys.max() - ys.min(), 2)
                    occluded |= add_occluders(img, rng, (xs.mean(), ys.mean(), radius), 1)
        img = photometric_augment(img, rng, jitter=c.jitter, blur_prob=c.blur_prob, noise_std=c.noise_std)
        boxes = np.zeros((n_obj, 4), np.float32)
        present = np.zeros(n_obj, bool)
        hs, ws = -(-h // self.stride), -(-w // self.stride)
        masks = np.zeros((n_obj, hs, ws), np.float32)
        for k in chosen:
            vis = (label == k) & ~occluded
            box = amodal_box(K, poses[k], self.objects[k].vertices.numpy().astype(np.float64))
            boxes[k] = box
            area = max((box[2] - box[0]) * (box[3] - box[1]), 1.0)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            present[k] = vis.sum() >= 0.1 * area * 0.5 and 0 <= cx < w and 0 <= cy < h
            pad = np.zeros((hs * self.stride, ws * self.stride), np.float32)
            pad[:h, :w] = vis
            masks[k] = pad.reshape(hs, self.stride, ws, self.stride).mean(axis=(1, 3)) >= 0.25
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1).astype(np.float32))),
                "boxes": torch.from_numpy(boxes), "present": torch.from_numpy(present),
                "masks": torch.from_numpy(masks), "T": torch.as_tensor(poses, dtype=torch.float32)}
