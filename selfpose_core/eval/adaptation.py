"""How well an adaptation run did, against ground truth it never saw: the consensus error per object and of the
camera poses against a BOP copy of the recording, and the held-out evaluator `selfpose adapt --eval-gt` and
`selfpose bench adapt` run after each stage. Only these read the ground truth, between stages."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from selfpose_core.adapt.config import AdaptConfig
from selfpose_core.adapt.pipeline import Evaluator
from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.data.bop import BopDataset
from selfpose_core.errors import DatasetError
from selfpose_core.estimate.estimator import PoseEstimator
from selfpose_core.eval.evaluate import evaluate_model
from selfpose_core.geometry.se3 import rotation_angle
from selfpose_core.geometry.symmetry import closest_symmetric_pose
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.types import ObjectModel

log = logging.getLogger(__name__)


def consensus_errors(pseudo: PseudoLabels, objects: list[ObjectModel], dataset: BopDataset,
                     scene_id: int = 1) -> dict[str, dict[str, float]]:
    """Per object: error of the consensus world pose (cm, deg; symmetry-aware) and the median error of the
    per-frame pseudo poses, against a BOP scene whose im_id is the recording frame index and whose scene_camera
    holds the true camera poses."""
    per_frame: dict[str, list[tuple[float, float]]] = {}
    world_gt: dict[str, list[np.ndarray]] = {}
    by_id = {m.obj_id: k for k, m in enumerate(objects)}
    for sample in dataset.samples(scene_id, load_depth=False, load_masks=False):
        T_wc = sample.frame.T_world_cam
        labels = {p.obj_index: p for p in pseudo.for_frame(sample.im_id)} if sample.im_id < pseudo.num_frames else {}
        for g in sample.gt:
            k = by_id.get(g.obj_id)
            if k is None:
                continue
            m = objects[k]
            if T_wc is not None:
                world_gt.setdefault(m.name, []).append(T_wc @ g.T_cam_obj)
            p = labels.get(k)
            if p is not None:
                gt = closest_symmetric_pose(p.T_cam_obj, g.T_cam_obj, m.symmetry)
                per_frame.setdefault(m.name, []).append(
                    (100 * float(np.linalg.norm(p.T_cam_obj[:3, 3] - gt[:3, 3])),
                     float(np.degrees(rotation_angle(p.T_cam_obj[:3, :3], gt[:3, :3])))))
    out: dict[str, dict[str, float]] = {}
    for k, m in enumerate(objects):
        row: dict[str, float] = {}
        W = pseudo.T_world_obj[k]
        if m.name in world_gt and np.isfinite(W).all():
            gt_w = world_gt[m.name][0]
            gt = closest_symmetric_pose(W, gt_w, m.symmetry)
            row["world_t_cm"] = round(100 * float(np.linalg.norm(W[:3, 3] - gt[:3, 3])), 3)
            row["world_r_deg"] = round(float(np.degrees(rotation_angle(W[:3, :3], gt[:3, :3]))), 3)
        if m.name in per_frame:
            e = np.array(per_frame[m.name])
            row["frame_t_cm_median"] = round(float(np.median(e[:, 0])), 3)
            row["frame_r_deg_median"] = round(float(np.median(e[:, 1])), 3)
            row["frames"] = int(len(e))
        out[m.name] = row
    return out


def camera_errors(T_world_cam: np.ndarray, dataset: BopDataset, scene_id: int = 1) -> dict[str, float]:
    """Error of camera poses ``T_world_cam`` (N, 4, 4) (recorded, or drift-corrected by the consensus) against the
    true poses in ``dataset``'s scene_camera (im_id = recording frame index): median and maximum translation (cm),
    maximum rotation (deg)."""
    t, r = [], []
    for sample in dataset.samples(scene_id, load_depth=False, load_masks=False):
        T = sample.frame.T_world_cam
        if T is None or sample.im_id >= len(T_world_cam):
            continue
        t.append(100 * float(np.linalg.norm(T_world_cam[sample.im_id][:3, 3] - T[:3, 3])))
        r.append(float(np.degrees(rotation_angle(T_world_cam[sample.im_id][:3, :3], T[:3, :3]))))
    if not t:
        return {}
    return {"t_cm_median": round(float(np.median(t)), 3), "t_cm_max": round(max(t), 3), "r_deg_max": round(max(r), 3)}


def make_evaluator(eval_gt: Path, objects_config: Path, config: AdaptConfig, progress: bool = False,
                   train_split: str = "train_loop") -> Evaluator:
    """The held-out evaluation hook: accuracy on split ``config.eval.split`` of ``eval_gt`` after each stage, and
    for multiview_consensus the consensus error against split ``train_split`` (scene 1)."""
    test = BopDataset(eval_gt, config.eval.split)
    train = BopDataset(eval_gt, train_split) if (Path(eval_gt) / train_split).is_dir() else None
    if train is None:
        splits = sorted(p.name for p in Path(eval_gt).iterdir() if p.is_dir() and p.name != "models")
        log.warning("adapt: %s has no split %s (splits: %s): no consensus or camera errors; name the recording's "
                    "split with --eval-recording-split", eval_gt, train_split, ", ".join(splits) or "none")

    def evaluate(bundle: ModelBundle, stage: str, pseudo: PseudoLabels | None) -> dict[str, Any]:
        est = PoseEstimator(bundle.path or eval_gt, config.device, objects_config=objects_config, bundle=bundle)
        result, _ = evaluate_model(est, test, max_images=config.eval.max_images or None, progress=progress)
        d = result.to_dict()
        metrics: dict[str, Any] = {"mean": d["mean"], "per_object": d["per_object"], "n_images": d["n_images"],
                                   "ad_di_recall_by_scene": result.recall_by_scene()}
        log.info("adapt: held-out accuracy after %s:\n%s", stage, result.table())
        if pseudo is not None and train is not None:
            try:
                metrics["consensus"] = consensus_errors(pseudo, est.models, train)
                metrics["cameras"] = camera_errors(pseudo.T_world_cam, train)
            except DatasetError as exc:
                log.warning("adapt: no consensus error (%s)", exc)
        return metrics

    return evaluate
