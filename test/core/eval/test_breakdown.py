"""Error breakdown: each planted failure is named by its cause, per object, with the rotation histogram."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from selfpose_core.eval.breakdown import (CAUSES, breakdown, breakdown_table, confidence_precision, failure_causes,
                                          rotation_histogram)
from selfpose_core.eval.evaluate import evaluate
from selfpose_core.types import PoseEstimate


def test_planted_failures_get_their_causes(tiny_bop):
    box, can = tiny_bop.objects
    est = {}
    planted = {(1, 0): "correct", (1, 1): "missed", (1, 2): "wrong_identity", (2, 0): "mislocalised",
                (2, 1): "depth", (2, 2): "rotation"}
    for key, cause in planted.items():
        T = tiny_bop.gt(key, 1).copy()
        if cause == "wrong_identity":
            T[:3, 3] = tiny_bop.gt(key, 2)[:3, 3]  # the box put where the can stands
        elif cause == "mislocalised":
            T[0, 3] -= 0.3
        elif cause == "depth":
            T[2, 3] += 0.03
        elif cause == "rotation":
            T[:3, :3] = T[:3, :3] @ Rotation.from_euler("z", 100, degrees=True).as_matrix()
        T_can = tiny_bop.gt(key, 2).copy()
        if key == (1, 0):
            T_can[0, 3] += 0.02  # 1.7 cm sideways: 17 % of the can's diameter
        est[key] = [PoseEstimate("can", T_can, 0.9, 2)]
        if cause != "missed":
            est[key].append(PoseEstimate("box", T, 0.9, 1))
    result = evaluate(est, tiny_bop.dataset)
    causes = failure_causes(result)
    for j, (s, i, o) in enumerate(zip(result.targets["scene_id"], result.targets["im_id"],
                                      result.targets["obj_id"])):
        expected = planted[(int(s), int(i))] if o == 1 else ("in_plane" if (s, i) == (1, 0) else "correct")
        assert causes[j] == expected, (s, i, o, causes[j])
    shares = breakdown(result)
    assert set(shares) == {"box", "can", "all"}
    assert all(abs(sum(v.values()) - 1) < 1e-12 for v in shares.values())
    n_box, n_can = (result.targets["obj_id"] == 1).sum(), (result.targets["obj_id"] == 2).sum()
    assert abs(shares["box"]["rotation"] - 1 / n_box) < 1e-12 and abs(shares["can"]["in_plane"] - 1 / n_can) < 1e-12
    assert rotation_histogram(result).tolist() == [0, 0, 0, 0, 1, 0]  # the 100-degree turn
    table = breakdown_table(result)
    assert all(c in table for c in CAUSES) and "90-135 deg: 1" in table


def test_confidence_precision_counts_wrong_and_unmatched_estimates_above_the_threshold(tiny_bop):
    est = {}
    for n, key in enumerate([(1, 0), (1, 1), (1, 2), (2, 0)]):
        T_box = tiny_bop.gt(key, 1).copy()
        if n == 1:
            T_box[0, 3] += 0.3  # wrong, confident
        est[key] = [PoseEstimate("box", T_box, 0.9 if n < 3 else 0.2, 1)]
        if n == 2:  # a second, surplus estimate of the box
            est[key].append(PoseEstimate("box", tiny_bop.gt(key, 1), 0.5, 1))
    result = evaluate(est, tiny_bop.dataset, objects=[tiny_bop.objects[0]])
    assert result.unmatched_scores.tolist() == [0.5]
    precision, n = confidence_precision(result, 0.3)  # above: 2 correct, 1 wrong, 1 surplus
    assert n == 4 and precision == 0.5
    assert confidence_precision(result, 0.1) == (3 / 5, 5)
    assert np.isnan(confidence_precision(result, 0.95)[0])
