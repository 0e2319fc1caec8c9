"""Object meshes: load PLY/OBJ/GLB files into :class:`ObjectModel` (metres), save them, decimate them for rendering.

Units rule (``units="auto"``): selfpose is about household objects, which are between about 1 cm and 1.5 m
across. A mesh whose axis-aligned bounding-box diagonal exceeds :data:`MM_DIAGONAL_THRESHOLD` (3 file units) is
therefore taken to be in millimetres (BOP, most CAD exports) and scaled by 1e-3, with a warning naming the file.
After conversion the diagonal must lie in [:data:`MIN_DIAGONAL_M`, :data:`MAX_DIAGONAL_M`] metres, whatever the
units, otherwise the file is rejected (a 300 m "mug" is a unit error, not an object).

Texture coordinates follow the OBJ/OpenGL convention that trimesh returns for every format: ``v = 0`` is the
bottom row of the texture image.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from selfpose_core.errors import MeshError, ShapeError
from selfpose_core.mesh.keypoints import farthest_point_keypoints
from selfpose_core.mesh.measures import bbox_diagonal, mesh_diameter
from selfpose_core.types import ObjectModel, Symmetry

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".stl", ".off")
SAVE_SUFFIXES = (".ply", ".obj", ".glb")
UNITS = ("auto", "m", "mm")
MM_DIAGONAL_THRESHOLD = 3.0  # file units; larger -> millimetres under units="auto"
MIN_DIAGONAL_M = 1e-3
MAX_DIAGONAL_M = 10.0
N_KEYPOINTS = 8


def _material_texture(material: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(texture (H, W, 3) uint8 or None, uniform RGB colour (3,) uint8 or None) of a trimesh material."""
    image = getattr(material, "baseColorTexture", None)
    colour = getattr(material, "baseColorFactor", None)
    if image is None and hasattr(material, "image"):
        image = material.image
        # trimesh fills a material without a texture file with a 2x2 single-colour placeholder image
        if image is not None and image.size[0] * image.size[1] <= 4:
            return None, None
        if image is None:
            colour = getattr(material, "diffuse", None)
    if image is not None:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)), None
    if colour is not None:
        return None, np.asarray(colour, dtype=np.float64).reshape(-1)[:3].astype(np.uint8)
    return None, None


