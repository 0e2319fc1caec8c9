"""report.html, the PNG plots and the pose overlays."""
from __future__ import annotations

import cv2
import numpy as np

from selfpose_core.eval.evaluate import evaluate
from selfpose_core.eval.report import EST_COLOR, GT_COLOR, draw_overlay, write_report
from selfpose_core.types import PoseEstimate

from .conftest import make_estimates


def test_write_report(tiny_bop, tmp_path):
    est = make_estimates(tiny_bop)
    res = evaluate(est, tiny_bop.dataset)
    samples = [tiny_bop.dataset.sample(1, 0), tiny_bop.dataset.sample(2, 1)]
    path = write_report(res, tmp_path / "rep", [(s, est[(s.scene_id, s.im_id)]) for s in samples])
    text = path.read_text()
    for name in ("recall_curves.png", "per_object.png", "overlay_000001_000000.png", "overlay_000002_000001.png"):
        assert f"src='{name}'" in text
        img = cv2.imread(str(tmp_path / "rep" / name))
        assert img is not None and img.shape[0] > 200 and img.std() > 10
    assert "<td>box</td>" in text.replace("<span>", "").replace("</span>", "") and "<b>mean</b>" in text
    assert "83.3" in text  # box detection rate


def test_overlay_draws_gt_and_estimate_where_the_object_is(tiny_bop):
    sample = tiny_bop.dataset.sample(1, 0)
    sample.frame.rgb[:] = 128
    box = tiny_bop.objects[0]
    T = sample.gt[0].T_cam_obj
    far = T.copy()
    far[0, 3] += 0.15  # 18 px to the right at 0.5 m (x8 enlarged in the overlay)
    img = draw_overlay(sample, [PoseEstimate("box", far, 1.0, object_id=1)], [box])
    assert img.shape == (384, 512, 3)  # enlarged x8 to >= 480 px wide

    def columns(color):
        hit = np.all(np.abs(img.astype(int) - color) < 30, axis=-1)
        return np.flatnonzero(hit.any(axis=0))

    gt_cols, est_cols = columns(GT_COLOR), columns(EST_COLOR)
    assert len(gt_cols) > 20 and len(est_cols) > 20
    # The estimate is drawn about 0.15 m * 60 px/m / 0.5 m * 8 = 144 px to the right of the ground truth.
    assert 100 < np.median(est_cols) - np.median(gt_cols) < 190
    # Objects behind the camera are skipped rather than drawn garbage.
    behind = T.copy()
    behind[2, 3] = -1.0
    img2 = draw_overlay(sample, [PoseEstimate("box", behind, 1.0, object_id=1)], [box])
    assert not np.all(np.abs(img2.astype(int) - EST_COLOR) < 30, axis=-1).any()
