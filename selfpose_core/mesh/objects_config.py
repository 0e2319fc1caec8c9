"""The objects config (``config/objects.yaml``): which objects the robot learns, their meshes, units and symmetries.

Format (see docs/objects.md)::

    objects:
      - name: mug                      # unique; letters, digits, _ - .
        mesh: models/mug.ply           # PLY/OBJ/GLB/glTF/STL/OFF, relative to this file
        units: auto                    # auto | m | mm (default auto)
        symmetry: none                 # none | {discrete: [...], continuous: [...]}
        category: mug                  # optional with a mesh (a label)
        obj_id: 1                      # optional, positive, default: position in the list + 1
      - name: any_bowl                 # a category object: no mesh, one of the NOCS categories
        category: bowl                 # (units and symmetry come from the category: docs/categories.md)

A discrete symmetry is a 4x4 matrix (translation in metres) or ``{axis: [x, y, z], angle_deg: a, offset: [m]}``
(rotation by ``a`` degrees about ``axis`` through the point ``offset``). A continuous symmetry is
``{axis: [x, y, z], offset: [x, y, z]}`` (offset in metres, default the origin). List every non-identity
transform, as BOP's models_info does.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

from selfpose_core.config_io import excerpt, load_yaml
from selfpose_core.errors import ConfigError, MeshError
from selfpose_core.mesh.categories import CATEGORIES, category_symmetry
from selfpose_core.mesh.loading import FACE_BUDGET, UNITS, load_object_model
from selfpose_core.types import ObjectModel, Symmetry

TOP_KEYS = ("objects",)
OBJECT_KEYS = ("name", "mesh", "units", "symmetry", "category", "obj_id")
SYMMETRY_KEYS = ("discrete", "continuous")
ROTATION_KEYS = ("axis", "angle_deg", "offset")
CONTINUOUS_KEYS = ("axis", "offset")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
MAX_OBJ_ID = 2 ** 31 - 1  # ids go into int32 fields (BOP files, ROS messages)
MAX_PATH_CHARS = 4096


@dataclass(slots=True)
class ObjectEntry:
    """One object of the objects config, before its mesh is loaded (``mesh`` is an absolute path when read).

    A category object has no mesh (``mesh`` None), one of the NOCS ``category`` names and that category's symmetry.
    """

    name: str
    mesh: str | None
    units: str = "auto"
    symmetry: Symmetry = field(default_factory=Symmetry)
    category: str | None = None
    obj_id: int | None = None


def _fail(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def _check_keys(path: Path, key: str, value: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) and len(unknown[0]) <= 60 else excerpt(unknown[0], 60)
        raise _fail(path, f"{key}.{name}", f"unknown key (allowed: {', '.join(allowed)})")


def _is_file(path: str | Path) -> bool:
    """``Path.is_file`` that says False for names the OS refuses (too long, NUL bytes) instead of raising."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _vector(path: Path, key: str, value: Any, unit: bool = False) -> np.ndarray:
    try:
        vec = np.asarray(value, dtype=np.float64) if isinstance(value, list) and len(value) == 3 else np.zeros(0)
    except (TypeError, ValueError, OverflowError):
        vec = np.zeros(0)
    if vec.shape != (3,) or not np.isfinite(vec).all():
        raise _fail(path, key, f"must be a list of 3 finite numbers, got {excerpt(value)}")
    if unit:
        norm = float(np.linalg.norm(vec))
        if norm < 1e-12:
            raise _fail(path, key, "axis must not be zero")
        vec = vec / norm
    return vec


def _rotation_about(axis: np.ndarray, angle: float, offset: np.ndarray) -> np.ndarray:
    """4x4 rotation by ``angle`` radians about the unit ``axis`` through the point ``offset`` ."""
    R = Rotation.from_rotvec(axis * angle).as_matrix()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = offset - R @ offset
    return T


