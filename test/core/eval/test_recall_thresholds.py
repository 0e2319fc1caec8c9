"""Recall figures at their thresholds, end to end through evaluate_model: estimates just inside and just outside
5 cm / 5 deg, the expected figures computed in the test from the offsets alone."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.eval.evaluate import evaluate_model
from selfpose_core.types import PoseEstimate


# per image of the box: (translation along camera x [m], rotation about the object's x axis [deg])
OFFSETS = [(0.0, 0.0), (0.049, 0.0), (0.051, 0.0), (0.0, 4.9), (0.0, 5.1), (0.049, 4.9)]


class OffsetGtEstimator:
    """Test double of PoseEstimator: the true poses of the image it is given, the box moved by ``OFFSETS``."""

    def __init__(self, bop):
        self._samples = list(bop.dataset.samples(load_depth=False, load_masks=False))
        self._names = {o.obj_id: o.name for o in bop.objects}

    def estimate(self, frame):
        k = next(i for i, s in enumerate(self._samples) if np.array_equal(s.frame.rgb, frame.rgb))
        out = []
        for g in self._samples[k].gt:
            T = g.T_cam_obj.copy()
            if g.obj_id == 1:
                a = np.radians(OFFSETS[k][1])
                T[:3, :3] = T[:3, :3] @ np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
                T[0, 3] += OFFSETS[k][0]
            out.append(PoseEstimate(self._names[g.obj_id], T, 1.0, object_id=g.obj_id))
        return out


def test_recalls_at_their_thresholds_end_to_end(tiny_bop):
    """evaluate_model over the dataset with estimates just inside and just outside 5 cm and 5 deg: the exact
    recall figures (5deg5cm, ADD at 10 % of the diameter, errors) computed here from the offsets alone."""
    res, _ = evaluate_model(OffsetGtEstimator(tiny_bop), tiny_bop.dataset, progress=False)
    box = res.per_object["box"]
    inside = [abs(t) < 0.05 and abs(r) < 5.0 for t, r in OFFSETS]
    assert box["deg5_cm5"] == pytest.approx(np.mean(inside))  # 4 / 6
    v = tiny_bop.objects[0].vertices
    diameter = np.linalg.norm(v[:, None] - v[None], axis=-1).max()
    add = []
    for t, r in OFFSETS:
        a = np.radians(r)
        R = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        add.append(np.linalg.norm(v @ R.T - v, axis=1).mean() if t == 0 else np.inf)
    assert box["add_recall"] == pytest.approx(np.mean(np.array(add) < 0.1 * diameter))  # 3 / 6
    assert box["mean_te_cm"] == pytest.approx(100 * np.mean([t for t, _ in OFFSETS]))
    assert box["mean_re_deg"] == pytest.approx(np.mean([r for _, r in OFFSETS]), abs=1e-6)
    assert res.per_object["can"]["deg5_cm5"] == 1.0 and res.per_object["can"]["add_recall"] == 1.0
    assert res.mean["deg5_cm5"] == pytest.approx((np.mean(inside) + 1.0) / 2)