def _visual_arrays(mesh: object, n_vertices: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(vertex_colors (N, 3) uint8, uv (N, 2), texture (H, W, 3) uint8) of a trimesh mesh, each None if absent."""
    visual = mesh.visual
    kind = visual.kind
    if kind == "texture":
        uv = None if visual.uv is None else np.asarray(visual.uv, dtype=np.float64)
        if uv is not None and uv.shape != (n_vertices, 2):
            uv = None
        texture, colour = _material_texture(visual.material)
        if texture is not None and uv is not None:
            return None, uv, texture
        colours = None if colour is None else np.tile(colour, (n_vertices, 1))
        return colours, uv, None
    if kind in ("vertex", "face"):
        return np.ascontiguousarray(np.asarray(visual.vertex_colors)[:, :3], dtype=np.uint8), None, None
    return None, None, None


def _read_trimesh(path: Path) -> object:
    """Load ``path`` with trimesh as one Trimesh (scenes flattened with their node transforms applied)."""
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise MeshError(f"cannot read mesh file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
        if not parts:
            raise MeshError(f"mesh file {path} has no faces (a scene without triangle meshes)")
        loaded = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"mesh file {path} has no faces (it loads as a {type(loaded).__name__})")
    return loaded


def _unit_scale(diag: float, units: str, path: Path) -> float:
    """Scale from file units to metres for a mesh whose bounding-box diagonal is ``diag`` file units."""
    if units == "auto":
        scale = 1e-3 if diag > MM_DIAGONAL_THRESHOLD else 1.0
        if scale != 1.0:
            log.warning("mesh %s: bounding-box diagonal %.4g > %.0f units, taking it as millimetres "
                        "(set units: m to keep it)", path, diag, MM_DIAGONAL_THRESHOLD)
    else:
        scale = 1e-3 if units == "mm" else 1.0
    diag_m = diag * scale
    if not MIN_DIAGONAL_M <= diag_m <= MAX_DIAGONAL_M:
        hint = {"m": " (is it in millimetres? set units: mm)" if diag_m > MAX_DIAGONAL_M else "",
                "mm": " (is it in metres? set units: m)" if diag_m < MIN_DIAGONAL_M else ""}.get(units, "")
        raise MeshError(f"mesh file {path}: bounding-box diagonal {diag:.4g} file units = {diag_m:.4g} m with "
                        f"units={units}, outside the plausible {MIN_DIAGONAL_M:g}..{MAX_DIAGONAL_M:g} m{hint}")
    return scale


def load_object_model(path: str | Path, name: str, *, units: str = "auto", symmetry: Symmetry | None = None,
                      category: str | None = None, obj_id: int = 1) -> ObjectModel:
    """Load a mesh file (PLY/OBJ/GLB/glTF/STL/OFF) as an :class:`ObjectModel` in metres.

    Multi-mesh scenes (GLB/glTF, OBJ with several groups) are flattened into one mesh. Vertex colours, or UV
    coordinates with the base-colour texture image, are kept when the file has them. ``units`` is ``"auto"``
    (millimetres detected, see the module docstring), ``"m"`` or ``"mm"``.

    Raises:
        MeshError naming the file: missing, unreadable, no faces, NaN/inf vertices, implausible size.
    """
    path = Path(path).expanduser()
    if units not in UNITS:
        raise MeshError(f"mesh file {path}: units must be one of {UNITS}, got {units!r}")
    if not path.is_file():
        raise MeshError(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"mesh file {path}: unsupported format {path.suffix!r} (supported: {', '.join(MESH_SUFFIXES)})")
    mesh = _read_trimesh(path)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0 or len(vertices) == 0:
        raise MeshError(f"mesh file {path} has no faces (a point cloud or an empty mesh)")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise MeshError(f"mesh file {path} has {bad} vertices with NaN/inf coordinates")
    scale = _unit_scale(bbox_diagonal(vertices), units, path)
    colors, uv, texture = _visual_arrays(mesh, len(vertices))
    try:
        return object_model_from_arrays(name, vertices * scale, faces, vertex_colors=colors, uv=uv, texture=texture,
                                        symmetry=symmetry, obj_id=obj_id, category=category,
                                        source_path=str(path))
    except ShapeError as exc:
        raise MeshError(f"mesh file {path}: {exc}") from exc


def object_model_from_arrays(name: str, vertices: np.ndarray, faces: np.ndarray, *,
                             vertex_colors: np.ndarray | None = None, uv: np.ndarray | None = None,
                             texture: np.ndarray | None = None, symmetry: Symmetry | None = None, obj_id: int = 1,
                             category: str | None = None, source_path: str | None = None) -> ObjectModel:
    """Build an :class:`ObjectModel` from arrays in metres, computing its diameter and keypoints.

    Args:
        vertices: (N, 3) metres. faces: (F, 3) vertex indices. vertex_colors: (N, 3) uint8 RGB (or (N, 4), alpha
        dropped). uv: (N, 2) texture coordinates (v = 0 at the bottom image row). texture: (H, W, 3) uint8 RGB.

    The diameter is the exact largest vertex distance; the keypoints are 8 farthest-point-sampled vertices
    followed by the bounding-box centre, (9, 3).
    """
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ShapeError(f"vertices must have shape (N, 3) with N > 0, got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ShapeError(f"faces must have shape (F, 3) with F > 0, got {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ShapeError(f"faces index vertices {f.min()}..{f.max()} but there are {len(v)} vertices")
    if not np.isfinite(v).all():
        raise ShapeError("vertices contain NaN/inf")
    if vertex_colors is not None:
        vertex_colors = np.asarray(vertex_colors)
        if vertex_colors.ndim != 2 or vertex_colors.shape[0] != len(v) or vertex_colors.shape[1] not in (3, 4):
            raise ShapeError(f"vertex_colors must have shape ({len(v)}, 3), got {vertex_colors.shape}")
        vertex_colors = np.ascontiguousarray(vertex_colors[:, :3], dtype=np.uint8)
    if uv is not None:
        uv = np.ascontiguousarray(uv, dtype=np.float64)
        if uv.shape != (len(v), 2):
            raise ShapeError(f"uv must have shape ({len(v)}, 2), got {uv.shape}")
    if texture is not None:
        texture = np.asarray(texture)
        if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
            raise ShapeError(f"texture must be uint8 (H, W, 3), got {texture.dtype} {texture.shape}")
    lo, hi = v.min(axis=0), v.max(axis=0)
    keypoints = np.concatenate([farthest_point_keypoints(v, N_KEYPOINTS), ((lo + hi) / 2)[None]], axis=0)
    return ObjectModel(name=name, vertices=v, faces=f, diameter=mesh_diameter(v),
                       symmetry=symmetry if symmetry is not None else Symmetry(), keypoints=keypoints,
                       obj_id=int(obj_id), category=category, vertex_colors=vertex_colors, uv=uv, texture=texture,
                       source_path=source_path)


def _ply_bytes(model: ObjectModel, scale: float, texture_file: str | None) -> bytes:
    """A binary little-endian PLY in the layout BOP models use (x y z [nx ny nz] [red green blue] [texture_u v])."""
    n = len(model.vertices)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if model.vertex_colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if texture_file is not None:
        fields += [("texture_u", "<f4"), ("texture_v", "<f4")]
    vert = np.empty(n, dtype=fields)
    xyz = model.vertices * scale
    vert["x"], vert["y"], vert["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if model.vertex_colors is not None:
        vert["red"], vert["green"], vert["blue"] = model.vertex_colors.T
    if texture_file is not None:
        vert["texture_u"], vert["texture_v"] = model.uv[:, 0], model.uv[:, 1]
    face = np.empty(len(model.faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"] = 3
    face["idx"] = model.faces
    ply_type = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment created by selfpose"]
    if texture_file is not None:
        header.append(f"comment TextureFile {texture_file}")
    header.append(f"element vertex {n}")
    header += [f"property {ply_type[t]} {name}" for name, t in fields]
    header += [f"element face {len(model.faces)}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()


def save_mesh(model: ObjectModel, path: str | Path, mm: bool = False) -> Path:
    """Write ``model``'s mesh to ``path`` (.ply, .obj or .glb by suffix) in metres, or millimetres if ``mm``.

    PLY is written in BOP's layout (binary, float32 coordinates, ``red/green/blue`` vertex colours, or
    ``texture_u/texture_v`` plus a ``TextureFile`` comment naming a PNG written next to it). OBJ (with .mtl and
    texture PNG) and GLB are written by trimesh. Returns the path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise MeshError(f"cannot save mesh to {path}: format {path.suffix!r} not supported ({', '.join(SAVE_SUFFIXES)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 1e3 if mm else 1.0
    textured = model.texture is not None and model.uv is not None
    if suffix == ".ply":
        texture_file = None
        if textured:
            import cv2

            texture_file = path.with_suffix(".png").name
            if not cv2.imwrite(str(path.with_suffix(".png")), model.texture[:, :, ::-1]):
                raise MeshError(f"cannot write texture image {path.with_suffix('.png')}")
        path.write_bytes(_ply_bytes(model, scale, texture_file))
        return path
    import trimesh
    from PIL import Image

    if textured:
        # material named after the file, so that several OBJs in one folder get their own .mtl and texture
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(model.texture), name=path.stem)
        visual = trimesh.visual.TextureVisuals(uv=model.uv, material=material)
    elif model.vertex_colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=model.vertex_colors)
    else:
        visual = None
    mesh = trimesh.Trimesh(model.vertices * scale, model.faces, visual=visual, process=False)
    try:
        if suffix == ".obj":
            text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=f"{path.stem}.mtl")
            for name, data in files.items():
                (path.parent / name).write_bytes(data)
            path.write_text(text)
        else:
            mesh.export(str(path))
    except (OSError, ValueError) as exc:
        raise MeshError(f"cannot write mesh file {path}: {exc}") from exc
    return path