def _discrete(path: Path, key: str, value: Any) -> np.ndarray:
    if isinstance(value, Mapping):
        _check_keys(path, key, value, ROTATION_KEYS)
        if "axis" not in value or "angle_deg" not in value:
            raise _fail(path, key, "a rotation needs both axis and angle_deg")
        axis = _vector(path, f"{key}.axis", value["axis"], unit=True)
        offset = _vector(path, f"{key}.offset", value.get("offset", [0.0, 0.0, 0.0]))
        raw_angle = value["angle_deg"]
        try:
            angle = math.radians(float(raw_angle)) if not isinstance(raw_angle, (bool, str)) else math.nan
        except (TypeError, ValueError, OverflowError):
            angle = math.nan
        if not math.isfinite(angle):
            raise _fail(path, f"{key}.angle_deg", f"must be a finite number of degrees, got {excerpt(raw_angle)}")
        return _rotation_about(axis, angle, offset)
    try:
        T = np.asarray(value, dtype=np.float64) if isinstance(value, list) and len(value) <= 16 else np.zeros(0)
    except (TypeError, ValueError, OverflowError):
        T = np.zeros(0)
    if T.shape == (16,):
        T = T.reshape(4, 4)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise _fail(path, key, "must be a 4x4 matrix (list of 4 rows) or {axis, angle_deg, offset}")
    if not np.allclose(T[3], [0, 0, 0, 1]) or not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6) \
            or np.linalg.det(T[:3, :3]) < 0:
        raise _fail(path, key, "is not a rigid transform (rotation part must be orthonormal with det +1, "
                               "last row 0 0 0 1)")
    return T


def parse_symmetry(value: Any, path: Path | str = "<symmetry>", key: str = "symmetry") -> Symmetry:
    """Parse the ``symmetry`` value of an objects-config entry (``none``, or a mapping) into a :class:`Symmetry`."""
    path = Path(path)
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return Symmetry()
    if not isinstance(value, Mapping):
        raise _fail(path, key, f"must be 'none' or a mapping with {' and/or '.join(SYMMETRY_KEYS)}, "
                               f"got {excerpt(value)}")
    _check_keys(path, key, value, SYMMETRY_KEYS)
    discrete = value.get("discrete") or []
    continuous = value.get("continuous") or []
    if isinstance(discrete, Mapping):
        discrete = [discrete]
    if isinstance(continuous, Mapping):
        continuous = [continuous]
    if not isinstance(discrete, list) or not isinstance(continuous, list):
        raise _fail(path, key, "discrete and continuous must be lists")
    mats = [_discrete(path, f"{key}.discrete[{i}]", d) for i, d in enumerate(discrete)]
    axes = []
    for i, c in enumerate(continuous):
        ck = f"{key}.continuous[{i}]"
        if not isinstance(c, Mapping) or "axis" not in c:
            raise _fail(path, ck, "must be a mapping {axis: [x, y, z], offset: [x, y, z]}")
        _check_keys(path, ck, c, CONTINUOUS_KEYS)
        axes.append((_vector(path, f"{ck}.axis", c["axis"], unit=True),
                     _vector(path, f"{ck}.offset", c.get("offset", [0.0, 0.0, 0.0]))))
    return Symmetry(discrete=np.stack(mats) if mats else np.zeros((0, 4, 4)), continuous=axes)


def symmetry_to_yaml(symmetry: Symmetry) -> str | dict[str, list]:
    """The objects-config form of ``symmetry``: ``"none"`` or ``{discrete: [4x4 ...], continuous: [...]}``."""
    if not symmetry.is_symmetric:
        return "none"
    out: dict[str, list] = {}
    if len(symmetry.discrete):
        out["discrete"] = [np.asarray(T, dtype=float).tolist() for T in symmetry.discrete]
    if symmetry.continuous:
        out["continuous"] = [{"axis": np.asarray(a, dtype=float).tolist(), "offset": np.asarray(o, dtype=float).tolist()}
                             for a, o in symmetry.continuous]
    return out


