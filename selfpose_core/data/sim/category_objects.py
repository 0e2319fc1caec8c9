"""Category instances as objects of the simulated world: a true appearance per instance, in two frames.

``category_object(instance, rng)`` gives the instance a procedural appearance of its category (a glazed mug, a
labelled bottle or can, a dark camera, a grey laptop, a glazed bowl) and returns it twice with the same texture:
z up for laying out the table (the frame the scene code places objects in, docs/demo_scene.md) and in the NOCS
frame (y up) for rendering and ground truth, so that the BOP copy's poses and meshes are in the NOCS frame that
category-level methods and the NOCS metrics use. The two are related by ``T_ZUP_NOCS``.

``handle_visible`` decides, per rendered view, whether a mug's handle can be seen (the NOCS evaluation treats a mug
whose handle is hidden as symmetric); the simulator stores it per BOP scene in :data:`HANDLE_VISIBILITY_FILE`, and
lists the category instances of the BOP copy (their models are in the NOCS frame) in :data:`NOCS_INSTANCES_FILE`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from selfpose_core.data.sim import textures as tx
from selfpose_core.data.sim.catalog import SimObject
from selfpose_core.data.sim.category_shapes import CategoryInstance
from selfpose_core.data.sim.shapes import PartMesh
from selfpose_core.errors import DatasetError
from selfpose_core.mesh.categories import SYMMETRIC_CATEGORIES, T_ZUP_NOCS
from selfpose_core.types import CameraIntrinsics, Symmetry

HANDLE_VISIBILITY_FILE = "scene_handle_visibility.json"  # in a BOP scene folder: {im_id: {obj_id: bool}} (mugs)
NOCS_INSTANCES_FILE = "nocs_instances.json"  # in BOP models/: {obj_id: {category, nocs_size_m, nocs_scale_m, index}}
HANDLE_VISIBLE_FRACTION = 0.1  # share of the handle's surface points that must be seen

_MATERIAL = {"bottle": (0.35, 50.0), "bowl": (0.5, 60.0), "camera": (0.2, 25.0), "can": (0.5, 40.0),
             "laptop": (0.3, 30.0), "mug": (0.45, 60.0)}  # specular, shininess


def _rows(v0: float, v1: float, h: int) -> tuple[int, int]:
    return int(round((1 - v1) * h)), int(round((1 - v0) * h))


def _texture(category: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 appearance; revolved parts map u to the angle and v to the height (v = 0 at the bottom)."""
    if category in ("camera", "laptop"):
        dark = category == "camera" or rng.random() < 0.5
        base = tx.random_color(rng, (0.0, 0.15), (0.08, 0.25) if dark else (0.55, 0.8))
        return tx.mix(base, tuple(min(255, c + 25) for c in base), tx.value_noise(rng, (128, 128), 8, 3))
    h, w = 256, 512
    main = tx.random_color(rng, value=(0.5, 0.95))
    img = tx.plain(main, (h, w))
    ink = tx.random_color(rng)
    if category == "bowl":
        for v0 in rng.uniform(0.2, 0.9, 3):
            y0, y1 = _rows(v0, v0 + rng.uniform(0.02, 0.05), h)
            img[y0:y1] = ink
    elif category == "mug":
        y0, y1 = _rows(0.15, 0.7, h)
        for cy in range(y0 + 12, y1 - 8, 30):
            for cx in range(10 + int(rng.integers(0, 20)), w, 34):
                tx.cv2.circle(img, (cx, cy), 6, ink, -1, lineType=tx.cv2.LINE_AA)
    elif category in ("can", "bottle"):
        lo, hi = (0.08, 0.92) if category == "can" else (0.2, 0.6)
        y0, y1 = _rows(lo, hi, h)
        img[y0:y1] = tx.random_color(rng, value=(0.6, 0.95))
        tx.stripes(img, (y0, y0 + (y1 - y0) // 5), [ink, (250, 250, 250)])
        word = "".join(rng.choice(list("ABCDEFGHKLMNOPRSTUVW"), int(rng.integers(4, 8))))
        tx.put_text(img, word, (20, y0 + (y1 - y0) // 4, w // 2, y1 - 10), ink, 2)
        tx.logo(img, (3 * w // 4, (y0 + y1) // 2), (y1 - y0) // 4, rng)
        if category == "can":
            img[:y0] = img[y1:] = (175, 175, 180)
        else:
            img[: _rows(0.93, 1.0, h)[1]] = tx.random_color(rng)  # the cap
    return tx.printed(rng, img, 0.03)


def category_object(instance: CategoryInstance, rng: np.random.Generator) -> tuple[SimObject, SimObject]:
    """(z-up object for placing, NOCS-frame object for rendering and ground truth) of ``instance``, one texture."""
    texture = _texture(instance.category, rng)
    specular, shininess = _MATERIAL[instance.category]
    mesh = instance.mesh
    up = Symmetry(continuous=[(np.array([0.0, 0.0, 1.0]), np.zeros(3))]) \
        if instance.category in SYMMETRIC_CATEGORIES else Symmetry()
    zup = SimObject(instance.name, mesh.transformed(T_ZUP_NOCS), texture, up, instance.category, specular, shininess)
    nocs = SimObject(instance.name, mesh, texture, instance.symmetry, instance.category, specular, shininess)
    return zup, nocs


def handle_visible(handle: PartMesh, T_cam_obj: np.ndarray, K: CameraIntrinsics, depth: np.ndarray,
                   mask: np.ndarray, tolerance: float = 0.003) -> bool:
    """Whether a mug's handle is visible in a rendered view.

    handle: the handle part in the object frame; T_cam_obj (4, 4); depth (H, W) the rendered z-depth in metres;
    mask (H, W) bool the mug's visible pixels. A surface point (vertex) of the handle is seen when it faces the
    camera, projects into the mask and lies within ``tolerance`` (+ 0.5 % of its depth) of the rendered depth
    there; the handle is visible when at least :data:`HANDLE_VISIBLE_FRACTION` of its points are.
    """
    p = handle.vertices @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    n = handle.normals @ T_cam_obj[:3, :3].T
    z = p[:, 2]
    front = (np.einsum("ij,ij->i", n, -p) > 0) & (z > 1e-6)
    u = np.round(K.fx * p[:, 0] / np.where(front, z, 1.0) + K.cx).astype(np.int64)
    v = np.round(K.fy * p[:, 1] / np.where(front, z, 1.0) + K.cy).astype(np.int64)
    inside = front & (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    ui, vi = u[inside], v[inside]
    seen = mask[vi, ui] & (np.abs(depth[vi, ui] - z[inside]) <= tolerance + 0.005 * z[inside])
    return bool(seen.sum() >= HANDLE_VISIBLE_FRACTION * len(p))


def write_handle_visibility(scene_dir: str | Path, visibility: dict[int, dict[int, bool]]) -> Path:
    """Write ``{im_id: {obj_id: visible}}`` of one BOP scene to its :data:`HANDLE_VISIBILITY_FILE`."""
    path = Path(scene_dir) / HANDLE_VISIBILITY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(i): {str(o): bool(v) for o, v in objs.items()}
                                for i, objs in sorted(visibility.items())}, indent=1))
    return path


def read_handle_visibility(scene_dir: str | Path) -> dict[int, dict[int, bool]]:
    """``{im_id: {obj_id: visible}}`` of a BOP scene; empty when the scene has no such file (no mugs)."""
    path = Path(scene_dir) / HANDLE_VISIBILITY_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        out = {int(i): {int(o): v for o, v in objs.items()} for i, objs in raw.items()}
        if not all(isinstance(v, bool) for objs in out.values() for v in objs.values()):
            raise ValueError("a value is not true or false")
        return out
    except (ValueError, AttributeError, TypeError) as exc:
        raise DatasetError(f"{path}: not a mapping {{im_id: {{obj_id: true|false}}}}: {exc}") from exc


def write_nocs_instances(models_dir: str | Path, instances: dict[int, CategoryInstance]) -> Path:
    """Write ``{obj_id: instance}``, the category instances of a BOP copy, to ``models_dir``/nocs_instances.json."""
    path = Path(models_dir) / NOCS_INSTANCES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(k): {"category": inst.category, "nocs_size_m": inst.size.tolist(),
                                         "nocs_scale_m": inst.scale, "index": inst.index}
                                for k, inst in sorted(instances.items())}, indent=1))
    return path


def read_nocs_instances(models_dir: str | Path) -> dict[int, tuple[str, np.ndarray]]:
    """``{obj_id: (category, NOCS size (3,) metres)}`` of a BOP copy's category instances; empty without the file."""
    path = Path(models_dir) / NOCS_INSTANCES_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        out = {int(k): (str(v["category"]), np.asarray(v["nocs_size_m"], dtype=np.float64)) for k, v in raw.items()}
        if not all(size.shape == (3,) and np.all(np.isfinite(size)) for _, size in out.values()):
            raise ValueError("a size is not 3 finite numbers")
        return out
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise DatasetError(f"{path}: not a mapping {{obj_id: {{category, nocs_size_m, ...}}}}: {exc}") from exc