def decimate(model: ObjectModel, max_faces: int) -> ObjectModel:
    """A copy of ``model`` with at most about ``max_faces`` triangles, for fast rendering (``model`` if already small).

    Quadric error decimation (Garland & Heckbert 1997, Open3D's implementation) with boundary edges weighted so
    that closed meshes stay closed; degenerate and duplicated triangles are removed afterwards. Colours and UVs
    are carried over from the nearest original vertex (texture seams may show small artefacts). Diameter and
    keypoints are recomputed; name, id, category, symmetry and texture image are kept.
    """
    if max_faces < 4:
        raise MeshError(f"decimate {model.name}: max_faces must be at least 4, got {max_faces}")
    if len(model.faces) <= max_faces:
        return model
    import open3d as o3d
    from scipy.spatial import cKDTree

    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(model.vertices),
                                     o3d.utility.Vector3iVector(model.faces.astype(np.int32)))
    mesh.remove_duplicated_vertices()  # weld UV/colour seams so that decimation sees one surface
    simple = mesh.simplify_quadric_decimation(target_number_of_triangles=int(max_faces), boundary_weight=10.0)
    simple.remove_degenerate_triangles()
    simple.remove_duplicated_triangles()
    simple.remove_unreferenced_vertices()
    vertices = np.asarray(simple.vertices, dtype=np.float64)
    faces = np.asarray(simple.triangles, dtype=np.int64)
    if len(faces) == 0:
        raise MeshError(f"decimate {model.name}: nothing left after decimating to {max_faces} faces")
    nearest = cKDTree(model.vertices).query(vertices)[1]
    textured = model.uv is not None and model.texture is not None
    return object_model_from_arrays(
        model.name, vertices, faces,
        vertex_colors=None if model.vertex_colors is None else model.vertex_colors[nearest],
        uv=None if model.uv is None else model.uv[nearest], texture=model.texture if textured else None,
        symmetry=model.symmetry, obj_id=model.obj_id, category=model.category, source_path=model.source_path)
