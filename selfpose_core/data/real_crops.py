"""Training samples cut from real images with known poses (a BOP split with ground truth, or pseudo ground truth).

Used for the supervised upper bound (the pose network trained with the recording's true poses) and by any stage
that has poses for real frames. Items have exactly the keys and shapes of the synthetic ones
(:class:`selfpose_core.data.synthetic.SyntheticCrops` / ``SyntheticScenes``) so the two can be mixed in a batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from selfpose_core.data.backgrounds import photometric_augment, random_background
from selfpose_core.data.bop import BopDataset, BopSample
from selfpose_core.data.crops import ObjectGeometry, amodal_box, crop_affine, crop_sample, render_targets, square_box
from selfpose_core.data.synthetic import SyntheticConfig
from selfpose_core.errors import DatasetError


class _SampleCache:
    """Decoded BOP samples (image + masks), kept per process: the real sets are small and decoding dominates."""

    def __init__(self, dataset: BopDataset, size: int = 512) -> None:
        self.dataset, self.size = dataset, size
        self._items: dict[tuple[int, int], BopSample] = {}

    def get(self, scene_id: int, im_id: int) -> BopSample:
        key = (scene_id, im_id)
        if key not in self._items:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = self.dataset.sample(scene_id, im_id, load_depth=False, load_masks=True)
        return self._items[key]


@dataclass(slots=True)
class RealInstance:
    """One object instance in one image: where to read it and its pose."""

    scene_id: int
    im_id: int
    obj_index: int  # index into the objects list
    T_cam_obj: np.ndarray  # (4, 4)


def index_bop(dataset: BopDataset, obj_ids: Sequence[int], min_visib_fract: float = 0.2) -> list[RealInstance]:
    """All ground-truth instances of ``obj_ids`` (in that order -> obj_index) visible enough in ``dataset``."""
    lookup = {int(o): i for i, o in enumerate(obj_ids)}
    out = []
    for scene_id in dataset.scene_ids:
        for im_id in dataset.image_ids(scene_id):
            s = dataset.sample(scene_id, im_id, load_depth=False, load_masks=False)
            for g in s.gt:
                if g.obj_id in lookup and (g.visib_fract < 0 or g.visib_fract >= min_visib_fract):
                    out.append(RealInstance(scene_id, im_id, lookup[g.obj_id], g.T_cam_obj))
    if not out:
        raise DatasetError(f"{dataset.root}: no ground-truth instance of obj_ids {list(obj_ids)} is visible enough")
    return out


class RealCrops(Dataset):
    """Pose-network crops of real images at known poses; item i is instance ``i % len(instances)`` with a jitter
    drawn from (seed, i). The visible mask is the rendered silhouette where the image's depth (if any) agrees, else
    the BOP mask_visib, else the full silhouette."""

    def __init__(self, dataset: BopDataset, instances: Sequence[RealInstance], objects: Sequence[ObjectGeometry],
                 length: int, seed: int = 0, crop_size: int = 64, stride: int = 2,
                 config: SyntheticConfig | None = None, n_sym: int | None = None) -> None:
        self.dataset = dataset
        self.instances = list(instances)
        self.objects = list(objects)
        self.length = int(length)
        self.seed = int(seed)
        self.crop_size = int(crop_size)
        self.stride = int(stride)
        self.config = config or SyntheticConfig()
        self.n_sym = n_sym or max(len(o.symmetries) for o in self.objects)
        self.cache = _SampleCache(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, int(index), 2])
        inst = self.instances[int(index) % len(self.instances)]
        sample = self.cache.get(inst.scene_id, inst.im_id)
        obj = self.objects[inst.obj_index]
        T = inst.T_cam_obj
        K = sample.frame.K
        box = square_box(amodal_box(K.K, T, obj.vertices.numpy().astype(np.float64)), c.crop_padding,
                         rng.uniform(*c.crop_scale_jitter), tuple(rng.normal(0, c.crop_shift_std, 2)))
        s = self.crop_size
        A = crop_affine(box, s)
        img = cv2.warpAffine(sample.frame.rgb, A, (s, s), flags=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        K_crop = K.crop_resize(tuple(box), s)
        r = render_targets(obj, K_crop.K, T, (s, s))
        visible = None
        gt = next((g for g in sample.gt if np.allclose(g.T_cam_obj, T)), None)
        if gt is not None and gt.mask_visib is not None:
            visible = cv2.warpAffine(gt.mask_visib.astype(np.uint8), A, (s, s), flags=cv2.INTER_NEAREST) > 0
        img = photometric_augment(img, rng, jitter=c.jitter * 0.5, blur_prob=c.blur_prob * 0.5,
                                  noise_std=c.noise_std * 0.5)
        return crop_sample(obj, img, K_crop, T, inst.obj_index, self.stride, self.n_sym, visible, render=r)


class RealScenes(Dataset):
    """Detector images from real frames at known poses, downscaled to (width, height); keys as SyntheticScenes."""

    def __init__(self, dataset: BopDataset, obj_ids: Sequence[int], objects: Sequence[ObjectGeometry], width: int,
                 height: int, length: int, seed: int = 0, stride: int = 4, config: SyntheticConfig | None = None,
                 background_swap: float = 0.0) -> None:
        self.dataset = dataset
        self.obj_ids = [int(o) for o in obj_ids]
        self.objects = list(objects)
        self.images = [(sc, im) for sc in dataset.scene_ids for im in dataset.image_ids(sc)]
        if not self.images:
            raise DatasetError(f"{dataset.root}: no images")
        self.width, self.height = int(width), int(height)
        self.length = int(length)
        self.seed = int(seed)
        self.stride = int(stride)
        self.config = config or SyntheticConfig()
        self.background_swap = float(background_swap)
        self.cache = _SampleCache(dataset)

    def __len__(self) -> int:
        return self.length

    def _swap_background(self, img: np.ndarray, sample: BopSample, rng: np.random.Generator) -> np.ndarray:
        """``img`` (h, w, 3) with everything but the objects' visible masks replaced by a random background (the
        image itself when an object in it has no mask)."""
        h, w = img.shape[:2]
        gts = [g for g in sample.gt if g.obj_id in self.obj_ids]
        if not gts or any(g.mask_visib is None for g in gts):
            return img
        fg = np.zeros((h, w), bool)
        for g in gts:
            fg |= cv2.resize(g.mask_visib.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        return np.where(fg[..., None], img, random_background(h, w, rng)).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index), 3])
        sc, im = self.images[int(index) % len(self.images)]
        sample = self.cache.get(sc, im)
        w, h = self.width, self.height
        fr = sample.frame
        K = fr.K.scaled(w / fr.K.width, h / fr.K.height)
        img = cv2.resize(fr.rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        swap_rng = np.random.default_rng([self.seed, int(index), 4])  # its own stream: the rest stays the same
        if self.background_swap and swap_rng.random() < self.background_swap:
            img = self._swap_background(img, sample, swap_rng)
        c = self.config
        img = photometric_augment(img, rng, jitter=c.jitter * 0.5, blur_prob=c.blur_prob * 0.5,
                                  noise_std=c.noise_std * 0.5)
        n = len(self.obj_ids)
        boxes = np.zeros((n, 4), np.float32)
        present = np.zeros(n, bool)
        hs, ws = -(-h // self.stride), -(-w // self.stride)
        masks = np.zeros((n, hs, ws), np.float32)
        poses = np.tile(np.eye(4), (n, 1, 1))
        for g in sample.gt:
            if g.obj_id not in self.obj_ids:
                continue
            k = self.obj_ids.index(g.obj_id)
            poses[k] = g.T_cam_obj
            box = amodal_box(K.K, g.T_cam_obj, self.objects[k].vertices.numpy().astype(np.float64))
            boxes[k] = box
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            present[k] = (g.visib_fract < 0 or g.visib_fract >= 0.1) and 0 <= cx < w and 0 <= cy < h
            if g.mask_visib is not None:
                m = cv2.resize(g.mask_visib.astype(np.float32), (ws, hs), interpolation=cv2.INTER_AREA)
                masks[k] = m >= 0.25
            else:
                m = render_targets(self.objects[k], K.K, g.T_cam_obj, (h, w))["mask"]
                masks[k] = cv2.resize(m, (ws, hs), interpolation=cv2.INTER_AREA) >= 0.25
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                "boxes": torch.from_numpy(boxes), "present": torch.from_numpy(present),
                "masks": torch.from_numpy(masks), "T": torch.as_tensor(poses, dtype=torch.float32)}
