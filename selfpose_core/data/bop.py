"""BOP-format datasets (Hodan et al., BOP: Benchmark for 6D Object Pose Estimation, ECCV 2018): read and write.

Layout (https://github.com/thodan/bop_toolkit/blob/master/docs/bop_datasets_format.md)::

    root/models/obj_000001.ply            mesh in millimetres (+ texture PNG named by a TextureFile comment)
    root/models/models_info.json          {obj_id: {diameter, min_x.., size_x.., symmetries_discrete/continuous}}
    root/camera.json                      intrinsics of the first image written (informative)
    root/<split>/<scene_id:06d>/scene_camera.json   {im_id: {cam_K (9, row-major), depth_scale,
                                                             cam_R_w2c (9), cam_t_w2c (mm)}}
    root/<split>/<scene_id:06d>/scene_gt.json       {im_id: [{cam_R_m2c (9), cam_t_m2c (mm), obj_id}, ...]}
    root/<split>/<scene_id:06d>/scene_gt_info.json  {im_id: [{bbox_obj, bbox_visib ([x, y, w, h]), px_count_all,
                                                              px_count_valid, px_count_visib, visib_fract}, ...]}
    root/<split>/<scene_id:06d>/rgb/{im_id:06d}.png|jpg   (gray/ and .tif are read too)
    root/<split>/<scene_id:06d>/depth/{im_id:06d}.png     uint16, depth [mm] = value * depth_scale
    root/<split>/<scene_id:06d>/mask/ and mask_visib/{im_id:06d}_{gt_idx:06d}.png

selfpose additions, ignored by bop_toolkit: ``stamp_ns`` in scene_camera.json entries and
``models/selfpose_names.json`` ({obj_id: {name, category}}). A bbox of ``[-1, -1, -1, -1]`` and a ``visib_fract``
of ``-1`` mean "unknown" (frames written without masks).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfpose_core.errors import DatasetError, MeshError
from selfpose_core.geometry.projection import project_box
from selfpose_core.geometry.se3 import invert, make_T, transform_points
from selfpose_core.mesh.loading import load_object_model, save_mesh
from selfpose_core.types import CameraIntrinsics, Frame, ObjectModel, Symmetry

log = logging.getLogger(__name__)

IMAGE_DIRS = ("rgb", "gray")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEPTH_SUFFIXES = (".png", ".tif", ".tiff")
NAMES_FILE = "selfpose_names.json"
NO_BOX = [-1, -1, -1, -1]


@dataclass(slots=True)
class GtInstance:
    """One ground-truth object instance in one image (BOP scene_gt + scene_gt_info entry)."""

    obj_id: int
    T_cam_obj: np.ndarray  # (4, 4) float64 metres
    bbox_visib: np.ndarray  # (4,) int64 [x, y, w, h] of the visible mask; [-1, -1, -1, -1] if unknown/invisible
    visib_fract: float  # visible fraction of the object's silhouette, -1 if unknown
    mask_visib: np.ndarray | None = None  # (H, W) bool
    bbox_obj: np.ndarray | None = None  # (4,) int64 [x, y, w, h] of the full (unoccluded) silhouette
    gt_idx: int = 0  # index in the image's scene_gt list (mask file names, BOP results)


@dataclass(slots=True)
class BopSample:
    """One image of a BOP scene with its ground truth."""

    scene_id: int
    im_id: int
    frame: Frame
    gt: list[GtInstance]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"BOP file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"BOP file {path} is not valid JSON: {exc}") from exc


def _write_json_lines(path: Path, data: dict[str, Any]) -> None:
    """Write ``{key: value}`` with one key per line (like bop_toolkit), atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    body = ",\n".join(f"  {json.dumps(str(k))}: {json.dumps(v)}" for k, v in data.items())
    tmp.write_text("{\n" + body + "\n}\n")
    os.replace(tmp, path)


def _int_keys(data: Any, path: Path) -> dict[int, Any]:
    if not isinstance(data, dict):
        raise DatasetError(f"BOP file {path} must hold a JSON object keyed by id, got {type(data).__name__}")
    try:
        return {int(k): v for k, v in data.items()}
    except ValueError as exc:
        raise DatasetError(f"BOP file {path} has a non-integer key: {exc}") from exc


