"""Every training job on the harness is deterministic: the same tiny run twice (fixed seeds, one thread) gives the
same weights and losses, byte for byte. The same digests, printed with -s, compare runs across a refactoring: the
harness move left all eight unchanged (docs/architecture.md, "Training harness")."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from selfpose_core.adapt.dual_scale import DualScale, DualScaleConfig
from selfpose_core.adapt.finetune import FinetuneConfig, PseudoLabelFinetune
from selfpose_core.adapt.nol import NolStage, NolStageConfig
from selfpose_core.adapt.pose_consistency import PoseConsistency, PoseConsistencyConfig
from selfpose_core.adapt.warp_align import WarpAlign, WarpAlignConfig
from selfpose_core.adapt.weak_segmentation import WeakSegmentationConfig
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.nol import NolConfig, NolNet, save_nol
from selfpose_core.models.pretrain import load_pretrain_config, pretrain
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.types import CameraIntrinsics

from .test_pose_consistency import gt_context

T = dict(steps=3, lr=1e-4, warmup_steps=1, log_every=1, checkpoint_every=1, progress=False)


def _digest(modules, losses):
    h = hashlib.sha256()
    for m in modules:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    lh = hashlib.sha256(json.dumps({k: float(v) for k, v in sorted(losses.items())}, sort_keys=True).encode())
    return {"weights": h.hexdigest()[:16], "losses": lh.hexdigest()[:16],
            "loss": float(losses.get("loss", float("nan")))}


def pretrain_jobs(adapt_scene, tmp_path):
    out = {}
    objects = load_objects_config(adapt_scene.objects_yaml)
    for kind in ("keypoint", "correspondence"):
        cfg = load_pretrain_config(None, {"pose_net": kind, "crop_size": 32, "crop_batch": 4, "scene_batch": 2,
                                          "pose_backbone": {"widths": [8, 8, 16], "out_stride": 4},
                                          "detector.backbone": {"widths": [8, 8, 16], "out_stride": 4},
                                          "detector.input_width": 80, "detector.input_height": 60, "workers": 0,
                                          "crop_pool": 6, "scene_pool": 3, "offset_warmup_steps": 2,
                                          "trainer": dict(T, lr=1e-3)})
        torch.manual_seed(0)  # pretrain() initialises the networks from the global generator before the trainer seeds
        b = pretrain(objects, CameraIntrinsics(142.5, 142.5, 79.5, 59.5, 160, 120), tmp_path / kind, cfg,
                     objects_config=adapt_scene.objects_yaml)
        out[kind] = _digest([b.detector, b.pose_net], b.spec.metrics["final_losses"])
    return out


def finetune(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = FinetuneConfig(crop_batch=4, scene_batch=2, crop_pool=6, scene_pool=3, trainer=TrainerConfig(**T))
    res = PseudoLabelFinetune().run(ctx, cfg)
    return _digest([ctx.bundle.detector, ctx.bundle.pose_net], res.losses)


def nol(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    torch.manual_seed(1)
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_nol(NolNet(NolConfig(crop_size=32)), tmp_path / "nol.pt")
    cfg = NolStageConfig(weights=str(tmp_path / "nol.pt"), render_size=32, step_deg=90.0, elevation_deg=(30.0, 30.0),
                         in_plane_deg=(0.0, 30.0), refine=False, crop_batch=2, scene_batch=1, recording_share=0.5,
                         trainer=TrainerConfig(**T))
    res = NolStage().run(ctx, cfg)
    return _digest([ctx.bundle.detector, ctx.bundle.pose_net], res.losses)


def pose_consistency(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = PoseConsistencyConfig(batch_size=2, synthetic_batch=1, vertex_samples=32, symmetry_samples=4, max_frames=3,
                                trainer=TrainerConfig(**T))
    res = PoseConsistency().run(ctx, cfg)
    return _digest([ctx.bundle.pose_net], res.losses)


def dual_scale(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = DualScaleConfig(batch_size=2, synthetic_batch=1, symmetry_samples=4,
                          segmentation=WeakSegmentationConfig(iterations=1, steps_per_round=1, batch_size=2,
                                                              synthetic_batch=1, tta_scales=(1.0,)),
                          trainer=TrainerConfig(**T))
    res = DualScale().run(ctx, cfg)
    return _digest([ctx.bundle.pose_net], res.losses)


def warp_align(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = WarpAlignConfig(sample_frames=6, batch_size=2, synthetic_batch=1, symmetry_samples=4,
                          trainer=TrainerConfig(**T))
    res = WarpAlign().run(ctx, cfg)
    return _digest([ctx.bundle.pose_net], res.losses)


def nol_network(tmp_path):
    from selfpose_core.models.nol import train_nol

    torch.manual_seed(0)
    cfg = NolConfig(crop_size=32, train_sources=3)
    last = train_nol(tmp_path, config=cfg, trainer=TrainerConfig(**dict(T, lr=1e-3)), workers=0)
    state = torch.load(tmp_path / "nol.pt", weights_only=True)
    net = NolNet(cfg)
    net.load_state_dict(state["state_dict"])
    return _digest([net], last)


JOBS = {"pretrain": pretrain_jobs, "finetune": finetune, "nol": nol, "pose_consistency": pose_consistency,
        "dual_scale": dual_scale, "warp_align": warp_align}


@pytest.mark.slow
@pytest.mark.parametrize("job", list(JOBS))
def test_training_job_is_deterministic(adapt_scene, tmp_path, job):
    first = JOBS[job](adapt_scene, tmp_path / "a")
    print(job, json.dumps(first, sort_keys=True))
    assert JOBS[job](adapt_scene, tmp_path / "b") == first


@pytest.mark.slow
def test_nol_network_training_is_deterministic(tmp_path):
    first = nol_network(tmp_path / "a")
    print("nol_network", json.dumps(first, sort_keys=True))
    assert nol_network(tmp_path / "b") == first
