"""A tiny embedded scene for the adaptation framework tests: a simulated loop of 160x120 frames with odometry drift,
a tiny (untrained) model bundle, and per-frame estimates made from the ground truth plus noise, standing in for a
pre-trained estimator (``fake_estimates``; the test harness writes them, adaptation code never sees ground truth).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from selfpose_core.adapt.consensus import FrameEstimates
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.sim.generate import SimConfig, simulate
from selfpose_core.data.sim.trajectories import TEST_TRAJECTORIES
from selfpose_core.geometry.se3 import make_T, se3_exp
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig

# the harness a subprocess runs (CLI / torchrun tests): per-frame estimates from a file instead of the network
HARNESS = """
import sys
import numpy as np
import selfpose_core.adapt.consensus as consensus
from selfpose_core.cli.main import main

fake = consensus.FrameEstimates.load(__import__("pathlib").Path(sys.argv[1]))


def estimate_frames(ctx, frames, estimator, min_score, progress=False):
    keep = np.isin(fake.frame, frames)
    return consensus.FrameEstimates(fake.frame[keep], fake.obj_index[keep], fake.T_cam_obj[keep], fake.score[keep],
                                    fake.box[keep], [m for m, k in zip(fake.masks, keep) if k])


consensus.estimate_frames = estimate_frames
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class AdaptScene:
    root: Path  # simulator output
    objects_yaml: Path
    model: Path  # tiny untrained bundle
    estimates: Path  # FrameEstimates .npz
    harness: Path

    @property
    def bag(self) -> Path:
        return self.root / "recording"

    @property
    def bop(self) -> Path:
        return self.root / "bop"


def fake_estimates(bop: Path, noise_m: float, noise_deg: float, outlier_every: int, seed: int) -> FrameEstimates:
    """Ground truth of the training loop + Gaussian noise; every ``outlier_every``-th estimate is a gross error."""
    rng = np.random.default_rng(seed)
    ds = BopDataset(bop, "train_loop")
    names = [m.obj_id for m in ds.objects]
    rows = []
    for s in ds.samples(1, load_depth=False, load_masks=True):
        for g in s.gt:
            if g.visib_fract < 0.3:
                continue
            T = g.T_cam_obj.copy()
            T[:3, :3] = T[:3, :3] @ se3_exp(np.r_[0.0, 0.0, 0.0, rng.normal(0, np.radians(noise_deg), 3)])[:3, :3]
            T[:3, 3] += rng.normal(0, noise_m, 3)
            if outlier_every and len(rows) % outlier_every == outlier_every - 1:
                T = make_T(se3_exp(np.r_[0, 0, 0, rng.normal(0, 2.0, 3)])[:3, :3], T[:3, 3] + rng.normal(0, 0.1, 3))
            x, y, w, h = g.bbox_visib
            rows.append((s.im_id, names.index(g.obj_id), T, 0.9, np.array([x, y, x + w, y + h], float), g.mask_visib))
    return FrameEstimates(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                          np.stack([r[2] for r in rows]), np.array([r[3] for r in rows]),
                          np.stack([r[4] for r in rows]), [r[5] for r in rows])


def tiny_bundle(objects_yaml: Path, out: Path) -> Path:
    objects = load_objects_config(objects_yaml)
    spec = BundleSpec([BundleObject.from_model(m) for m in objects], str(objects_yaml.resolve()),
                      PoseNetSpec("keypoint", 32, BackboneConfig((8, 12, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 12, 16), 4), 80, 60), (160, 120))
    return ModelBundle.create(spec).save(out)


@pytest.fixture(scope="session")
def adapt_scene(tmp_path_factory) -> AdaptScene:
    d = tmp_path_factory.mktemp("adapt_scene")
    cfg = SimConfig(seed=3, objects=["tin_can", "cereal_box"], width=160, height=120, fx=142.5, fy=142.5, frames=12,
                    test_frames=2, tests=TEST_TRAJECTORIES[:1])
    simulate(d / "sim", cfg, progress=False)
    root = d / "sim"
    model = tiny_bundle(root / "objects.yaml", d / "model_pre")
    est = fake_estimates(root / "bop", 0.004, 2.0, 7, 0)
    est.save(d / "estimates.npz")
    (d / "harness.py").write_text(HARNESS)
    return AdaptScene(root, root / "objects.yaml", model, d / "estimates.npz", d / "harness.py")
