"""Real detector images from pseudo-labelled frames: the background swap keeps the objects' visible pixels and
replaces the rest, and leaves frames whose objects have no mask untouched."""
from __future__ import annotations

import numpy as np
import trimesh

from selfpose_core.data.bop import BopDataset, BopWriter
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.real_crops import RealScenes
from selfpose_core.data.synthetic import SyntheticConfig
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)


def _dataset(tmp_path, with_mask: bool) -> tuple[BopDataset, list[ObjectGeometry], np.ndarray]:
    box = trimesh.creation.box(extents=(0.08, 0.05, 0.03))
    model = object_model_from_arrays("box", box.vertices, box.faces, obj_id=1)
    T = np.eye(4)
    T[2, 3] = 0.5
    visible = np.zeros((48, 64), bool)
    visible[14:34, 20:44] = True
    rgb = np.full((48, 64, 3), 90, np.uint8)
    rgb[visible] = (200, 40, 40)
    with BopWriter(tmp_path, "train") as w:
        w.write_models([model])
        w.write_frame(1, 0, Frame(rgb=rgb, K=K), [(1, T)], **({"masks_visib": [visible]} if with_mask else {}))
    return BopDataset(tmp_path, "train"), [ObjectGeometry.from_model(model)], visible


def _images(dataset, geoms, swap: float) -> np.ndarray:
    quiet = SyntheticConfig(jitter=0.0, blur_prob=0.0, noise_std=0.0)
    scenes = RealScenes(dataset, [1], geoms, 64, 48, 6, seed=0, config=quiet, background_swap=swap)
    return np.stack([scenes[i]["image"].numpy().transpose(1, 2, 0) for i in range(len(scenes))])


def test_background_swap_keeps_the_objects_and_replaces_the_rest(tmp_path):
    dataset, geoms, visible = _dataset(tmp_path, with_mask=True)
    plain, swapped = _images(dataset, geoms, 0.0), _images(dataset, geoms, 1.0)
    assert np.allclose(swapped[:, visible], plain[:, visible], atol=1e-6)
    changed = np.abs(swapped - plain).max(-1) > 0.05
    assert changed[:, ~visible].mean() > 0.5
    assert not np.allclose(swapped[0][~visible], swapped[1][~visible])  # another background per sample


def test_frames_without_masks_keep_their_background(tmp_path):
    dataset, geoms, _ = _dataset(tmp_path, with_mask=False)
    assert np.allclose(_images(dataset, geoms, 1.0), _images(dataset, geoms, 0.0))