def _entry(path: Path, index: int, raw: Any) -> ObjectEntry:
    key = f"objects[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(path, key, f"must be a mapping with keys {', '.join(OBJECT_KEYS)}, got {excerpt(raw)}")
    _check_keys(path, key, raw, OBJECT_KEYS)
    if "name" not in raw:
        raise _fail(path, f"{key}.name", "missing (required)")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _fail(path, f"{key}.name", f"must be 1 to 128 letters, digits, _ - . ; got {excerpt(name)}")
    if "mesh" not in raw:
        return _category_entry(path, index, raw)
    if not isinstance(raw["mesh"], str) or not raw["mesh"] or len(raw["mesh"]) > MAX_PATH_CHARS:
        raise _fail(path, f"{key}.mesh", f"must be a file path, got {excerpt(raw['mesh'])}")
    units = raw.get("units", "auto")
    if units not in UNITS:
        raise _fail(path, f"{key}.units", f"must be one of {', '.join(UNITS)}, got {excerpt(units)}")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise _fail(path, f"{key}.category", f"must be a string, got {excerpt(category)}")
    obj_id = _obj_id(path, key, raw.get("obj_id"), index)
    mesh = Path(os.path.expanduser(raw["mesh"]))
    if not mesh.is_absolute():
        mesh = path.parent / mesh
    symmetry = parse_symmetry(raw.get("symmetry"), path, f"{key}.symmetry")
    return ObjectEntry(name=name, mesh=str(mesh), units=units, symmetry=symmetry, category=category, obj_id=obj_id)


def _obj_id(path: Path, key: str, obj_id: Any, index: int) -> int:
    if obj_id is not None and (isinstance(obj_id, bool) or not isinstance(obj_id, int)
                               or not 1 <= obj_id <= MAX_OBJ_ID):
        raise _fail(path, f"{key}.obj_id", f"must be a positive integer (at most {MAX_OBJ_ID}), got {excerpt(obj_id)}")
    return obj_id if obj_id is not None else index + 1


def _category_entry(path: Path, index: int, raw: Mapping) -> ObjectEntry:
    """An entry without a mesh: an object known only by its category (one of the NOCS categories)."""
    key = f"objects[{index}]"
    if "category" not in raw:
        raise _fail(path, key, "needs a mesh (an object known by its model) or a category (one known only by its "
                               f"category: {', '.join(CATEGORIES)})")
    category = raw["category"]
    if category not in CATEGORIES:
        raise _fail(path, f"{key}.category", f"{excerpt(category)} is not a category selfpose has shapes for "
                                             f"(without a mesh it must be one of {', '.join(CATEGORIES)})")
    for derived in ("units", "symmetry"):
        if derived in raw:
            raise _fail(path, f"{key}.{derived}", f"not allowed without a mesh (a {category}'s {derived} come from "
                                                  "its category)")
    return ObjectEntry(name=raw["name"], mesh=None, symmetry=category_symmetry(category), category=category,
                       obj_id=_obj_id(path, key, raw.get("obj_id"), index))


def read_objects_config(path: str | Path, *, check_files: bool = True) -> list[ObjectEntry]:
    """Parse and validate ``path`` without loading meshes (mesh paths made absolute, ids filled in).

    Raises ConfigError naming the file and the offending key: unreadable YAML, unknown keys (the allowed ones are
    listed), wrong types, duplicate names or ids, a mesh file that does not exist (unless ``check_files`` is off).
    """
    path = Path(path).expanduser()
    data = load_yaml(path, "objects config")
    if not isinstance(data, Mapping) or "objects" not in data:
        raise ConfigError(f"{path}: objects: missing (the file must be a mapping with an 'objects' list)")
    _check_keys(path, "<top level>", data, TOP_KEYS)
    raws = data["objects"]
    if not isinstance(raws, list) or not raws:
        raise _fail(path, "objects", "must be a non-empty list")
    entries = [_entry(path, i, raw) for i, raw in enumerate(raws)]
    seen_names: dict[str, int] = {}
    seen_ids: dict[int, int] = {}
    for i, e in enumerate(entries):
        if e.name in seen_names:
            raise _fail(path, f"objects[{i}].name",
                        f"duplicate name {excerpt(e.name)} (also objects[{seen_names[e.name]}])")
        if e.obj_id in seen_ids:
            raise _fail(path, f"objects[{i}].obj_id",
                        f"duplicate obj_id {e.obj_id} (also objects[{seen_ids[e.obj_id]}]; "
                        "ids default to the position in the list + 1)")
        seen_names[e.name], seen_ids[e.obj_id] = i, i
        if check_files and e.mesh is not None and not _is_file(e.mesh):
            raise _fail(path, f"objects[{i}].mesh", f"mesh file {e.mesh} does not exist")
    return entries