def _mask_box(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the True pixels of ``mask`` (H, W), or [-1, -1, -1, -1] when there are none."""
    cols = np.flatnonzero(mask.any(axis=0))
    if len(cols) == 0:
        return list(NO_BOX)
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _pose_fields(T: np.ndarray, rot_key: str, trans_key: str) -> dict[str, list[float]]:
    return {rot_key: [float(x) for x in T[:3, :3].reshape(-1)], trans_key: [float(x) * 1000.0 for x in T[:3, 3]]}


def _pose_from(entry: dict, rot_key: str, trans_key: str, where: str) -> np.ndarray:
    try:
        R = np.asarray(entry[rot_key], dtype=np.float64).reshape(3, 3)
        t = np.asarray(entry[trans_key], dtype=np.float64).reshape(3) / 1000.0
    except KeyError as exc:
        raise DatasetError(f"{where}: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: {rot_key} must hold 9 and {trans_key} 3 numbers: {exc}") from None
    return make_T(R, t)


def models_info_entry(model: ObjectModel) -> dict[str, Any]:
    """The models_info.json entry of ``model`` (millimetres): diameter, min_*, size_*, symmetries."""
    lo, hi = model.bbox
    info: dict[str, Any] = {"diameter": model.diameter * 1000.0}
    for axis, a, b in zip("xyz", lo * 1000.0, (hi - lo) * 1000.0):
        info[f"min_{axis}"], info[f"size_{axis}"] = float(a), float(b)
    if len(model.symmetry.discrete):
        mats = np.array(model.symmetry.discrete, dtype=np.float64)
        mats[:, :3, 3] *= 1000.0
        info["symmetries_discrete"] = [m.reshape(-1).tolist() for m in mats]
    if model.symmetry.continuous:
        info["symmetries_continuous"] = [{"axis": np.asarray(a, float).tolist(),
                                          "offset": (np.asarray(o, float) * 1000.0).tolist()}
                                         for a, o in model.symmetry.continuous]
    return info


def symmetry_from_models_info(info: dict[str, Any], where: str = "models_info.json") -> Symmetry:
    """The :class:`Symmetry` (metres) of one models_info.json entry (``symmetries_discrete`` / ``_continuous``)."""
    try:
        disc = np.asarray(info.get("symmetries_discrete", []), dtype=np.float64).reshape(-1, 4, 4).copy()
        disc[:, :3, 3] /= 1000.0
        cont = [(np.asarray(c["axis"], dtype=np.float64).reshape(3),
                 np.asarray(c.get("offset", [0.0, 0.0, 0.0]), dtype=np.float64).reshape(3) / 1000.0)
                for c in info.get("symmetries_continuous", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: malformed symmetries: {exc!r}") from None
    return Symmetry(discrete=disc, continuous=cont)


class BopWriter:
    """Write a BOP-format split: models, then frames with ground-truth poses and masks.

    Scene JSON files are rewritten every ``flush_every`` frames and on :meth:`close` (also when used as a
    context manager), so an interrupted run keeps what was flushed. Appending to an existing scene is allowed;
    writing an image id twice is refused. ``depth_scale`` is BOP's: stored uint16 x depth_scale = millimetres
    (1.0: 1 mm steps up to 65.5 m; 0.1: 0.1 mm steps up to 6.55 m); deeper pixels are stored as 0 (invalid).
    """

    def __init__(self, root: str | Path, split: str = "test", *, image_format: str = "png",
                 depth_scale: float = 1.0, jpeg_quality: int = 95, flush_every: int = 100) -> None:
        if image_format not in ("png", "jpg"):
            raise DatasetError(f"BopWriter image_format must be 'png' or 'jpg', got {image_format!r}")
        if not depth_scale > 0:
            raise DatasetError(f"BopWriter depth_scale must be positive, got {depth_scale}")
        self.root = Path(root)
        self.split = split
        self.image_format = image_format
        self.depth_scale = float(depth_scale)
        self.jpeg_quality = int(jpeg_quality)
        self.flush_every = max(1, int(flush_every))
        self._models: dict[int, ObjectModel] = {}
        self._scenes: dict[int, dict[str, dict[str, Any]]] = {}
        self._dirty: set[int] = set()
        self._unflushed = 0
        (self.root / split).mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> BopWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def scene_dir(self, scene_id: int) -> Path:
        return self.root / self.split / f"{int(scene_id):06d}"

    def write_models(self, objects: Sequence[ObjectModel]) -> None:
        """Write ``models/obj_{id:06d}.ply`` (mm), ``models_info.json`` and the names file for ``objects``."""
        ids = [o.obj_id for o in objects]
        if len(set(ids)) != len(ids):
            raise DatasetError(f"BopWriter.write_models: duplicate obj_id in {ids}")
        models_dir = self.root / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        info, names = {}, {}
        for obj in sorted(objects, key=lambda o: o.obj_id):
            save_mesh(obj, models_dir / f"obj_{obj.obj_id:06d}.ply", mm=True)
            info[str(obj.obj_id)] = models_info_entry(obj)
            names[str(obj.obj_id)] = {"name": obj.name, "category": obj.category}
            self._models[obj.obj_id] = obj
        _write_json_lines(models_dir / "models_info.json", info)
        _write_json_lines(models_dir / NAMES_FILE, names)

    def _scene(self, scene_id: int) -> dict[str, dict[str, Any]]:
        if scene_id not in self._scenes:
            d = self.scene_dir(scene_id)
            scene = {}
            for key in ("scene_camera", "scene_gt", "scene_gt_info"):
                p = d / f"{key}.json"
                scene[key] = _read_json(p) if p.is_file() else {}
            self._scenes[scene_id] = scene
            for sub in ("rgb", "depth", "mask", "mask_visib"):
                (d / sub).mkdir(parents=True, exist_ok=True)
        return self._scenes[scene_id]

    def _check_masks(self, masks: list[np.ndarray] | None, n: int, shape: tuple[int, int], what: str) -> None:
        if masks is None:
            return
        if len(masks) != n:
            raise DatasetError(f"BopWriter.write_frame: {len(masks)} {what} for {n} ground-truth instances")
        for m in masks:
            if np.shape(m) != shape:
                raise DatasetError(f"BopWriter.write_frame: {what} must be {shape} like the image, got {np.shape(m)}")

    def _projected_box(self, frame: Frame, obj_id: int, T: np.ndarray) -> list[int]:
        """[x, y, w, h] of the model's projected vertices clipped to the image, [-1]*4 if unknown or outside."""
        if obj_id not in self._models:
            return list(NO_BOX)
        pts = transform_points(T, self._models[obj_id].vertices)
        xyxy = project_box(frame.K.K, pts, image_size=(frame.K.width, frame.K.height))
        if not (np.isfinite(xyxy).all() and xyxy[2] > xyxy[0] and xyxy[3] > xyxy[1]):
            return list(NO_BOX)
        x0, y0 = int(np.floor(xyxy[0])), int(np.floor(xyxy[1]))
        return [x0, y0, int(np.ceil(xyxy[2])) - x0, int(np.ceil(xyxy[3])) - y0]

    def _gt_info(self, frame: Frame, gt: list[tuple[int, np.ndarray]], masks_visib: list[np.ndarray] | None,
                 masks: list[np.ndarray] | None) -> list[dict[str, Any]]:
        valid = None if frame.depth is None else np.isfinite(frame.depth) & (frame.depth > 0)
        out = []
        for i, (obj_id, T) in enumerate(gt):
            vis = None if masks_visib is None else np.asarray(masks_visib[i], dtype=bool)
            full = vis if masks is None else np.asarray(masks[i], dtype=bool)
            if full is None:
                box = self._projected_box(frame, obj_id, T)
                out.append({"bbox_obj": box, "bbox_visib": box, "px_count_all": -1, "px_count_valid": -1,
                            "px_count_visib": -1, "visib_fract": -1.0})
                continue
            n_all = int(full.sum())
            entry = {"bbox_obj": _mask_box(full), "bbox_visib": list(NO_BOX), "px_count_all": n_all,
                     "px_count_valid": n_all if valid is None else int((full & valid).sum()),
                     "px_count_visib": -1, "visib_fract": -1.0}
            if vis is not None:
                n_vis = int(vis.sum())
                entry.update(bbox_visib=_mask_box(vis), px_count_visib=n_vis,
                             visib_fract=n_vis / n_all if n_all > 0 else 0.0)
            out.append(entry)
        return out

    def write_frame(self, scene_id: int, im_id: int, frame: Frame, gt: list[tuple[int, np.ndarray]],
                    masks_visib: list[np.ndarray] | None = None, masks: list[np.ndarray] | None = None) -> None:
        """Write one image of scene ``scene_id`` with ground truth ``gt`` = [(obj_id, T_cam_obj (4, 4) metres)].

        ``masks_visib`` / ``masks``: per instance (H, W) bool visible / full silhouettes. Without full masks the
        visible ones stand in (no occlusion assumed); with full masks only, the visible-part fields are unknown
        (-1); without any, boxes come from the projected model vertices (when :meth:`write_models` saw the
        object) and the pixel counts and visib_fract are -1.
        """
        import cv2

        scene_id, im_id = int(scene_id), int(im_id)
        if scene_id < 0 or im_id < 0:
            raise DatasetError(f"BopWriter.write_frame: scene_id and im_id must be >= 0, got {scene_id}, {im_id}")
        shape = frame.rgb.shape[:2]
        for obj_id, T in gt:
            if np.shape(T) != (4, 4) or not np.isfinite(T).all():
                raise DatasetError(f"BopWriter.write_frame: T_cam_obj of obj_id {obj_id} must be a finite (4, 4) "
                                   f"matrix, got shape {np.shape(T)}")
        self._check_masks(masks_visib, len(gt), shape, "masks_visib")
        self._check_masks(masks, len(gt), shape, "masks")
        scene = self._scene(scene_id)
        key = str(im_id)
        d = self.scene_dir(scene_id)
        if key in scene["scene_camera"]:
            raise DatasetError(f"{d / 'scene_camera.json'} already holds image {im_id} (refusing to overwrite)")

        ext = ".jpg" if self.image_format == "jpg" else ".png"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality] if ext == ".jpg" else []
        rgb_path = d / "rgb" / f"{im_id:06d}{ext}"
        if not cv2.imwrite(str(rgb_path), np.ascontiguousarray(frame.rgb[:, :, ::-1]), params):
            raise DatasetError(f"cannot write image {rgb_path}")
        camera: dict[str, Any] = {"cam_K": [float(x) for x in frame.K.K.reshape(-1)], "depth_scale": self.depth_scale}
        if frame.depth is not None:
            depth = np.nan_to_num(frame.depth.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            units = np.round(np.clip(depth, 0.0, None) * 1000.0 / self.depth_scale)
            too_far = units > 65535
            if too_far.any():
                log.warning("%s image %d: %d depth pixels beyond %.2f m stored as 0 (invalid); use a larger "
                            "depth_scale", d, im_id, int(too_far.sum()), 65535 * self.depth_scale / 1000.0)
                units[too_far] = 0
            depth_path = d / "depth" / f"{im_id:06d}.png"
            if not cv2.imwrite(str(depth_path), units.astype(np.uint16)):
                raise DatasetError(f"cannot write depth image {depth_path}")
        if frame.T_world_cam is not None:
            camera.update(_pose_fields(invert(np.asarray(frame.T_world_cam, dtype=np.float64)),
                                       "cam_R_w2c", "cam_t_w2c"))
        if frame.stamp_ns:
            camera["stamp_ns"] = int(frame.stamp_ns)
        for sub, ms in (("mask_visib", masks_visib), ("mask", masks)):
            for i, m in enumerate(ms or []):
                p = d / sub / f"{im_id:06d}_{i:06d}.png"
                if not cv2.imwrite(str(p), np.asarray(m, dtype=bool).astype(np.uint8) * 255):
                    raise DatasetError(f"cannot write mask {p}")
        scene["scene_camera"][key] = camera
        scene["scene_gt"][key] = [{**_pose_fields(np.asarray(T, dtype=np.float64), "cam_R_m2c", "cam_t_m2c"),
                                   "obj_id": int(obj_id)} for obj_id, T in gt]
        scene["scene_gt_info"][key] = self._gt_info(frame, gt, masks_visib, masks)
        camera_json = self.root / "camera.json"
        if not camera_json.is_file():
            k = frame.K
            _write_json_lines(camera_json, {"cx": k.cx, "cy": k.cy, "fx": k.fx, "fy": k.fy, "width": k.width,
                                            "height": k.height, "depth_scale": self.depth_scale})
        self._dirty.add(scene_id)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the JSON files of every scene changed since the last flush."""
        for scene_id in sorted(self._dirty):
            d = self.scene_dir(scene_id)
            for key, data in self._scenes[scene_id].items():
                _write_json_lines(d / f"{key}.json", dict(sorted(data.items(), key=lambda kv: int(kv[0]))))
        self._dirty.clear()
        self._unflushed = 0

    def close(self) -> None:
        """Flush everything; the writer can still be used afterwards (it reopens nothing)."""
        self.flush()


def _read_color(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a colour or gray image file (8 or 16 bit; alpha dropped)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DatasetError(f"image {path} has unsupported pixel type {img.dtype}")
    if img.ndim == 2 or img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class BopDataset:
    """Read a BOP-format dataset split (LM, LM-O, YCB-V, T-LESS, HomebrewedDB, ... or one written by BopWriter).

    ``objects`` loads ``models_dir`` lazily (meshes in mm converted to metres, symmetries from models_info.json).
    Gray images are returned as RGB; ``.tif`` images and depth are read as well.
    """

    def __init__(self, root: str | Path, split: str = "test", *, models_dir: str = "models") -> None:
        self.root = Path(root)
        self.split = split
        self.models_dir = self.root / models_dir
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            raise DatasetError(f"BOP split folder {self.split_dir} does not exist")
        self.scene_ids: list[int] = sorted(int(p.name) for p in self.split_dir.iterdir()
                                           if p.is_dir() and p.name.isdigit())
        if not self.scene_ids:
            raise DatasetError(f"BOP split folder {self.split_dir} holds no scene folders (000001, ...)")
        self._objects: list[ObjectModel] | None = None
        self._scenes: dict[int, dict[str, dict[int, Any]]] = {}

    def scene_dir(self, scene_id: int) -> Path:
        return self.split_dir / f"{int(scene_id):06d}"

    @property
    def models_info(self) -> dict[int, dict[str, Any]]:
        """models_info.json keyed by obj_id (millimetres, as stored)."""
        path = self.models_dir / "models_info.json"
        return _int_keys(_read_json(path), path)

    @property
    def objects(self) -> list[ObjectModel]:
        """The dataset's objects in metres, sorted by obj_id (loaded on first use)."""
        if self._objects is None:
            info = self.models_info
            names_path = self.models_dir / NAMES_FILE
            names = _int_keys(_read_json(names_path), names_path) if names_path.is_file() else {}
            objects = []
            for obj_id in sorted(info):
                mesh = self.models_dir / f"obj_{obj_id:06d}.ply"
                if not mesh.is_file():
                    raise DatasetError(f"BOP model {mesh} listed in {self.models_dir / 'models_info.json'} "
                                       "does not exist")
                where = f"{self.models_dir / 'models_info.json'} object {obj_id}"
                meta = names.get(obj_id, {})
                try:
                    objects.append(load_object_model(
                        mesh, meta.get("name", f"obj_{obj_id:06d}"), units="mm", obj_id=obj_id,
                        symmetry=symmetry_from_models_info(info[obj_id], where), category=meta.get("category")))
                except MeshError as exc:
                    raise DatasetError(f"BOP model {mesh}: {exc}") from exc
            self._objects = objects
        return self._objects

    def _scene(self, scene_id: int) -> dict[str, dict[int, Any]]:
        if scene_id not in self._scenes:
            d = self.scene_dir(scene_id)
            if not d.is_dir():
                raise DatasetError(f"BOP scene folder {d} does not exist (scenes: {self.scene_ids})")
            scene = {}
            for key in ("scene_camera", "scene_gt", "scene_gt_info"):
                p = d / f"{key}.json"
                # test splits without public ground truth have no scene_gt / scene_gt_info
                scene[key] = _int_keys(_read_json(p), p) if key == "scene_camera" or p.is_file() else {}
            self._scenes[scene_id] = scene
        return self._scenes[scene_id]

    def image_ids(self, scene_id: int) -> list[int]:
        """Sorted image ids of a scene (from its scene_camera.json)."""
        return sorted(self._scene(scene_id)["scene_camera"])

    def __len__(self) -> int:
        return sum(len(self.image_ids(s)) for s in self.scene_ids)

    def _find(self, d: Path, dirs: Sequence[str], stem: str, suffixes: Sequence[str]) -> Path | None:
        for sub in dirs:
            for suffix in suffixes:
                p = d / sub / f"{stem}{suffix}"
                if p.is_file():
                    return p
        return None

    def sample(self, scene_id: int, im_id: int, *, load_depth: bool = True, load_masks: bool = True) -> BopSample:
        """One image with its intrinsics, depth (metres), camera pose (if stored) and ground truth."""
        import cv2

        scene = self._scene(scene_id)
        d = self.scene_dir(scene_id)
        cam_path = d / "scene_camera.json"
        if im_id not in scene["scene_camera"]:
            raise DatasetError(f"{cam_path} has no image {im_id}")
        cam = scene["scene_camera"][im_id]
        stem = f"{im_id:06d}"
        rgb_path = self._find(d, IMAGE_DIRS, stem, IMAGE_SUFFIXES)
        if rgb_path is None:
            raise DatasetError(f"no image file for image {im_id} in {d}/rgb or {d}/gray ({', '.join(IMAGE_SUFFIXES)})")
        rgb = _read_color(rgb_path)
        h, w = rgb.shape[:2]
        if "cam_K" not in cam:
            raise DatasetError(f"{cam_path}: image {im_id}: missing key 'cam_K'")
        K = CameraIntrinsics.from_K(cam["cam_K"], w, h)
        depth = None
        if load_depth:
            depth_path = self._find(d, ("depth",), stem, DEPTH_SUFFIXES)
            if depth_path is not None:
                raw = cv2.imread(str(depth_path), cv2.IMREAD_ANYDEPTH)
                if raw is None or raw.shape != (h, w):
                    raise DatasetError(f"depth image {depth_path} is unreadable or not {w}x{h}")
                depth = (raw.astype(np.float64) * float(cam.get("depth_scale", 1.0)) / 1000.0).astype(np.float32)
        T_world_cam = None
        if "cam_R_w2c" in cam and "cam_t_w2c" in cam:
            T_world_cam = invert(_pose_from(cam, "cam_R_w2c", "cam_t_w2c", f"{cam_path}: image {im_id}"))
        frame = Frame(rgb=rgb, K=K, stamp_ns=int(cam.get("stamp_ns", 0)), depth=depth, T_world_cam=T_world_cam,
                      index=im_id)
        gt_path, info_path = d / "scene_gt.json", d / "scene_gt_info.json"
        infos = scene["scene_gt_info"].get(im_id, [])
        gt = []
        for i, entry in enumerate(scene["scene_gt"].get(im_id, [])):
            where = f"{gt_path}: image {im_id} instance {i}"
            if not isinstance(entry, dict) or "obj_id" not in entry:
                raise DatasetError(f"{where}: missing key 'obj_id'")
            T = _pose_from(entry, "cam_R_m2c", "cam_t_m2c", where)
            info = infos[i] if i < len(infos) else {}
            try:
                bbox_visib = np.asarray(info.get("bbox_visib", NO_BOX), dtype=np.int64).reshape(4)
                bbox_obj = np.asarray(info.get("bbox_obj", NO_BOX), dtype=np.int64).reshape(4)
                visib = float(info.get("visib_fract", -1.0))
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{info_path}: image {im_id} instance {i}: malformed entry: {exc}") from None
            mask = None
            if load_masks:
                mask_path = d / "mask_visib" / f"{stem}_{i:06d}.png"
                if mask_path.is_file():
                    m = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
                    if m is None or m.shape != (h, w):
                        raise DatasetError(f"mask {mask_path} is unreadable or not {w}x{h}")
                    mask = m > 0
            gt.append(GtInstance(obj_id=int(entry["obj_id"]), T_cam_obj=T, bbox_visib=bbox_visib,
                                 visib_fract=visib, mask_visib=mask, bbox_obj=bbox_obj, gt_idx=i))
        return BopSample(scene_id=int(scene_id), im_id=int(im_id), frame=frame, gt=gt)

    def samples(self, scene_id: int | None = None, *, load_depth: bool = True,
                load_masks: bool = True) -> Iterator[BopSample]:
        """Iterate the images of one scene, or of all scenes in id order."""
        for s in ([scene_id] if scene_id is not None else self.scene_ids):
            for im_id in self.image_ids(s):
                yield self.sample(s, im_id, load_depth=load_depth, load_masks=load_masks)
