"""Matching estimates to ground truth, recalls per object and mean, symmetric handling, evaluate_model."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from selfpose_core.data.bop import GtInstance
from selfpose_core.errors import DatasetError
from selfpose_core.eval import metrics
from selfpose_core.eval.evaluate import ImageGt, evaluate, evaluate_model, evaluate_sequences, score_images
from selfpose_core.types import PoseEstimate

from .conftest import IMAGES, K, NoisyGtEstimator, make_estimates, shifted


def test_per_object_recalls_and_symmetric_handling(tiny_bop):
    res = evaluate(make_estimates(tiny_bop), tiny_bop.dataset)
    box, can = res.per_object["box"], res.per_object["can"]
    # Box: 6 targets, exact in 3 images, 3 cm off in 2 (> 10% of its 9.9 cm diameter), missing in 1.
    assert box["n_targets"] == 6
    assert box["detection_rate"] == pytest.approx(5 / 6)
    assert box["add_recall"] == pytest.approx(0.5) and box["ad_di_recall"] == pytest.approx(0.5)
    assert box["deg5_cm5"] == pytest.approx(5 / 6)
    assert box["mean_te_cm"] == pytest.approx(3.0 * 2 / 5)
    assert box["mean_re_deg"] == pytest.approx(0.0, abs=1e-6)
    assert box["iou3d_50"] == pytest.approx(0.5)  # the 3 cm shift along the 8 cm box leaves IoU ~ 1/3
    # Can: the (2, 2) instance is 5% visible -> not a target; the 90 deg turn about its axis is invisible:
    # ADD fails, ADD-S and AD{D|I} succeed, the symmetry-aware rotation error vanishes.
    assert can["n_targets"] == 5 and can["detection_rate"] == 1.0
    assert can["add_recall"] == 0.0
    assert can["adds_recall"] == 1.0 and can["ad_di_recall"] == 1.0
    assert can["mean_re_deg"] == pytest.approx(0.0, abs=1e-5) and can["deg5_cm5"] == 1.0
    assert can["ar_mssd"] == 1.0 and can["ar_mspd"] == 1.0 and can["iou3d_50"] == 1.0
    # The mean averages objects.
    assert res.mean["add_recall"] == pytest.approx(0.25)
    assert res.mean["ad_di_recall"] == pytest.approx(0.75)
    assert res.mean["n_targets"] == 11 and res.n_images == 6
    # Target errors agree with the metric functions (top-1 estimate = the turned one, not the duplicate).
    t = res.targets
    i = np.flatnonzero((t["obj_id"] == 2) & (t["scene_id"] == 1) & (t["im_id"] == 0))[0]
    T_g, T_e = tiny_bop.gt((1, 0), 2), shifted(tiny_bop.gt((1, 0), 2), rot_z=np.pi / 2)
    can_model = tiny_bop.objects[1]
    assert t["add"][i] == pytest.approx(float(metrics.add(T_e[:3, :3], T_e[:3, 3], T_g[:3, :3], T_g[:3, 3],
                                                          can_model.vertices)))
    assert t["score"][i] == pytest.approx(0.7)


def test_recall_curves_and_outputs(tiny_bop):
    res = evaluate(make_estimates(tiny_bop), tiny_bop.dataset)
    thr = np.linspace(0, 0.5, 11)
    curve = res.recall("add", thr, obj_id=1)
    assert np.all(np.diff(curve) >= 0) and curve[0] == 0.0 and curve[-1] == pytest.approx(5 / 6)
    assert res.recall("ad_di", 0.1, obj_id=2)[0] == pytest.approx(res.per_object["can"]["ad_di_recall"])
    assert res.recall("te", [0.01, 0.04], obj_id=1, relative=False) == pytest.approx([0.5, 5 / 6])
    assert res.recall("iou_3d", [0.25, 0.5, 0.9], obj_id=1) == pytest.approx([5 / 6, 0.5, 0.5])
    # per scene (a trajectory of the simulator): the box is exact in scene 1 and fails in scene 2, the can never
    assert res.recall_by_scene() == pytest.approx({1: 1.0, 2: 0.5})
    assert res.recall_by_scene("add") == pytest.approx({1: 0.5, 2: 0.0})
    table = res.table()
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["object", "targets", "det%", "ADD%"]
    assert lines[2].split()[:6] == ["box", "6", "83.3", "50.0", "50.0", "50.0"]
    assert lines[4].startswith("mean") and len({len(ln) for ln in lines[:5]}) == 1
    d = res.to_dict()
    assert d["mean"]["add_recall"] == pytest.approx(0.25) and d["per_object"]["can"]["n_targets"] == 5
    yaml.safe_dump(d)  # plain types only
    with pytest.raises(KeyError, match="unknown error"):
        res.recall("vsd", 0.1)


def test_missing_estimates_fail_and_restrictions(tiny_bop):
    res = evaluate({}, tiny_bop.dataset, scene_ids=[1])
    assert res.n_images == 3
    assert res.per_object["box"]["detection_rate"] == 0.0 and res.per_object["box"]["add_recall"] == 0.0
    assert np.isnan(res.per_object["box"]["mean_re_deg"])
    assert "-" in res.table().splitlines()[2]
    only_can = evaluate(make_estimates(tiny_bop), tiny_bop.dataset, objects=[tiny_bop.objects[1]])
    assert list(only_can.per_object) == ["can"]
    with pytest.raises(DatasetError, match=r"scenes \[7\] are not in"):
        evaluate({}, tiny_bop.dataset, scene_ids=[7])


def test_unknown_objects_and_images(tiny_bop, caplog):
    est = {(1, 0): [PoseEstimate("teapot", np.eye(4), 1.0, object_id=9)]}
    with pytest.raises(DatasetError, match=r"object 'teapot' \(obj_id 9\), which is not an object of the dataset"):
        evaluate(est, tiny_bop.dataset)
    # Matched by name when object_id is unset; estimates for images outside the dataset are ignored.
    est = {(1, 0): [PoseEstimate("box", tiny_bop.gt((1, 0), 1), 1.0)], (9, 9): []}
    res = evaluate(est, tiny_bop.dataset, scene_ids=[1])
    assert res.per_object["box"]["add_recall"] == pytest.approx(1 / 3)
    assert "not in the evaluated ground truth" in caplog.text


def test_multi_instance_greedy_matching(tiny_bop):
    box = tiny_bop.objects[0]
    T1, T2 = np.eye(4), np.eye(4)
    T1[:3, 3], T2[:3, 3] = [-0.1, 0, 0.6], [0.1, 0, 0.6]
    gts = [GtInstance(1, T1, np.array([-1] * 4), 1.0, gt_idx=0), GtInstance(1, T2, np.array([-1] * 4), 1.0, gt_idx=1)]
    # Best-scored estimate sits on instance 1, the second on instance 0; a third is beyond the 2 targets.
    ests = [PoseEstimate("box", shifted(T1, dx=0.002), 0.5), PoseEstimate("box", T2, 0.9),
            PoseEstimate("box", T1, 0.1)]
    res = score_images([ImageGt((1, 0), K, gts)], {(1, 0): ests}, [box])
    t = res.targets
    assert list(t["gt_idx"]) == [0, 1]
    np.testing.assert_allclose(t["score"], [0.5, 0.9])
    np.testing.assert_allclose(t["te"], [0.002, 0.0], atol=1e-12)
    assert res.per_object["box"]["add_recall"] == 1.0


def test_evaluate_model_runs_the_estimator(tiny_bop, rng):
    res, est = evaluate_model(NoisyGtEstimator(tiny_bop.dataset, rng), tiny_bop.dataset, progress=False)
    assert set(est) == set(IMAGES)
    assert res.mean["ad_di_recall"] == 1.0 and res.mean["detection_rate"] == 1.0
    assert 0 < res.mean["mean_te_cm"] < 0.5
    assert set(res.image_times_s) == set(IMAGES) and min(res.image_times_s.values()) > 0
    assert res.time_per_image_s == pytest.approx(np.mean(list(res.image_times_s.values())))
    # max_images spreads the evaluated images over the dataset.
    res2, est2 = evaluate_model(NoisyGtEstimator(tiny_bop.dataset, rng), tiny_bop.dataset, scene_ids=[1],
                                max_images=2, progress=False)
    assert res2.n_images == 2 and set(est2) == {(1, 0), (1, 2)}


def _bop_symmetry_transformations(axis, offset, max_sym_disc_step=0.01):
    """bop_toolkit misc.get_symmetry_transformations for one continuous axis (identity as the only discrete one)."""
    from scipy.spatial.transform import Rotation

    n = int(np.ceil(np.pi / max_sym_disc_step))
    out = []
    for i in range(n):
        R = Rotation.from_rotvec(i * 2.0 * np.pi / n * np.asarray(axis) / np.linalg.norm(axis)).as_matrix()
        out.append({"R": R, "t": -R.dot(offset) + offset})
    return out


def test_mssd_uses_bop_symmetry_discretisation(tiny_bop):
    # A 10 deg turn about the can's axis (not a multiple of BOP's 360/315 deg step) leaves a small MSSD that
    # depends on the discretisation: it must be bop_toolkit's.
    key = (1, 1)
    T_g = tiny_bop.gt(key, 2)
    T_e = shifted(T_g, rot_z=np.radians(10.0))
    res = evaluate({key: [PoseEstimate("can", T_e, 1.0, object_id=2)]}, tiny_bop.dataset, images=[key])
    t = res.targets
    i = np.flatnonzero(t["obj_id"] == 2)[0]
    pts = tiny_bop.objects[1].vertices
    x_e = pts @ T_e[:3, :3].T + T_e[:3, 3]
    ref = min(np.linalg.norm(x_e - (pts @ (T_g[:3, :3] @ s["R"]).T + T_g[:3, :3] @ s["t"] + T_g[:3, 3]), axis=1).max()
              for s in _bop_symmetry_transformations([0, 0, 1], np.zeros(3)))
    assert t["mssd"][i] == pytest.approx(ref, rel=1e-9) and 0 < ref < 1e-3


def test_evaluate_sequences_resets_the_tracker_at_each_scene_and_plays_frames_in_order(tiny_bop):
    class Recorder:
        def __init__(self):
            self.calls = []

        def reset(self):
            self.calls.append("reset")

        def estimate(self, frame):
            self.calls.append(frame.index)
            return []

    tracker = Recorder()
    result, estimates = evaluate_sequences(tracker, tiny_bop.dataset, progress=False)
    assert tracker.calls == ["reset", 0, 1, 2, "reset", 0, 1, 2]
    assert result.n_images == 6 and set(estimates) == set(IMAGES) and len(result.image_times_s) == 6


class _FlippedBoxEstimator:
    """Estimates the box turned 180 deg about its z axis (a symmetry objects.yaml declares and the dataset's
    models_info.json does not) and names it as objects.yaml does; ``models`` as `PoseEstimator` has them."""

    def __init__(self, tiny_bop, models):
        self._samples = list(tiny_bop.dataset.samples(load_depth=False, load_masks=False))
        self.models = models

    def estimate(self, frame):
        sample = next(s for s in self._samples if np.array_equal(s.frame.rgb, frame.rgb))
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return [PoseEstimate("cereal_box", g.T_cam_obj @ flip, 1.0, object_id=1) for g in sample.gt
                if g.obj_id == 1]


def test_evaluate_model_scores_with_the_declared_symmetries_and_names_and_warns(tiny_bop, caplog):
    from dataclasses import replace as dc_replace

    from selfpose_core.types import Symmetry
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])[None]
    declared = [dc_replace(tiny_bop.objects[0], name="cereal_box", symmetry=Symmetry(discrete=flip)),
                dc_replace(tiny_bop.objects[1], name="soup_can")]
    with caplog.at_level("WARNING"):
        res, _ = evaluate_model(_FlippedBoxEstimator(tiny_bop, declared), tiny_bop.dataset, progress=False)
    assert set(res.per_object) == {"cereal_box", "soup_can"}  # objects.yaml's names, not the dataset's
    box = res.per_object["cereal_box"]
    assert box["ad_di_recall"] == 1.0 and box["mean_re_deg"] == pytest.approx(0.0, abs=1e-6)
    assert box["add_recall"] == 0.0  # the flip is a 180 deg error for ADD, which ignores symmetries
    warned = [r.getMessage() for r in caplog.records if "differ from the dataset" in r.getMessage()]
    assert len(warned) == 1 and "cereal_box (obj_id 1)" in warned[0] and "1 discrete" in warned[0]
    # without a declaration the dataset's symmetries (none for the box) are used: the flip is wrong
    class Plain(_FlippedBoxEstimator):
        models = None

    est = Plain(tiny_bop, None)
    res, _ = evaluate_model(est, tiny_bop.dataset, progress=False)
    assert res.per_object["box"]["ad_di_recall"] == 0.0
