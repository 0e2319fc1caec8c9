"""Synthetic training samples: targets agree with the pose, samples are repeatable, scenes hold boxes and masks."""
from __future__ import annotations

import numpy as np
import torch

from selfpose_core.data.crops import ObjectGeometry, crop_image, project_points, square_box
from selfpose_core.data.synthetic import SyntheticCrops, SyntheticScenes
from selfpose_core.types import CameraIntrinsics

K = CameraIntrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)


def test_crop_targets_match_the_pose(objects):
    geoms = [ObjectGeometry.from_model(m) for m in objects]
    ds = SyntheticCrops(geoms, K, length=8, seed=3, crop_size=64, stride=4)
    a, b = ds[5], ds[5]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(ds[4]["image"], a["image"])
    item = ds[2]
    g = geoms[int(item["obj_index"])]
    T, Kc = item["T"].double().numpy(), item["K"].double().numpy()
    kp = project_points(Kc, T, g.keypoints)
    assert np.allclose(item["keypoints"][0].numpy(), kp, atol=1e-3)
    sil, vis = item["silhouette"].numpy(), item["visible"].numpy()
    assert sil.shape == (16, 16) and sil.sum() > 5 and np.all(vis <= sil)
    # the normalised coordinates of silhouette cells lie on the object (inside its box), zero elsewhere
    coords = item["coords"][0].numpy()
    assert np.all(np.abs(coords) <= 1.0 + 1e-5) and np.all(coords[:, sil == 0] == 0)
    X = coords[:, sil > 0].T * g.coord_half_extent + g.coord_centre
    uv = project_points(Kc, T, X)
    cells = np.argwhere(sil > 0)[:, ::-1] * 4 + 1.5  # cell centres (x, y) in crop pixels
    assert np.median(np.linalg.norm(uv - cells, axis=1)) < 1.5
    assert 0 < float(item["scale"]) < 64


def test_scene_boxes_and_masks(objects):
    geoms = [ObjectGeometry.from_model(m) for m in objects]
    ds = SyntheticScenes(geoms, K, 160, 120, length=6, seed=1, stride=4)
    seen = 0
    for i in range(6):
        it = ds[i]
        assert it["image"].shape == (3, 120, 160) and it["masks"].shape == (2, 30, 40)
        for k in np.flatnonzero(it["present"].numpy()):
            box = it["boxes"][k].numpy()
            ys, xs = np.nonzero(it["masks"][k].numpy())
            assert len(xs) > 0
            # visible mask cells lie inside the amodal box (stride-4 cells, one cell of slack)
            assert xs.min() * 4 >= box[0] - 4 and (xs.max() + 1) * 4 <= box[2] + 4
            assert ys.min() * 4 >= box[1] - 4 and (ys.max() + 1) * 4 <= box[3] + 4
            seen += 1
    assert seen > 0


def test_crop_image_and_square_box_geometry():
    img = np.zeros((40, 60), np.float32)
    img[10:20, 30:40] = 1.0
    box = square_box(np.array([30.0, 10.0, 40.0, 20.0]), padding=2.0)
    assert np.allclose(box, [25, 5, 45, 25])
    crop = crop_image(img, box, 20)
    assert np.allclose(crop[5:15, 5:15], 1.0) and crop.sum() == 100
