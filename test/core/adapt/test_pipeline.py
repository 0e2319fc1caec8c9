"""The adaptation pipeline on a tiny simulated loop: consensus + pseudo-label fine-tuning end to end, consensus
accuracy under odometry drift, resume, config validation and the ground-truth guard."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

import selfpose_core.adapt.consensus as consensus
from selfpose_core.adapt.config import load_adapt_config
from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.pipeline import STAGES, ground_truth_forbidden, run_pipeline
from selfpose_core.adapt.stage import Stage, StageResult
from selfpose_core.eval.adaptation import consensus_errors
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.errors import ConfigError, DatasetError
from selfpose_core.estimate.estimator import PoseEstimator
from selfpose_core.mesh.objects_config import load_objects_config
from selfpose_core.models.bundle import ModelBundle

TINY = {"multiview_consensus.refine_iterations": 20, "multiview_consensus.refine_batch": 8,
        "multiview_consensus.crop_size": 24, "multiview_consensus.drift_knots": 3,
        "pseudo_label_finetune.trainer": {"steps": 3, "checkpoint_every": 1, "log_every": 1, "warmup_steps": 1,
                                          "progress": False},
        "pseudo_label_finetune.crop_batch": 4, "pseudo_label_finetune.scene_batch": 2}


@pytest.fixture
def patched_estimates(adapt_scene, monkeypatch):
    fake = consensus.FrameEstimates.load(adapt_scene.estimates)
    calls = []

    def estimate_frames(ctx, frames, estimator, min_score, progress=False):
        calls.append(len(frames))
        keep = np.isin(fake.frame, frames)
        return consensus.FrameEstimates(fake.frame[keep], fake.obj_index[keep], fake.T_cam_obj[keep],
                                        fake.score[keep], fake.box[keep], [m for m, k in zip(fake.masks, keep) if k])

    monkeypatch.setattr(consensus, "estimate_frames", estimate_frames)
    return calls


def _run(scene, out, stages, resume=False, **extra):
    cfg = load_adapt_config(None, STAGES, {**TINY, "stages": stages, **extra})
    objects = load_objects_config(scene.objects_yaml)
    with Recording(scene.bag) as rec:
        return run_pipeline(cfg, recording=rec, objects=objects, objects_config=scene.objects_yaml,
                            model=scene.model, out=out, resume=resume, progress=False)


def test_consensus_then_finetune_end_to_end(adapt_scene, patched_estimates, tmp_path):
    out = tmp_path / "adapted"
    res = _run(adapt_scene, out, ["multiview_consensus"])
    cons = res.results["multiview_consensus"]
    assert patched_estimates == [12]
    pseudo = consensus.PseudoLabels.load(out / "work" / "multiview_consensus" / "pseudo_labels.npz")
    objects = load_objects_config(adapt_scene.objects_yaml)
    err = consensus_errors(pseudo, objects, BopDataset(adapt_scene.bop, "train_loop"))
    for name, e in err.items():  # noisy estimates (4 mm, 2 deg, 1 in 7 gross outliers) + drift -> consensus
        assert e["world_t_cm"] < 1.0 and e["world_r_deg"] < 2.0, (name, e)
        assert e["frame_t_cm_median"] < 1.5, (name, e)
    assert all(v["inliers"] >= 3 for v in cons.details["objects"].values())
    assert pseudo.instances and all(p.mask is not None and p.mask.shape == (120, 160) for p in pseudo.instances)
    assert (out / "report.html").is_file() and (out / "work" / "multiview_consensus" / "drift.png").is_file()

    # resume with one more stage: consensus is not run again, fine-tuning trains and changes the weights
    with pytest.raises(ConfigError, match="--resume"):
        _run(adapt_scene, out, ["multiview_consensus", "pseudo_label_finetune"])
    before = ModelBundle.load(adapt_scene.model).pose_net.state_dict()
    res2 = _run(adapt_scene, out, ["multiview_consensus", "pseudo_label_finetune"], resume=True)
    assert patched_estimates == [12]
    ft = res2.results["pseudo_label_finetune"]
    assert np.isfinite(ft.losses["loss"]) and ft.details["instances"] > 0
    after = ModelBundle.load(out)
    assert PoseEstimator(out).object_names == [m.name for m in objects]  # objects.yaml found from the bundle
    assert any(not np.allclose(before[k].numpy(), v.numpy()) for k, v in after.pose_net.state_dict().items())
    state = yaml.safe_load((out / "work" / "state.yaml").read_text())
    assert state["done"] == ["multiview_consensus", "pseudo_label_finetune"]
    assert "pseudo_label_finetune" in [s["stage"] for s in after.spec.provenance["stages"]]
    assert "self-supervised on" in after.spec.provenance["supervision"]  # not the start model's label
    html = (out / "report.html").read_text()
    assert "pseudo_label_finetune" in html and "report_files/" in html


def test_finetune_needs_pseudo_labels(adapt_scene, tmp_path):
    with pytest.raises(ConfigError, match="multiview_consensus"):
        _run(adapt_scene, tmp_path / "x", ["pseudo_label_finetune"])


def test_config_errors_name_file_and_key(tmp_path):
    p = tmp_path / "adapt.yaml"
    p.write_text("stages: [multiview_consensus]\nmultiview_consensus: {refine_iteratons: 3}\n")
    with pytest.raises(ConfigError, match=r"adapt.yaml: multiview_consensus: unknown key 'refine_iteratons'"):
        load_adapt_config(p, STAGES)
    p.write_text("stages: [multiview_consensus, teleport]\n")
    with pytest.raises(ConfigError, match="unknown stage 'teleport'"):
        load_adapt_config(p, STAGES)
    p.write_text("stagez: []\n")
    with pytest.raises(ConfigError, match="unknown key 'stagez'"):
        load_adapt_config(p, STAGES)
    p.write_text("trainer: {lr: 0.5}\npseudo_label_finetune: {trainer: {steps: 7}}\n")
    cfg = load_adapt_config(p, STAGES)
    ft = cfg.sections["pseudo_label_finetune"].trainer
    assert (ft.lr, ft.steps) == (0.5, 7) and cfg.trainer.lr == 0.5
    again = load_adapt_config(None, STAGES, {k: v for k, v in cfg.to_yaml().items()})
    assert again.sections["pseudo_label_finetune"].trainer == ft


class _Peek:
    """A stage that reads ground truth: the guard must stop it."""

    name = "peek"
    Config = type(STAGES["multiview_consensus"].Config())

    def __init__(self, root=None):
        self.root = root

    def run(self, ctx: AdaptContext, cfg) -> StageResult:
        ds = BopDataset(ctx.work_dir.parents[1] / "sim" / "bop", "train_loop")
        next(iter(ds.samples(1)))
        return StageResult()


def test_ground_truth_is_unreadable_inside_stages(adapt_scene, monkeypatch, tmp_path):
    assert isinstance(STAGES["multiview_consensus"](), Stage)
    ds = BopDataset(adapt_scene.bop, "train_loop")
    with ground_truth_forbidden("x"):
        with pytest.raises(DatasetError, match="ground truth"):
            ds.sample(1, 0)
        with pytest.raises(DatasetError, match="ground truth"):
            next(iter(ds.samples(1)))
    assert ds.sample(1, 0).gt  # restored afterwards
    monkeypatch.setitem(STAGES, "peek", _Peek)
    out = adapt_scene.root.parent / "peek_out"
    with pytest.raises(DatasetError, match="stage 'peek' tried to read ground truth"):
        _run(adapt_scene, out, ["peek"])


def test_no_consensus_leaves_the_model_unchanged(adapt_scene, monkeypatch, tmp_path):
    empty = consensus.FrameEstimates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4, 4)), np.zeros(0),
                                     np.zeros((0, 4)), [])
    monkeypatch.setattr(consensus, "estimate_frames", lambda *a, **k: empty)
    res = _run(adapt_scene, tmp_path / "o", ["multiview_consensus", "pseudo_label_finetune"])
    assert res.results["multiview_consensus"].details["pseudo_instances"] == 0
    assert "no pseudo label" in res.results["pseudo_label_finetune"].details["skipped"]
    before, after = ModelBundle.load(adapt_scene.model), ModelBundle.load(tmp_path / "o")
    assert all(np.array_equal(v.numpy(), after.pose_net.state_dict()[k].numpy())
               for k, v in before.pose_net.state_dict().items())
