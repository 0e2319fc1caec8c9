"""A tiny BOP dataset (written with BopWriter) shared by the evaluation tests: an asymmetric box (obj 1) and a
cylinder with a continuous symmetry about z (obj 2), two scenes of three 64x48 images each."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from selfpose_core.data.bop import BopDataset, BopWriter
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import CameraIntrinsics, Frame, ObjectModel, PoseEstimate, Symmetry

K = CameraIntrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)
IMAGES = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]


def make_objects() -> list[ObjectModel]:
    box = trimesh.creation.box(extents=(0.08, 0.05, 0.03))
    cyl = trimesh.creation.cylinder(radius=0.03, height=0.1, sections=24)
    return [object_model_from_arrays("box", box.vertices, box.faces, obj_id=1),
            object_model_from_arrays("can", cyl.vertices, cyl.faces, obj_id=2,
                                     symmetry=Symmetry(continuous=[(np.array([0.0, 0.0, 1.0]), np.zeros(3))]))]


def gt_pose(k: int, obj_id: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec([0.3 * k, 0.2 * obj_id, 0.1]).as_matrix()
    T[:3, 3] = [0.06 * (obj_id - 1.5), 0.01 * k - 0.02, 0.5]
    return T


@dataclass
class TinyBop:
    root: object
    dataset: BopDataset
    objects: list[ObjectModel]

    def gt(self, key: tuple[int, int], obj_id: int) -> np.ndarray:
        return gt_pose(IMAGES.index(key), obj_id)


@pytest.fixture(scope="session")
def tiny_bop(tmp_path_factory) -> TinyBop:
    root = tmp_path_factory.mktemp("bop")
    objects = make_objects()
    rng = np.random.default_rng(3)
    with BopWriter(root, "test") as w:
        w.write_models(objects)
        for k, (scene_id, im_id) in enumerate(IMAGES):
            frame = Frame(rgb=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), K=K)
            gt = [(1, gt_pose(k, 1)), (2, gt_pose(k, 2))]
            if (scene_id, im_id) == (2, 2):
                # The can is hidden behind something: 5% visible, below BOP's 10% -> not a target.
                full = np.zeros((48, 64), bool)
                full[10:30, 10:30] = True
                vis = np.zeros((48, 64), bool)
                vis[10:30, 10] = True
                w.write_frame(scene_id, im_id, frame, gt, masks_visib=[full, vis], masks=[full, full])
            else:
                w.write_frame(scene_id, im_id, frame, gt)
    return TinyBop(root, BopDataset(root, "test"), BopDataset(root, "test").objects)


def shifted(T: np.ndarray, dx: float = 0.0, rot_z: float = 0.0) -> np.ndarray:
    """``T`` moved by ``dx`` metres along camera x and turned by ``rot_z`` radians about the object z axis."""
    out = T.copy()
    out[:3, :3] = T[:3, :3] @ Rotation.from_rotvec([0, 0, rot_z]).as_matrix()
    out[0, 3] += dx
    return out


def make_estimates(bop: TinyBop) -> dict[tuple[int, int], list[PoseEstimate]]:
    """Box: exact in 3 images, 3 cm off in 2, missing in 1. Can: turned 90 deg about its axis everywhere
    (indistinguishable), plus a low-score wrong duplicate."""
    est: dict[tuple[int, int], list[PoseEstimate]] = {}
    for k, key in enumerate(IMAGES):
        ests = []
        if k < 3:
            ests.append(PoseEstimate("box", bop.gt(key, 1), 0.9, object_id=1))
        elif k < 5:
            ests.append(PoseEstimate("box", shifted(bop.gt(key, 1), dx=0.03), 0.8, object_id=1))
        ests.append(PoseEstimate("can", shifted(bop.gt(key, 2), rot_z=np.pi / 2), 0.7, object_id=2))
        ests.append(PoseEstimate("can", shifted(bop.gt(key, 2), dx=0.2), 0.1, object_id=2))
        est[key] = ests
    return est


class NoisyGtEstimator:
    """Test double of PoseEstimator: finds the dataset image it is given and returns its GT poses, 1 mm off."""

    def __init__(self, dataset, rng):
        self._samples = list(dataset.samples(load_depth=False, load_masks=False))
        self._rng = rng
        self._names = {o.obj_id: o.name for o in dataset.objects}

    def estimate(self, frame):
        sample = next(s for s in self._samples if np.array_equal(s.frame.rgb, frame.rgb))
        out = []
        for g in sample.gt:
            T = g.T_cam_obj.copy()
            T[:3, 3] += self._rng.normal(0, 0.001, 3)
            out.append(PoseEstimate(self._names[g.obj_id], T, 1.0, object_id=g.obj_id))
        return out
