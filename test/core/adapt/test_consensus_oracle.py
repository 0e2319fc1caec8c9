"""multiview_consensus end to end on a drift-free simulated loop with oracle per-frame estimates (the true poses):
the true world poses and per-frame pseudo poses come back, and each frame's weight follows from its residual
against the consensus, 1 / (1 + (r / residual_tau)^2), computed here from the stage's outputs."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.adapt.consensus import ConsensusConfig, MultiviewConsensus
from selfpose_core.adapt.context import AdaptContext
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.data.sim.generate import SimConfig, simulate
from selfpose_core.data.sim.odometry import OdometryNoise
from selfpose_core.data.sim.trajectories import TEST_TRAJECTORIES
from selfpose_core.geometry.se3 import invert, rotation_angle
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.bundle import ModelBundle

from .conftest import fake_estimates, tiny_bundle

CONFIG = ConsensusConfig(drift="weight", scene_registration=False, refine_iterations=5, refine_batch=8, crop_size=24,
                         silhouette_weight=0.0, depth_weight=0.0)


@pytest.fixture(scope="module")
def exact_loop(tmp_path_factory):
    """A 12-frame loop around two objects whose recorded camera poses are the true ones (no odometry drift)."""
    d = tmp_path_factory.mktemp("consensus_oracle")
    cfg = SimConfig(seed=3, objects=["tin_can", "cereal_box"], width=160, height=120, fx=142.5, fy=142.5, frames=12,
                    test_frames=1, tests=TEST_TRAJECTORIES[:1], odometry=OdometryNoise(0.0, 0.0, 0.0))
    simulate(d / "sim", cfg, progress=False)
    root = d / "sim"
    rec = Recording(root / "recording")
    bundle = ModelBundle.load(tiny_bundle(root / "objects.yaml", d / "model"))
    yield root, rec, bundle, load_objects_config(root / "objects.yaml")
    rec.close()


def _run(exact_loop, estimates, work):
    root, rec, bundle, objects = exact_loop
    ctx = AdaptContext(objects, rec, bundle, work, root / "objects.yaml", progress=False)
    MultiviewConsensus(estimates).run(ctx, CONFIG)
    return ctx.pseudo


def _true_world_poses(root, objects):
    s = next(iter(BopDataset(root / "bop", "train_loop").samples(1, load_depth=False, load_masks=False)))
    ids = [m.obj_id for m in objects]
    out = np.full((len(objects), 4, 4), np.nan)
    for g in s.gt:
        out[ids.index(g.obj_id)] = s.frame.T_world_cam @ g.T_cam_obj
    return out


def test_oracle_estimates_give_the_true_world_and_frame_poses(exact_loop, tmp_path):
    root, rec, _, objects = exact_loop
    assert np.allclose(rec.poses[0], next(iter(BopDataset(root / "bop", "train_loop").samples(
        1, load_depth=False, load_masks=False))).frame.T_world_cam, atol=1e-9)
    est = fake_estimates(root / "bop", 0.0, 0.0, 0, 0)
    pseudo = _run(exact_loop, est, tmp_path)
    truth = _true_world_poses(root, objects)
    for k in range(len(objects)):
        assert np.linalg.norm(pseudo.T_world_obj[k][:3, 3] - truth[k][:3, 3]) < 1e-3
        assert np.degrees(rotation_angle(pseudo.T_world_obj[k][:3, :3], truth[k][:3, :3])) < 0.1
    assert pseudo.frame_weight.min() > 0.999  # residuals below a third of a percent of the diameter
    for inst in pseudo.instances:
        T_true = invert(rec.poses[inst.frame]) @ truth[inst.obj_index]
        assert np.linalg.norm(inst.T_cam_obj[:3, 3] - T_true[:3, 3]) < 1e-3


def test_frame_weight_follows_the_frame_residual(exact_loop, tmp_path):
    root, rec, _, objects = exact_loop
    est = fake_estimates(root / "bop", 0.0, 0.0, 0, 0)
    diam = np.array([m.diameter for m in objects])
    for frame, share in ((3, 0.05), (7, 0.1)):  # these frames' estimates moved by a share of the diameter
        est.T_cam_obj[est.frame == frame, 0, 3] += share * diam[est.obj_index[est.frame == frame]]
    pseudo = _run(exact_loop, est, tmp_path)
    expected = np.ones(len(rec))
    for i in np.unique(est.frame):
        r = []
        for j in np.nonzero(est.frame == i)[0]:
            kp = objects[est.obj_index[j]].keypoints
            T_pred = invert(pseudo.T_world_cam[i]) @ pseudo.T_world_obj[est.obj_index[j]]
            moved = [kp @ T[:3, :3].T + T[:3, 3] for T in (T_pred, est.T_cam_obj[j])]
            r.append(np.linalg.norm(moved[0] - moved[1], axis=1).mean() / diam[est.obj_index[j]])
        expected[i] = 1.0 / (1.0 + (np.median(r) / CONFIG.residual_tau) ** 2)
    assert expected[7] < 0.7 < expected[3] < 0.9  # the planted offsets show
    assert np.allclose(pseudo.frame_weight, expected, rtol=1e-6)
