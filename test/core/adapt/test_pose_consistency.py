"""pose_consistency: differentiable poses of both networks, the vertex consistency loss (Eq. 1), occlusion patches,
the render labels (Eq. 2), one step's losses and gradients, and a few stage steps on the tiny simulated loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.network_pose import network_pose, plausible, vertex_consistency
from selfpose_core.adapt.occlusion_patches import fill_noise, random_patches
from selfpose_core.adapt.pose_consistency import (PoseConsistency, PoseConsistencyConfig, pose_consistency_losses,
                                                  render_labels, shaded_render, supervised_terms)
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.adapt.recording_crops import FrameStore, crop_batch, recording_instances
from selfpose_core.adapt.stage_training import ObjectTensors
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.crops import ObjectGeometry, amodal_box, square_box
from selfpose_core.data.recording import Recording
from selfpose_core.geometry.se3 import make_T, se3_exp
from selfpose_core.geometry.symmetry import symmetry_transforms
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.models.pretrain import PretrainConfig
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.types import CameraIntrinsics, Symmetry


def gt_context(scene, work: Path, kind: str = "keypoint", stride: int = 4) -> AdaptContext:
    """An AdaptContext on the tiny loop whose pseudo labels are the ground truth (the test plays the consensus)."""
    objects = load_objects_config(scene.objects_yaml)
    rec = Recording(scene.bag)
    spec = BundleSpec([BundleObject.from_model(m) for m in objects], str(scene.objects_yaml),
                      PoseNetSpec(kind, 32, BackboneConfig((8, 12, 16), stride)),
                      DetectorConfig(BackboneConfig((8, 12, 16), 4), 80, 60), (160, 120))
    torch.manual_seed(0)
    bundle = ModelBundle.create(spec)
    ids = [m.obj_id for m in objects]
    inst = []
    for s in BopDataset(scene.bop, "train_loop").samples(1, load_depth=False, load_masks=True):
        for g in s.gt:
            if g.obj_id in ids and g.visib_fract >= 0.3:
                k = ids.index(g.obj_id)
                inst.append(PseudoInstance(s.im_id, k, g.T_cam_obj, amodal_box(s.frame.K.K, g.T_cam_obj,
                                                                               objects[k].vertices),
                                           1.0, g.mask_visib, g.visib_fract))
    n = len(rec)
    pseudo = PseudoLabels([m.name for m in objects], np.tile(np.eye(4), (len(objects), 1, 1)), np.ones(len(objects)),
                          rec.poses, np.ones(n), inst)
    return AdaptContext(objects, rec, bundle, work, scene.objects_yaml, pseudo=pseudo, progress=False)


def _box_object(name="box", symmetry=None):
    import trimesh

    from selfpose_core.mesh.loading import object_model_from_arrays

    m = trimesh.creation.box((0.08, 0.05, 0.12))
    return object_model_from_arrays(name, np.asarray(m.vertices), np.asarray(m.faces), symmetry=symmetry)


def test_vertex_consistency_zero_at_agreement_and_modulo_symmetry():
    obj = _box_object()
    T = make_T(se3_exp(np.r_[0, 0, 0, 0.3, -0.2, 0.5])[:3, :3], np.array([0.02, -0.01, 0.6]))
    R = torch.as_tensor(T[None, :3, :3], dtype=torch.float64)
    t = torch.as_tensor(T[None, :3, 3], dtype=torch.float64)
    pts = torch.as_tensor(obj.vertices[None], dtype=torch.float64)
    diam = torch.tensor([obj.diameter], dtype=torch.float64)
    eye = [torch.eye(4, dtype=torch.float64)[None]]
    assert float(vertex_consistency(R, t, R, t, pts, eye, diam)) < 1e-12
    shifted = float(vertex_consistency(R, t, R, t + torch.tensor([[0.0, 0.01, 0.0]], dtype=torch.float64), pts, eye,
                                       diam))
    assert shifted == pytest.approx(0.01 / obj.diameter, rel=1e-9)
    flip = se3_exp(np.r_[0, 0, 0, 0, 0, np.pi])  # 180 deg about the box's z axis: a symmetry of the box
    T2 = T @ flip
    R2 = torch.as_tensor(T2[None, :3, :3], dtype=torch.float64)
    assert float(vertex_consistency(R, t, R2, t, pts, eye, diam)) > 0.1
    syms = [torch.as_tensor(symmetry_transforms(Symmetry(discrete=flip[None])))]
    assert float(vertex_consistency(R, t, R2, t, pts, syms, diam)) < 1e-9


def _oracle_outputs(kind: str, geom: ObjectGeometry, K: np.ndarray, T: np.ndarray, size: int, stride: int):
    """What a perfect network would output for one crop."""
    from selfpose_core.data.crops import pose_targets

    t = pose_targets(geom, CameraIntrinsics.from_K(K, size, size), T, size, stride)
    h = size // stride
    logits = torch.as_tensor(t["visible"] * 20 - 10)[None]
    if kind == "keypoint":
        votes = torch.as_tensor(t["keypoints"][0])[None, :, :, None, None].expand(1, 9, 2, h, h)
        return {"mask_logits": logits, "votes": votes, "attention": torch.zeros(1, 9, h, h)}
    return {"mask_logits": logits, "coords": torch.as_tensor(t["coords"][:1]), "error": torch.zeros(1, h, h)}


@pytest.mark.parametrize("kind", ["keypoint", "correspondence"])
def test_network_pose_recovers_the_pose_of_oracle_outputs(kind):
    obj = _box_object()
    geom = ObjectGeometry.from_model(obj)
    spec = BundleSpec([BundleObject.from_model(obj)], "objects.yaml", PoseNetSpec(kind, 64, BackboneConfig((8, 8), 2)))
    net = ModelBundle.create(spec).pose_net
    T = make_T(se3_exp(np.r_[0, 0, 0, 0.4, 0.3, -0.2])[:3, :3], np.array([0.01, 0.02, 0.7]))
    cam = CameraIntrinsics(500, 500, 320, 240, 640, 480)
    box = square_box(amodal_box(cam.K, T, obj.vertices), 1.3)
    K = cam.crop_resize(tuple(box), 64).K
    out = _oracle_outputs(kind, geom, K, T, 64, 2)
    R, t, valid = network_pose(net, out, torch.tensor([0]), torch.as_tensor(K[None]), spec.objects)
    assert bool(valid[0])
    assert np.allclose(t[0].numpy(), T[:3, 3], atol=2e-3 if kind == "correspondence" else 1e-4)
    assert np.allclose(R[0].numpy(), T[:3, :3], atol=2e-2 if kind == "correspondence" else 1e-3)


def test_plausible_poses():
    K = torch.tensor([[[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]]]).expand(4, 3, 3)
    t = torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 5.0], [1.0, 0.0, 0.5], [0.0, 0.0, -0.5]])
    ok = plausible(torch.eye(3).expand(4, 3, 3), t, K, 64, torch.full((4,), 0.2))
    assert ok.tolist() == [True, False, False, False]  # 40 px wide at the centre; 4 px; off the crop; behind


def test_occlusion_patches():
    g = torch.Generator().manual_seed(0)
    p = random_patches(64, 32, 32, g, probability=0.5, max_patches=2, size=(0.1, 0.3))
    assert p.shape == (64, 32, 32) and p.dtype == torch.bool
    frac = p.float().mean(dim=(1, 2))
    assert 0.15 < float((frac > 0).float().mean()) < 0.85  # about half the images have patches
    assert float(frac.max()) <= 2 * 0.3 * 0.3 + 1e-6
    img = torch.rand(64, 3, 32, 32, generator=g)
    out = fill_noise(img, p, g)
    assert torch.equal(out[~p[:, None].expand_as(img)], img[~p[:, None].expand_as(img)])
    assert float((out - img).abs()[p[:, None].expand_as(img)].mean()) > 0.1


def test_render_labels_are_minimal_for_the_oracle():
    obj = _box_object()
    geom = ObjectGeometry.from_model(obj)
    objs = ObjectTensors([geom], 32, 0)
    spec = BundleSpec([BundleObject.from_model(obj)], "objects.yaml",
                      PoseNetSpec("keypoint", 32, BackboneConfig((8, 8), 2)))
    net = ModelBundle.create(spec).pose_net
    T = make_T(se3_exp(np.r_[0, 0, 0, 0.4, 0.3, -0.2])[:3, :3], np.array([0.0, 0.0, 0.7]))
    cam = CameraIntrinsics(500, 500, 320, 240, 640, 480)
    K = cam.crop_resize(tuple(square_box(amodal_box(cam.K, T, obj.vertices), 1.3)), 32).K
    R, t = torch.as_tensor(T[None, :3, :3]).float(), torch.as_tensor(T[None, :3, 3]).float()
    r = shaded_render(objs, torch.tensor([0]), R, t, torch.as_tensor(K[None]).float(), 32)
    assert r["image"].shape == (1, 3, 32, 32) and bool(r["mask"].any())
    labels = render_labels(objs, torch.tensor([0]), T[None], K[None], r["mask"].numpy(), r["coords"].numpy(),
                           r["mask"].numpy(), 32, 2)
    oracle = _oracle_outputs("keypoint", geom, K, T, 32, 2)
    wrong = dict(oracle, votes=oracle["votes"] + 3.0)
    good = float(supervised_terms(net, oracle, labels, 0.1)[0])
    bad = float(supervised_terms(net, wrong, labels, 0.1)[0])
    assert good < 0.05 < bad


@pytest.mark.parametrize("kind", ["keypoint", "correspondence"])
def test_step_losses_finite_with_gradients(adapt_scene, tmp_path, kind):
    ctx = gt_context(adapt_scene, tmp_path, kind)
    # an untrained network's poses are rarely plausible: accept every pose so that all terms carry gradients
    cfg = PoseConsistencyConfig(batch_size=3, vertex_samples=32, plausible_offset=1e9, plausible_size=(0.0, 1e9))
    instances = recording_instances(ctx)
    store = FrameStore(ctx, [i.frame for i in instances[:3]])
    objs = ObjectTensors(ctx.geometries(4), 32, 0)
    real = crop_batch(store, instances[:3], 32, np.random.default_rng(0), cfg.jitter())
    net = ctx.bundle.pose_net
    res = pose_consistency_losses(net, real, None, objs, ctx.bundle.spec.objects, cfg,
                                  PretrainConfig(offset_warmup_steps=0), torch.Generator().manual_seed(0), 32, 4)
    for key in ("loss", "pose", "sup_render", "percep"):
        assert torch.isfinite(res[key]), key
    res["loss"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and float(sum(g.abs().sum() for g in grads)) > 0


def test_stage_runs_and_checkpoints(adapt_scene, tmp_path):
    ctx = gt_context(adapt_scene, tmp_path)
    cfg = PoseConsistencyConfig(batch_size=2, synthetic_batch=1, vertex_samples=32, symmetry_samples=4, max_frames=3,
                                trainer=TrainerConfig(steps=2, lr=1e-4, warmup_steps=1, log_every=1,
                                                      checkpoint_every=1, progress=False))
    before = [p.detach().clone() for p in ctx.bundle.pose_net.parameters()]
    result = PoseConsistency().run(ctx, cfg)
    assert (tmp_path / "pose_consistency" / "train" / "checkpoint.pt").is_file()
    assert {"loss", "pose", "sup_render", "percep", "sup_synthetic"} <= set(result.losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, ctx.bundle.pose_net.parameters()))
    assert ctx.bundle.spec.provenance["stages"][-1]["stage"] == "pose_consistency"


@pytest.mark.slow
def test_self_supervised_stages_keep_ddp_replicas_identical(adapt_scene, tmp_path):
    """torchrun with 2 gloo processes: each stage's step is one DDP forward, so the replicas stay identical."""
    import subprocess
    import sys

    t = "{steps: 2, checkpoint_every: 1, log_every: 1, warmup_steps: 1}"
    settings = ["stages=[multiview_consensus, pose_consistency, dual_scale, warp_align]",
                "multiview_consensus.refine_iterations=3", "multiview_consensus.crop_size=24",
                "multiview_consensus.refine_batch=4", f"pose_consistency.trainer={t}", "pose_consistency.batch_size=2",
                "pose_consistency.synthetic_batch=1", f"dual_scale.trainer={t}", "dual_scale.batch_size=2",
                "dual_scale.synthetic_batch=1",
                "dual_scale.segmentation={iterations: 1, steps_per_round: 1, batch_size: 2, synthetic_batch: 1}",
                f"warp_align.trainer={t}", "warp_align.batch_size=2", "warp_align.sample_frames=6",
                "warp_align.synthetic_batch=1"]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(adapt_scene.harness), str(adapt_scene.estimates), "adapt", "--bag", str(adapt_scene.bag), "--objects",
           str(adapt_scene.objects_yaml), "--model", str(adapt_scene.model), "--out", str(out), "--no-progress",
           "--threads", "1"] + [a for s in settings for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("pose_consistency", "dual_scale", "warp_align"):
        ck = [torch.load(out / "work" / stage / d / "checkpoint.pt", weights_only=True)
              for d in ("train", "train.rank1")]
        a, b = ck[0]["modules"]["pose_net"], ck[1]["modules"]["pose_net"]
        params = [k for k in a if "running_" not in k and "num_batches" not in k]
        assert params and all(torch.equal(a[k], b[k]) for k in params), stage


def test_without_pseudo_labels_the_detector_is_asked_and_nothing_found_is_an_error(adapt_scene, tmp_path):
    from selfpose_core.errors import DatasetError

    ctx = gt_context(adapt_scene, tmp_path)
    ctx.pseudo = None
    with pytest.raises(DatasetError, match="recording"):
        recording_instances(ctx, min_score=1.01, max_frames=2)  # no score reaches 1.01
    assert ctx.bundle.pose_net.training  # modes restored after detecting


class ShiftingPoseOracle(KeypointNet):
    """A keypoint network that votes every cell for the keypoints of ``poses[b]`` seen by crop camera ``K[b]``; on
    the doubled batch (masked real crops, then renders) the renders' poses are moved by ``shift`` (camera frame)."""

    def __init__(self, net, objects, poses, K, shift):
        super().__init__(net.num_objects, net.config)
        self.objects, self.poses, self.K, self.shift = objects, poses, K, shift

    def forward(self, image, obj_index):
        b, h = len(obj_index), image.shape[-1] // self.config.backbone.out_stride
        poses = list(self.poses)
        if b == 2 * len(poses):
            poses += [np.r_[T[:3], [[0, 0, 0, 1]]] + np.pad(self.shift[:, None], ((0, 1), (3, 0))) for T in poses]
        votes = torch.zeros(b, 9, 2, h, h)
        for i, (T, k) in enumerate(zip(poses, obj_index.tolist())):
            x = self.objects[k].keypoints @ T[:3, :3].T + T[:3, 3]
            uvw = x @ self.K[i % len(self.poses)].T
            votes[i] = torch.as_tensor(uvw[:, :2] / uvw[:, 2:])[..., None, None]
        return {"mask_logits": torch.full((b, h, h), 10.0), "votes": votes, "attention": torch.zeros(b, 9, h, h)}


def test_pose_term_is_the_vertex_distance_between_the_real_and_the_rendered_views(adapt_scene, tmp_path):
    """Eq. 1 and 3 with an oracle whose poses on the renders are off by a known 1 cm: L_pose = 1 cm / diameter
    (weighted over the crops) and the loss is pose_weight L_pose + sup_weight L_sup + percep_weight L_percep."""
    ctx = gt_context(adapt_scene, tmp_path, "keypoint")
    instances = recording_instances(ctx)[:3]
    store = FrameStore(ctx, [i.frame for i in instances])
    objs = ObjectTensors(ctx.geometries(4), 64, 0)
    real = crop_batch(store, instances, 32, np.random.default_rng(0), PoseConsistencyConfig().jitter())
    shift = np.array([0.01, 0.0, 0.0])
    oracle = ShiftingPoseOracle(ctx.bundle.pose_net, ctx.bundle.spec.objects, [i.T_cam_obj for i in instances],
                                real["K"].double().numpy(), shift)
    assert isinstance(ctx.bundle.pose_net, KeypointNet)
    diam = np.array([ctx.objects[i.obj_index].diameter for i in instances])
    weight = real["weight"].double().numpy()
    for pose_weight in (1.0, 3.0):
        cfg = PoseConsistencyConfig(vertex_samples=64, pose_weight=pose_weight, occlusion_prob=0.0)
        res = pose_consistency_losses(oracle, real, None, objs, ctx.bundle.spec.objects, cfg,
                                      PretrainConfig(offset_warmup_steps=0), torch.Generator().manual_seed(0), 32, 4)
        assert float(res["valid"]) == 1.0
        assert float(res["pose"]) == pytest.approx(np.sum(weight * 0.01 / diam) / np.sum(weight), rel=1e-3)
        rest = cfg.sup_weight * float(res["sup_render"]) + cfg.percep_weight * float(res["percep"])
        assert float(res["loss"]) == pytest.approx(pose_weight * float(res["pose"]) + rest, rel=1e-5)