def load_objects_config(path: str | Path, *, max_faces: int | None = FACE_BUDGET) -> list[ObjectModel]:
    """Read ``path`` (config/objects.yaml) and load every object's mesh, in file order, as ObjectModels in metres.

    Meshes with more than ``max_faces`` faces (default :data:`~selfpose_core.mesh.loading.FACE_BUDGET`, what
    estimation, adaptation and pre-training need) are decimated to it with a warning; diameter and keypoints stay
    those of the full mesh. ``max_faces=None`` loads full resolution.

    Raises ConfigError for config mistakes (see :func:`read_objects_config`) and for category objects (no mesh to
    load: they are not estimated yet), and MeshError naming the config, the key and the mesh file when a mesh cannot
    be used.
    """
    models = []
    for i, e in enumerate(read_objects_config(path)):
        if e.mesh is None:
            raise _fail(Path(path), f"objects[{i}]", f"{e.name!r} is a category object (category: {e.category}, no "
                                                     "mesh); only objects with a mesh can be loaded and estimated "
                                                     "yet (docs/categories.md)")
        try:
            models.append(load_object_model(e.mesh, e.name, units=e.units, symmetry=e.symmetry,
                                            category=e.category, obj_id=e.obj_id, max_faces=max_faces))
        except MeshError as exc:
            raise MeshError(f"{Path(path)}: objects[{i}].mesh: {exc}") from exc
    return models


def write_objects_config(path: str | Path, entries: Sequence[ObjectEntry | Mapping[str, Any]]) -> Path:
    """Write an objects config to ``path``; mesh paths inside ``path``'s folder are stored relative to it.

    ``entries`` are :class:`ObjectEntry` or mappings with the config keys (``symmetry`` may be a
    :class:`Symmetry`). The result is validated as on reading (except that mesh files need not exist yet).
    """
    path = Path(path)
    out = []
    for i, entry in enumerate(entries):
        raw = dict(entry) if isinstance(entry, Mapping) else {
            "name": entry.name, "mesh": entry.mesh, "units": entry.units, "symmetry": entry.symmetry,
            "category": entry.category, "obj_id": entry.obj_id}
        if not isinstance(entry, Mapping) and entry.mesh is None:  # a category object: units, symmetry derived
            del raw["units"], raw["symmetry"]
        if isinstance(raw.get("symmetry"), Symmetry):
            raw["symmetry"] = symmetry_to_yaml(raw["symmetry"])
        raw = {k: int(v) if isinstance(v, np.integer) else v for k, v in raw.items() if v is not None}
        if "mesh" in raw:
            mesh = Path(str(raw["mesh"]))
            if mesh.is_absolute() and mesh.resolve().is_relative_to(path.parent.resolve()):
                mesh = mesh.resolve().relative_to(path.parent.resolve())
            raw["mesh"] = mesh.as_posix()
        _entry(path, i, raw)
        out.append(raw)
    names = [r["name"] for r in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: objects: duplicate names in {names}")
    ids = [r.get("obj_id", i + 1) for i, r in enumerate(out)]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: objects: duplicate obj_id in {ids}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"objects": out}, sort_keys=False, default_flow_style=None))
    return path
