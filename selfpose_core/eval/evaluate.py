"""Score pose estimates against the ground truth of a BOP dataset: per-object and mean recalls and errors.

Protocol (BOP's single-instance protocol, extended greedily to several instances of an object in one image):
    * targets are the GT instances of the evaluated objects with ``visib_fract >= min_visib_fract`` (an unknown
      visible fraction, -1, counts as visible);
    * in every image, the estimates of an object are sorted by score and the top ``n`` are kept, ``n`` being the
      object's number of targets there; each is matched, best score first, to the unmatched target with the
      smallest AD{D|I} error (one target: simply the top-1 estimate);
    * a target without a matched estimate is a failure for every recall (and counts as not detected);
    * mean rotation / translation errors are over matched targets only; for symmetric objects they are taken
      against the symmetric equivalent of the GT pose with the smallest rotation error (exact for a continuous
      axis, ``geometry.symmetry.closest_symmetric_pose``), and so is the 5deg5cm criterion;
    * ADD, ADD-S (= ADI) and AD{D|I} (ADI for objects with symmetries, ADD otherwise) are correct below 10% of
      the object diameter; AR_MSSD and AR_MSPD are BOP19's average recalls (MSSD below 0.05..0.5 diameters,
      MSPD below 5..50 px times image width / 640), symmetries discretised like bop_toolkit
      (``max_sym_disc_step`` = 0.01); IoU50 is the fraction of targets whose 3D IoU (``metrics.iou_3d`` of the
      object's bounding box in the estimated and true pose, best over symmetries) is at least 0.5;
    * "mean" rows average the per-object values (objects without targets are left out).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from selfpose_core.data.bop import BopDataset, GtInstance
from selfpose_core.errors import DatasetError
from selfpose_core.estimate.stream import Estimator
from selfpose_core.eval import metrics
from selfpose_core.geometry.symmetry import closest_symmetric_pose, symmetry_transforms
from selfpose_core.types import CameraIntrinsics, ObjectModel, PoseEstimate

log = logging.getLogger(__name__)

ImageKey = tuple[int, int]  # (scene_id, im_id)
ERROR_NAMES = ("add", "adi", "ad_di", "re", "te", "mssd", "mspd", "proj", "iou_3d")
# Where an estimate is, relative to its target (for the error breakdown, eval/breakdown.py): depth error
# (estimate z - true z, metres), in-plane error (x-y distance in the camera frame, metres) and 1.0 where the
# estimate lies on another object (within half that object's diameter, nearer to it than to the target) else 0.0.
PLACEMENT_NAMES = ("dz", "dxy", "other_object")
# BOP19 thresholds: MSSD in diameters, MSPD in pixels at 640 px image width.
MSSD_THRESHOLDS = np.arange(0.05, 0.51, 0.05)
MSPD_THRESHOLDS = np.arange(5.0, 51.0, 5.0)
BOP_MAX_SYM_DISC_STEP = 0.01
# Summary columns: key in to_dict(), header in table(), unit scale for the table, format.
COLUMNS = (
    ("n_targets", "targets", 1.0, "{:.0f}"),
    ("detection_rate", "det%", 100.0, "{:.1f}"),
    ("add_recall", "ADD%", 100.0, "{:.1f}"),
    ("adds_recall", "ADD-S%", 100.0, "{:.1f}"),
    ("ad_di_recall", "AD{D|I}%", 100.0, "{:.1f}"),
    ("deg5_cm5", "5deg5cm%", 100.0, "{:.1f}"),
    ("ar_mssd", "AR_MSSD%", 100.0, "{:.1f}"),
    ("ar_mspd", "AR_MSPD%", 100.0, "{:.1f}"),
    ("iou3d_50", "IoU50%", 100.0, "{:.1f}"),
    ("mean_re_deg", "re[deg]", 1.0, "{:.2f}"),
    ("mean_te_cm", "te[cm]", 1.0, "{:.2f}"),
)


@dataclass(slots=True)
class ImageGt:
    """The ground truth of one image needed for scoring."""

    key: ImageKey
    K: CameraIntrinsics
    gt: list[GtInstance]


@dataclass(slots=True)
class EvalResult:
    """Errors of every target and the per-object / mean summaries.

    ``targets`` holds one entry per target (struct of arrays, length T): ``scene_id``, ``im_id``, ``obj_id``,
    ``gt_idx``, ``found`` (bool), ``score``, ``width`` (image width, px), the errors of :data:`ERROR_NAMES`
    (metres, degrees, pixels) and the placements of :data:`PLACEMENT_NAMES` (NaN where not found). ``per_object`` maps object name -> {column key: value}.
    """

    objects: list[ObjectModel]
    targets: dict[str, np.ndarray]
    per_object: dict[str, dict[str, float]]
    mean: dict[str, float]
    n_images: int
    time_per_image_s: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    image_times_s: dict[ImageKey, float] = field(default_factory=dict)  # estimator wall time per image
    # scores of the estimates matched to no target: objects not in the image, surplus estimates of one object
    # (estimates of objects in the image but below the visibility limit are neither targets nor counted here)
    unmatched_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def recall(self, error: str, thresholds: np.ndarray | Sequence[float] | float, obj_id: int | None = None,
               relative: bool = True) -> np.ndarray:
        """Fraction of targets with ``error`` below each threshold (misses fail); thresholds in diameters when
        ``relative``, else in the error's unit; for ``"iou_3d"`` the fraction with IoU at least the threshold.
        ``obj_id=None``: over all targets of all objects. Returns (M,)."""
        if error not in ERROR_NAMES:
            raise KeyError(f"unknown error {error!r}; one of {ERROR_NAMES}")
        sel = np.ones(len(self.targets["obj_id"]), bool) if obj_id is None else self.targets["obj_id"] == obj_id
        thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        if not sel.any():
            return np.full(len(thr), np.nan)
        e = self.targets[error][sel]
        if error == "iou_3d":
            hit = np.nan_to_num(e, nan=-np.inf)[:, None] >= thr[None, :]
        else:
            if relative:
                e = e / np.array([self.diameter(int(o)) for o in self.targets["obj_id"][sel]])
            hit = np.nan_to_num(e, nan=np.inf)[:, None] < thr[None, :]
        ok = self.targets["found"][sel][:, None] & hit
        return ok.mean(axis=0)

    def recall_by_scene(self, error: str = "ad_di", threshold: float = 0.1) -> dict[int, float]:
        """{scene_id: recall at ``threshold`` diameters, mean over the objects with targets in that scene} (for
        the simulator's held-out split a scene is one trajectory)."""
        out = {}
        for scene in np.unique(self.targets["scene_id"]).tolist():
            sel = self.targets["scene_id"] == scene
            per_obj = []
            for obj_id in np.unique(self.targets["obj_id"][sel]).tolist():
                rows = sel & (self.targets["obj_id"] == obj_id)
                e = np.nan_to_num(self.targets[error][rows] / self.diameter(obj_id), nan=np.inf)
                per_obj.append(float((self.targets["found"][rows] & (e < threshold)).mean()))
            out[int(scene)] = float(np.mean(per_obj))
        return out

    def diameter(self, obj_id: int) -> float:
        """Diameter (metres) of the evaluated object ``obj_id``."""
        return next(o.diameter for o in self.objects if o.obj_id == obj_id)

    def table(self) -> str:
        """An aligned text table: one row per object with targets, then the mean."""
        rows = [(name, vals) for name, vals in self.per_object.items()] + [("mean", self.mean)]
        width = max(len("object"), *(len(name) for name, _ in rows))
        head = "object".ljust(width) + "".join(f"{h:>10}" for _, h, _, _ in COLUMNS)
        lines = [head, "-" * len(head)]
        for name, vals in rows:
            cells = []
            for key, _, scale, fmt in COLUMNS:
                v = vals.get(key, float("nan"))
                cells.append(f"{'-' if not math.isfinite(v) else fmt.format(v * scale):>10}")
            lines.append(name.ljust(width) + "".join(cells))
        if self.time_per_image_s is not None:
            lines.append(f"{self.n_images} images, {self.time_per_image_s * 1000.0:.1f} ms per image")
        else:
            lines.append(f"{self.n_images} images")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain floats/ints/strings for bundle.yaml: {"mean": {...}, "per_object": {name: {...}}, ...}."""
        def clean(d: Mapping[str, float]) -> dict[str, float | int | None]:
            return {k: (None if not math.isfinite(v) else int(v) if k == "n_targets" else float(v))
                    for k, v in d.items()}
        out: dict[str, Any] = {"mean": clean(self.mean),
                               "per_object": {k: clean(v) for k, v in self.per_object.items()},
                               "n_images": int(self.n_images), "settings": dict(self.settings)}
        if self.time_per_image_s is not None:
            out["time_per_image_s"] = float(self.time_per_image_s)
        return out


def _resolve(est: PoseEstimate, by_id: Mapping[int, ObjectModel], dataset_objects: Sequence[ObjectModel],
             key: ImageKey) -> int | None:
    """BOP obj_id of an estimate (by name, else by object_id); None if the object is not evaluated."""
    obj_id = next((o.obj_id for o in dataset_objects if o.name == est.object_name), None)
    if obj_id is None:
        obj_id = next((o.obj_id for o in dataset_objects if o.obj_id == est.object_id), None)
    if obj_id is None:
        raise DatasetError(f"estimate in scene {key[0]} image {key[1]} is for object {est.object_name!r} "
                           f"(obj_id {est.object_id}), which is not an object of the dataset "
                           f"({', '.join(f'{o.obj_id}: {o.name}' for o in dataset_objects)})")
    return int(obj_id) if obj_id in by_id else None


def _match(ests: list[PoseEstimate], gts: list[GtInstance], obj: ObjectModel,
           tree: cKDTree) -> list[tuple[GtInstance, PoseEstimate | None]]:
    """Pair the GT targets of one object in one image with its best-scored estimates (see module docstring)."""
    ests = sorted(ests, key=lambda e: -float(e.score))[:len(gts)]
    if len(gts) == 1:
        return [(gts[0], ests[0] if ests else None)]
    pairs: dict[int, PoseEstimate] = {}
    if ests:
        Te = np.stack([e.T_cam_obj for e in ests])[:, None]
        Tg = np.stack([g.T_cam_obj for g in gts])[None, :]
        err = metrics.add_or_adi(Te[..., :3, :3], Te[..., :3, 3], Tg[..., :3, :3], Tg[..., :3, 3], obj.vertices,
                                 obj.symmetry.is_symmetric, tree=tree)
        for i, est in enumerate(ests):
            free = [j for j in range(len(gts)) if j not in pairs]
            pairs[min(free, key=lambda j: err[i, j])] = est
    return [(g, pairs.get(j)) for j, g in enumerate(gts)]


def _placements(pairs: list[tuple[ImageGt, GtInstance, PoseEstimate]], diameters: Mapping[int, float]
                ) -> dict[str, np.ndarray]:
    """:data:`PLACEMENT_NAMES` of the matched (image, GT, estimate) triples of one object, (P,) each."""
    t_e = np.stack([np.asarray(e.T_cam_obj, dtype=np.float64)[:3, 3] for _, _, e in pairs])
    t_g = np.stack([g.T_cam_obj[:3, 3] for _, g, _ in pairs])
    other = np.zeros(len(pairs))
    for j, (im, g, _) in enumerate(pairs):
        own = np.linalg.norm(t_e[j] - t_g[j])
        for h in im.gt:
            if h.obj_id != g.obj_id and h.obj_id in diameters:
                dist = np.linalg.norm(t_e[j] - h.T_cam_obj[:3, 3])
                if dist < 0.5 * diameters[h.obj_id] and dist < own:
                    other[j] = 1.0
    return {"dz": t_e[:, 2] - t_g[:, 2], "dxy": np.linalg.norm(t_e[:, :2] - t_g[:, :2], axis=1),
            "other_object": other}


def _object_errors(obj: ObjectModel, pairs: list[tuple[ImageGt, GtInstance, PoseEstimate]],
                   tree: cKDTree) -> dict[str, np.ndarray]:
    """All errors of :data:`ERROR_NAMES` for the matched (image, GT, estimate) triples of one object, (P,) each."""
    Te = np.stack([np.asarray(e.T_cam_obj, dtype=np.float64) for _, _, e in pairs])
    Tg = np.stack([g.T_cam_obj for _, g, _ in pairs])
    K = np.stack([im.K.K for im, _, _ in pairs])
    R_e, t_e, R_g, t_g = Te[:, :3, :3], Te[:, :3, 3], Tg[:, :3, :3], Tg[:, :3, 3]
    pts = obj.vertices
    syms = symmetry_transforms(obj.symmetry, n_continuous=int(np.ceil(np.pi / BOP_MAX_SYM_DISC_STEP)))
    out = {"add": metrics.add(R_e, t_e, R_g, t_g, pts), "adi": metrics.adi(R_e, t_e, R_g, t_g, pts, tree=tree),
           "mssd": metrics.mssd(R_e, t_e, R_g, t_g, pts, syms), "mspd": metrics.mspd(R_e, t_e, R_g, t_g, K, pts, syms),
           "proj": metrics.proj(R_e, t_e, R_g, t_g, K, pts)}
    out["ad_di"] = out["adi"] if obj.symmetry.is_symmetric else out["add"]
    box = np.stack(obj.bbox)
    out["iou_3d"] = metrics.iou_3d(R_e, t_e, box, R_g, t_g, box, syms=syms if obj.symmetry.is_symmetric else None)
    # Rotation / translation against the symmetric equivalent of the GT pose closest in rotation.
    T_gs = closest_symmetric_pose(Te, Tg, obj.symmetry) if obj.symmetry.is_symmetric else Tg
    out["re"] = metrics.re(R_e, T_gs[:, :3, :3])
    out["te"] = metrics.te(t_e, T_gs[:, :3, 3])
    return out


def _summary(t: dict[str, np.ndarray], diameter: float) -> dict[str, float]:
    n = len(t["found"])
    found = t["found"]

    def rate(err: np.ndarray, thr: float | np.ndarray) -> float:
        ok = found[:, None] & (np.nan_to_num(err, nan=np.inf)[:, None] < np.atleast_1d(thr)[None, :])
        return float(ok.mean())

    return {
        "n_targets": float(n),
        "detection_rate": float(found.mean()),
        "add_recall": rate(t["add"], 0.1 * diameter),
        "adds_recall": rate(t["adi"], 0.1 * diameter),
        "ad_di_recall": rate(t["ad_di"], 0.1 * diameter),
        "deg5_cm5": float((found & (np.nan_to_num(t["re"], nan=np.inf) < 5.0)
                           & (np.nan_to_num(t["te"], nan=np.inf) < 0.05)).mean()),
        "ar_mssd": rate(t["mssd"], MSSD_THRESHOLDS * diameter),
        "ar_mspd": float((found[:, None] & (np.nan_to_num(t["mspd"] * 640.0 / t["width"], nan=np.inf)[:, None]
                                            < MSPD_THRESHOLDS[None, :])).mean()),
        "iou3d_50": float((found & (np.nan_to_num(t["iou_3d"], nan=0.0) >= 0.5)).mean()),
        "mean_re_deg": float(np.nanmean(t["re"])) if found.any() else float("nan"),
        "mean_te_cm": float(np.nanmean(t["te"]) * 100.0) if found.any() else float("nan"),
    }


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score_images(images: Iterable[ImageGt], estimates: Mapping[ImageKey, Sequence[PoseEstimate]],
                 objects: Sequence[ObjectModel], *, dataset_objects: Sequence[ObjectModel] | None = None,
                 min_visib_fract: float = 0.1, time_per_image_s: float | None = None) -> EvalResult:
    """Score ``estimates`` {(scene_id, im_id): [PoseEstimate]} on the ground truth of ``images`` for ``objects``.

    ``dataset_objects`` (default ``objects``) are all objects the dataset knows: estimates of those not in
    ``objects`` are ignored, estimates of unknown objects raise :class:`DatasetError`. Estimates for images not in
    ``images`` are ignored with a warning.
    """
    by_id = {int(o.obj_id): o for o in objects}
    dataset_objects = objects if dataset_objects is None else dataset_objects
    trees = {i: cKDTree(o.vertices) for i, o in by_id.items()}
    rows: dict[int, list[tuple[ImageGt, GtInstance, PoseEstimate | None]]] = {i: [] for i in by_id}
    seen: set[ImageKey] = set()
    unmatched: list[float] = []
    for im in images:
        seen.add(im.key)
        per_obj: dict[int, list[PoseEstimate]] = {}
        for est in estimates.get(im.key, ()):
            obj_id = _resolve(est, by_id, dataset_objects, im.key)
            if obj_id is not None:
                per_obj.setdefault(obj_id, []).append(est)
        targets: dict[int, list[GtInstance]] = {}
        for g in im.gt:
            if g.obj_id in by_id and (g.visib_fract < 0 or g.visib_fract >= min_visib_fract):
                targets.setdefault(g.obj_id, []).append(g)
        for obj_id, gts in targets.items():
            for g, e in _match(per_obj.get(obj_id, []), gts, by_id[obj_id], trees[obj_id]):
                rows[obj_id].append((im, g, e))
        for obj_id, ests in per_obj.items():  # estimates of objects not in the image, and surplus ones
            if not any(g.obj_id == obj_id for g in im.gt):
                unmatched += [float(e.score) for e in ests]
            elif obj_id in targets:
                unmatched += sorted((float(e.score) for e in ests), reverse=True)[len(targets[obj_id]):]
    extra = set(estimates) - seen
    if extra:
        log.warning("%d images with estimates are not in the evaluated ground truth (e.g. scene %d image %d); "
                    "ignored", len(extra), *min(extra))

    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("scene_id", "im_id", "obj_id", "gt_idx", "found", "score",
                                                        "width", *ERROR_NAMES, *PLACEMENT_NAMES)}
    diameters = {int(o.obj_id): float(o.diameter) for o in dataset_objects}
    per_object: dict[str, dict[str, float]] = {}
    for obj_id, obj_rows in rows.items():
        if not obj_rows:
            continue
        obj = by_id[obj_id]
        found = np.array([e is not None for _, _, e in obj_rows])
        t: dict[str, np.ndarray] = {
            "scene_id": np.array([im.key[0] for im, _, _ in obj_rows]),
            "im_id": np.array([im.key[1] for im, _, _ in obj_rows]),
            "obj_id": np.full(len(obj_rows), obj_id),
            "gt_idx": np.array([g.gt_idx for _, g, _ in obj_rows]),
            "found": found,
            "score": np.array([np.nan if e is None else float(e.score) for _, _, e in obj_rows]),
            "width": np.array([float(im.K.width) for im, _, _ in obj_rows]),
        }
        for name in ERROR_NAMES + PLACEMENT_NAMES:
            t[name] = np.full(len(obj_rows), np.nan)
        if found.any():
            matched = [r for r, f in zip(obj_rows, found) if f]
            errs = _object_errors(obj, matched, trees[obj_id]) | _placements(matched, diameters)
            for name in ERROR_NAMES + PLACEMENT_NAMES:
                t[name][found] = errs[name]
        per_object[obj.name] = _summary(t, obj.diameter)
        for k, v in t.items():
            cols[k].append(v)
    targets = {k: (np.concatenate(v) if v else np.zeros(0, dtype=bool if k == "found" else np.float64))
               for k, v in cols.items()}
    keys = [c[0] for c in COLUMNS]
    mean = {k: _finite_mean([v[k] for v in per_object.values()]) for k in keys}
    mean["n_targets"] = float(sum(v["n_targets"] for v in per_object.values()))
    settings = {"min_visib_fract": float(min_visib_fract), "recall_threshold_diameters": 0.1,
                "protocol": "top-1 per object and GT instance by score, misses count as failures"}
    return EvalResult(objects=list(objects), targets=targets, per_object=per_object, mean=mean, n_images=len(seen),
                      time_per_image_s=time_per_image_s, settings=settings,
                      unmatched_scores=np.array(unmatched, dtype=np.float64))


def _image_keys(dataset: BopDataset, scene_ids: Sequence[int] | None) -> list[ImageKey]:
    scenes = list(dataset.scene_ids if scene_ids is None else scene_ids)
    missing = sorted(set(scenes) - set(dataset.scene_ids))
    if missing:
        raise DatasetError(f"scenes {missing} are not in {dataset.split_dir} (scenes: {dataset.scene_ids})")
    return [(s, i) for s in scenes for i in dataset.image_ids(s)]


def evaluate(estimates: Mapping[ImageKey, Sequence[PoseEstimate]], dataset: BopDataset,
             objects: Sequence[ObjectModel] | None = None, *, scene_ids: Sequence[int] | None = None,
             images: Iterable[ImageKey] | None = None, min_visib_fract: float = 0.1,
             time_per_image_s: float | None = None) -> EvalResult:
    """Score ``estimates`` {(scene_id, im_id): [PoseEstimate]} against ``dataset``'s ground truth.

    ``objects``: the objects to evaluate (default all of the dataset). The evaluated images are ``images``, or all
    images of ``scene_ids`` (default all scenes); targets in them without an estimate count as failures.
    """
    dataset_objects = dataset.objects
    objects = dataset_objects if objects is None else objects
    keys = list(images) if images is not None else _image_keys(dataset, scene_ids)

    def gts() -> Iterable[ImageGt]:
        for s, i in keys:
            sample = dataset.sample(s, i, load_depth=False, load_masks=False)
            yield ImageGt((s, i), sample.frame.K, sample.gt)

    return score_images(gts(), estimates, objects, dataset_objects=dataset_objects, min_visib_fract=min_visib_fract,
                        time_per_image_s=time_per_image_s)


def _same_symmetry(a: ObjectModel, b: ObjectModel, tol_deg: float = 1.0) -> bool:
    """Whether the symmetries of ``a`` and ``b`` give the same transforms (12 samples per continuous axis; rotations
    within ``tol_deg``, translations within 1 % of the diameter)."""
    if a.symmetry.is_symmetric != b.symmetry.is_symmetric:
        return False
    A, B = symmetry_transforms(a.symmetry, 12), symmetry_transforms(b.symmetry, 12)
    tol_t = 0.01 * max(float(a.diameter), 1e-9)
    cos_tol = np.cos(np.radians(tol_deg))

    def covered(X: np.ndarray, Y: np.ndarray) -> bool:
        cos = (np.einsum("xij,yij->xy", X[:, :3, :3], Y[:, :3, :3]) - 1.0) / 2.0  # cos of the relative angle
        dist = np.linalg.norm(X[:, None, :3, 3] - Y[None, :, :3, 3], axis=-1)
        return bool(((cos >= cos_tol - 1e-9) & (dist <= tol_t)).any(axis=1).all())

    return covered(A, B) and covered(B, A)


def with_declared_objects(dataset_objects: Sequence[ObjectModel],
                          declared: Sequence[ObjectModel] | None) -> list[ObjectModel]:
    """The dataset's objects with the name and symmetries ``declared`` for the same obj_id (the objects.yaml the
    model was trained with): one symmetry source for training and scoring, one name in every table. A symmetry
    that differs from the dataset's (models_info.json) is logged as a warning naming both."""
    by_id = {int(o.obj_id): o for o in declared or ()}
    out = []
    for obj in dataset_objects:
        mine = by_id.get(int(obj.obj_id))
        if mine is None:
            out.append(obj)
            continue
        if not _same_symmetry(mine, obj):
            log.warning("object %s (obj_id %d): the symmetries of objects.yaml (%s) differ from the dataset's "
                        "models_info.json (%s); scoring with objects.yaml's, as training used them",
                        mine.name, obj.obj_id, _describe(mine), _describe(obj))
        out.append(replace(obj, name=mine.name, symmetry=mine.symmetry))
    return out


