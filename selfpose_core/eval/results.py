"""Pose estimates as a BOP results file (the BOP Challenge 2019 CSV that bop_toolkit's ``eval_bop19_pose.py`` scores).

One row per estimate: ``scene_id,im_id,obj_id,score,R,t,time`` with ``R`` the 9 row-major entries of the rotation
separated by spaces, ``t`` the 3 entries of the translation in MILLIMETRES separated by spaces, and ``time`` the
run time in seconds for the whole image (the same in every row of an image; -1 when unknown). The first line is
the header. Inside selfpose poses stay in metres; the conversion happens here only.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfpose_core.errors import DatasetError
from selfpose_core.types import ObjectModel, PoseEstimate

log = logging.getLogger(__name__)

HEADER = "scene_id,im_id,obj_id,score,R,t,time"
ImageKey = tuple[int, int]  # (scene_id, im_id)
# Largest |R^T R - I| entry accepted for a rotation read from a file (results are often written with ~6 digits).
_ORTHO_TOL = 1e-3


@dataclass(slots=True)
class BopResults:
    """Estimates read from a results file, grouped per image, and the run time of each image (seconds, -1 unknown)."""

    estimates: dict[ImageKey, list[PoseEstimate]] = field(default_factory=dict)
    times: dict[ImageKey, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.estimates.values())


def _obj_id(est: PoseEstimate, ids_by_name: dict[str, int], path: Path) -> int:
    if est.object_id > 0:
        return int(est.object_id)
    if est.object_name in ids_by_name:
        return ids_by_name[est.object_name]
    raise DatasetError(f"cannot write {path}: estimate of object {est.object_name!r} has no BOP obj_id "
                       f"(object_id={est.object_id}) and no object of that name was given")


def write_results(path: str | os.PathLike, estimates: Mapping[ImageKey, Sequence[PoseEstimate]],
                  times: Mapping[ImageKey, float] | None = None,
                  objects: Sequence[ObjectModel] | None = None) -> int:
    """Write ``estimates`` {(scene_id, im_id): [PoseEstimate]} as a BOP results CSV; returns the number of rows.

    ``times`` gives the run time per image in seconds (written as -1 where missing). An estimate's BOP ``obj_id``
    is its ``object_id`` or, when that is 0, the ``obj_id`` of the object of the same name in ``objects``.
    The file is written to a temporary name and renamed, so a crash never leaves a half-written results file.
    """
    path = Path(path)
    ids_by_name = {o.name: int(o.obj_id) for o in objects or ()}
    lines = [HEADER]
    for (scene_id, im_id) in sorted(estimates):
        run_time = float((times or {}).get((scene_id, im_id), -1.0))
        for est in estimates[(scene_id, im_id)]:
            T = np.asarray(est.T_cam_obj, dtype=np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise DatasetError(f"cannot write {path}: pose of {est.object_name!r} in scene {scene_id} image "
                                   f"{im_id} is not a finite 4x4 matrix")
            R = " ".join(repr(float(v)) for v in T[:3, :3].reshape(-1))
            t = " ".join(repr(float(v)) for v in T[:3, 3] * 1000.0)
            lines.append(f"{int(scene_id)},{int(im_id)},{_obj_id(est, ids_by_name, path)},{float(est.score)!r},"
                         f"{R},{t},{run_time!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    log.info("wrote %d pose estimates to %s", len(lines) - 1, path)
    return len(lines) - 1


def _floats(text: str, n: int, what: str, where: str) -> np.ndarray:
    try:
        vals = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be {n} numbers separated by spaces, got {text.strip()!r}") from None
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        raise DatasetError(f"{where}: {what} must be {n} finite numbers separated by spaces, got {text.strip()!r}")
    return vals


def read_results(path: str | os.PathLike, objects: Sequence[ObjectModel] | None = None) -> BopResults:
    """Read a BOP results CSV into PoseEstimates (``T_cam_obj`` in metres), grouped per (scene_id, im_id).

    With ``objects`` every ``obj_id`` must be one of theirs (the estimate gets that object's name); without, the
    name is ``obj_<id:06d>``. Raises :class:`DatasetError` naming the file and line of a malformed row (wrong number
    of columns, non-numeric field, R not 9 numbers forming a rotation, t not 3 numbers, unknown obj_id).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"results file {path} does not exist")
    names = {int(o.obj_id): o.name for o in objects} if objects is not None else None
    out = BopResults()
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip() or (line_no == 1 and line.strip().startswith("scene_id")):
                continue
            where = f"{path}:{line_no}"
            cols = line.rstrip("\n").split(",")
            if len(cols) != 7:
                raise DatasetError(f"{where}: a row needs 7 comma-separated fields ({HEADER}), got {len(cols)}")
            try:
                scene_id, im_id, obj_id = int(cols[0]), int(cols[1]), int(cols[2])
                score, run_time = float(cols[3]), float(cols[6])
            except ValueError:
                raise DatasetError(f"{where}: scene_id, im_id, obj_id must be integers and score, time numbers, "
                                   f"got {line.strip()!r}") from None
            if not (math.isfinite(score) and math.isfinite(run_time)):
                raise DatasetError(f"{where}: score and time must be finite, got {cols[3]!r} and {cols[6]!r}")
            R = _floats(cols[4], 9, "R (row-major rotation)", where).reshape(3, 3)
            t = _floats(cols[5], 3, "t (translation in mm)", where)
            if np.abs(R.T @ R - np.eye(3)).max() > _ORTHO_TOL or np.linalg.det(R) < 0:
                raise DatasetError(f"{where}: R is not a rotation matrix (R^T R != I or det < 0)")
            if names is not None and obj_id not in names:
                raise DatasetError(f"{where}: obj_id {obj_id} is not an object of the dataset "
                                   f"(obj_ids {sorted(names)})")
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, t / 1000.0
            name = names[obj_id] if names is not None else f"obj_{obj_id:06d}"
            key = (scene_id, im_id)
            out.estimates.setdefault(key, []).append(PoseEstimate(name, T, score, object_id=obj_id))
            if key in out.times and out.times[key] != run_time:
                log.warning("%s: time %g differs from %g given earlier for scene %d image %d; keeping the first",
                            where, run_time, out.times[key], scene_id, im_id)
            out.times.setdefault(key, run_time)
    log.info("read %d pose estimates for %d images from %s", len(out), len(out.estimates), path)
    return out