def _describe(obj: ObjectModel) -> str:
    s = obj.symmetry
    if not s.is_symmetric:
        return "none"
    return f"{len(s.discrete)} discrete, {len(s.continuous)} continuous"


def evaluate_model(estimator: Estimator, dataset: BopDataset, *, scene_ids: Sequence[int] | None = None,
                   objects: Sequence[ObjectModel] | None = None, max_images: int | None = None,
                   min_visib_fract: float = 0.1, progress: bool = True
                   ) -> tuple[EvalResult, dict[ImageKey, list[PoseEstimate]]]:
    """Run ``estimator.estimate(frame)`` on the images of ``dataset`` (all scenes or ``scene_ids``; at most
    ``max_images`` of them, evenly spread) and score the estimates. Used by the adaptation stages to report the
    lower bound vs the adapted model.

    Returns: (EvalResult, {(scene_id, im_id): [PoseEstimate]}); ``result.image_times_s`` holds the wall time of
    each ``estimate`` call and ``result.time_per_image_s`` their mean. Names and symmetries come from the
    estimator's ``models`` (its objects.yaml) where it has them (`with_declared_objects`).
    """
    from tqdm import tqdm

    keys = _image_keys(dataset, scene_ids)
    if max_images is not None and max_images < len(keys):
        keys = [keys[i] for i in np.linspace(0, len(keys) - 1, max(1, max_images)).round().astype(int)]
    dataset_objects = with_declared_objects(dataset.objects, getattr(estimator, "models", None))
    objects = dataset_objects if objects is None else with_declared_objects(objects, getattr(estimator, "models",
                                                                                             None))
    estimates: dict[ImageKey, list[PoseEstimate]] = {}
    images: list[ImageGt] = []
    times: dict[ImageKey, float] = {}
    for s, i in tqdm(keys, desc="eval", unit="img", disable=not progress):
        sample = dataset.sample(s, i, load_masks=False)
        t0 = time.perf_counter()
        estimates[(s, i)] = list(estimator.estimate(sample.frame))
        times[(s, i)] = time.perf_counter() - t0
        images.append(ImageGt((s, i), sample.frame.K, sample.gt))
    mean_time = float(np.mean(list(times.values()))) if times else None
    result = score_images(images, estimates, objects, dataset_objects=dataset_objects,
                          min_visib_fract=min_visib_fract, time_per_image_s=mean_time)
    result.image_times_s = times
    return result, estimates


def evaluate_sequences(tracker: Estimator, dataset: BopDataset, *, progress: bool = True
                       ) -> tuple[EvalResult, dict[ImageKey, list[PoseEstimate]]]:
    """Like :func:`evaluate_model` over every image, but each scene of ``dataset`` is played as one sequence in its
    frame order through ``tracker`` (an estimator with ``reset()``, e.g. ``PoseTracker``), reset at its start: the
    held-out trajectories as the robot would see them, causally."""
    estimates: dict[ImageKey, list[PoseEstimate]] = {}
    times: dict[ImageKey, float] = {}
    for scene in dataset.scene_ids:
        tracker.reset()
        result, ests = evaluate_model(tracker, dataset, scene_ids=[scene], progress=progress)
        estimates.update(ests)
        times.update(result.image_times_s)
    result = evaluate(estimates, dataset, time_per_image_s=float(np.mean(list(times.values()))) if times else None)
    result.image_times_s = times
    return result, estimates

