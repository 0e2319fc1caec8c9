"""Object meshes: load PLY/OBJ/GLB files into :class:`ObjectModel` (metres), save them, decimate them for rendering.

Units rule (``units="auto"``): selfpose is about household objects, which are between about 1 cm and 1.5 m
across. A mesh whose axis-aligned bounding-box diagonal exceeds :data:`MM_DIAGONAL_THRESHOLD` (3 file units) is
therefore taken to be in millimetres (BOP, most CAD exports) and scaled by 1e-3, with a warning naming the file.
After conversion the diagonal must lie in [:data:`MIN_DIAGONAL_M`, :data:`MAX_DIAGONAL_M`] metres, whatever the
units, otherwise the file is rejected (a 300 m "mug" is a unit error, not an object). Sizes that are possible but
suspicious warn with the value: a diagonal above :data:`LARGE_DIAGONAL_M` taken as metres (a 2.6 mm part in a
millimetre file reads as a 2.6 m object) and one below :data:`SMALL_DIAGONAL_M` (a tiny part, or a metre file
read as millimetres).

Size limits: a file above :data:`MAX_MESH_FILE_BYTES` or with more than :data:`MAX_MESH_FACES` faces is refused (a
PLY's face count is read from its header before the file is loaded). ``load_object_model(max_faces=N)`` (the
objects config passes :data:`FACE_BUDGET`) decimates a larger mesh to N faces with a warning naming the budget;
its diameter and keypoints stay those of the full-resolution mesh. Diameter, areas and surface sampling work in
chunks, so a 5-million-face mesh loads in well under 2 GB (``selfpose bench mesh_budget`` measures it).

Texture coordinates follow the OBJ/OpenGL convention that trimesh returns for every format: ``v = 0`` is the
bottom row of the texture image.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from selfpose_core.config_io import one_line
from selfpose_core.errors import MeshError, ShapeError
from selfpose_core.mesh.keypoints import farthest_point_keypoints
from selfpose_core.mesh.measures import FACE_CHUNK, bbox_diagonal, face_areas, mesh_diameter
from selfpose_core.types import ObjectModel, Symmetry

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".stl", ".off")
SAVE_SUFFIXES = (".ply", ".obj", ".glb")
UNITS = ("auto", "m", "mm")
MM_DIAGONAL_THRESHOLD = 3.0  # file units; larger -> millimetres under units="auto"
MIN_DIAGONAL_M = 1e-3
MAX_DIAGONAL_M = 10.0
LARGE_DIAGONAL_M = 1.5  # warn above (under units="auto": maybe a millimetre file of a tiny part)
SMALL_DIAGONAL_M = 0.01  # warn below
FACE_BUDGET = 100_000  # faces kept by the objects config's loader (estimate, adapt, pretrain); larger: decimated
MAX_MESH_FACES = 10_000_000  # refused above
MAX_MESH_FILE_BYTES = 1 << 30  # refused above (1 GiB)
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


def _ply_face_count(path: Path) -> int | None:
    """The face count a PLY file declares in its header (None for other files or an unreadable header)."""
    if path.suffix.lower() != ".ply":
        return None
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    for line in head[:end if end >= 0 else len(head)].split(b"\n"):
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"element" and parts[1] == b"face":
            try:
                return int(parts[2])
            except ValueError:
                return None
    return None


def _read_trimesh(path: Path) -> object:
    """Load ``path`` with trimesh as one Trimesh (scenes flattened with their node transforms applied)."""
    import trimesh

    try:
        size = path.stat().st_size
        declared = _ply_face_count(path)
    except OSError as exc:
        raise MeshError(f"cannot read mesh file {path}: {exc.strerror or type(exc).__name__}") from None
    if size > MAX_MESH_FILE_BYTES:
        raise MeshError(f"mesh file {path}: {size} bytes, more than the {MAX_MESH_FILE_BYTES} bytes selfpose reads "
                        "(decimate it first, e.g. to 100k faces)")
    if declared is not None and declared > MAX_MESH_FACES:
        raise MeshError(f"mesh file {path}: {declared} faces, more than the {MAX_MESH_FACES} selfpose reads "
                        "(decimate it first, e.g. to 100k faces)")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files (MemoryError for absurd headers)
        raise MeshError(f"cannot read mesh file {path}: {type(exc).__name__}: {one_line(str(exc))}") from exc
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
    if diag_m > LARGE_DIAGONAL_M:
        hint = (f"; if the file is in millimetres this is a {diag:.3g} mm part: set units: mm" if units == "auto"
                else "")
        log.warning("mesh %s: bounding-box diagonal %.4g m (units=%s) is large for a household object%s",
                    path, diag_m, units, hint)
    elif diag_m < SMALL_DIAGONAL_M:
        log.warning("mesh %s: bounding-box diagonal %.4g m (units=%s): a part this small is hard to see; "
                    "check the units", path, diag_m, units)
    return scale


def _check_faces(vertices: np.ndarray, faces: np.ndarray, diag: float, path: Path) -> None:
    """MeshError when ``faces`` index outside ``vertices`` or all have zero area (chunked: O(F) memory)."""
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"mesh file {path}: faces index vertices {faces.min()}..{faces.max()} but there are "
                        f"{len(vertices)} vertices")
    tiny = 1e-12 * diag * diag
    largest = max(float(face_areas(vertices, faces[s:s + FACE_CHUNK]).max())
                  for s in range(0, len(faces), FACE_CHUNK))
    if not largest > tiny:
        raise MeshError(f"mesh file {path}: all {len(faces)} faces have zero area (a degenerate mesh: collapsed "
                        "or collinear vertices)")


def load_object_model(path: str | Path, name: str, *, units: str = "auto", symmetry: Symmetry | None = None,
                      category: str | None = None, obj_id: int = 1, max_faces: int | None = None) -> ObjectModel:
    """Load a mesh file (PLY/OBJ/GLB/glTF/STL/OFF) as an :class:`ObjectModel` in metres.

    Multi-mesh scenes (GLB/glTF, OBJ with several groups) are flattened into one mesh. Vertex colours, or UV
    coordinates with the base-colour texture image, are kept when the file has them. ``units`` is ``"auto"``
    (millimetres detected, see the module docstring), ``"m"`` or ``"mm"``. ``max_faces``: a mesh with more faces
    is decimated to that many (see :func:`decimate_to_budget`), with a warning naming the budget; None keeps the
    full resolution.

    Raises:
        MeshError naming the file: missing, unreadable, too large, no faces, NaN/inf vertices, all faces of zero
        area, implausible size.
    """
    path = Path(path).expanduser()
    if units not in UNITS:
        raise MeshError(f"mesh file {path}: units must be one of {UNITS}, got {units!r}")
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # a name the OS refuses
        exists = False
    if not exists:
        raise MeshError(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise MeshError(f"mesh file {path}: unsupported format {path.suffix!r} (supported: {', '.join(MESH_SUFFIXES)})")
    if max_faces is not None and max_faces < 4:
        raise MeshError(f"mesh file {path}: max_faces must be at least 4, got {max_faces}")
    mesh = _read_trimesh(path)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0 or len(vertices) == 0:
        raise MeshError(f"mesh file {path} has no faces (a point cloud or an empty mesh)")
    if len(faces) > MAX_MESH_FACES:
        raise MeshError(f"mesh file {path}: {len(faces)} faces, more than the {MAX_MESH_FACES} selfpose reads "
                        "(decimate it first, e.g. to 100k faces)")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(axis=1).sum())
        raise MeshError(f"mesh file {path} has {bad} vertices with NaN/inf coordinates")
    diag = bbox_diagonal(vertices)
    _check_faces(vertices, faces, diag, path)
    scale = _unit_scale(diag, units, path)
    colors, uv, texture = _visual_arrays(mesh, len(vertices))
    del mesh
    if scale != 1.0:
        vertices = vertices * scale
    try:
        if max_faces is not None and len(faces) > max_faces:
            log.warning("mesh %s: %d faces, above the face budget of %d: decimated to %d for this job (diameter "
                        "and keypoints from the full mesh)", path, len(faces), max_faces, max_faces)
            return decimate_to_budget(name, vertices, faces, max_faces, vertex_colors=colors, uv=uv,
                                      texture=texture, symmetry=symmetry, obj_id=obj_id, category=category,
                                      source_path=str(path))
        return object_model_from_arrays(name, vertices, faces, vertex_colors=colors, uv=uv, texture=texture,
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


def cluster_vertices(vertices: np.ndarray, faces: np.ndarray, cell: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertex clustering (Rossignac & Borrel 1993): vertices in one cubic grid cell of size ``cell`` merge into
    their mean; faces that collapse and repeated faces are dropped.

    Args:
        vertices: (V, 3); faces: (F, 3) int; cell: grid cell size in the vertices' units.

    Returns:
        (vertices (C, 3), faces (F', 3) into them, representative (C,): an original vertex index per new vertex,
        for carrying colours/UVs over). Faces are processed ``FACE_CHUNK`` at a time; memory is O(V + F') beyond
        the input. Fast and robust on any mesh, coarser than quadric decimation: used to bring huge meshes near
        the face budget before :func:`decimate`.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    cells = np.floor((v - v.min(axis=0)) / cell).astype(np.int64)
    dims = cells.max(axis=0) + 1
    key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    del cells
    _, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    n = int(inv.max()) + 1
    kept = []
    for s in range(0, len(f), FACE_CHUNK):
        g = inv[f[s:s + FACE_CHUNK]]
        kept.append(g[(g[:, 0] != g[:, 1]) & (g[:, 1] != g[:, 2]) & (g[:, 0] != g[:, 2])])
    new_faces = np.concatenate(kept) if kept else np.zeros((0, 3), np.int64)
    if len(new_faces):
        srt = np.sort(new_faces, axis=1)
        if n <= 2_000_000:  # n**3 fits in int64
            _, first = np.unique((srt[:, 0] * n + srt[:, 1]) * n + srt[:, 2], return_index=True)
        else:
            _, first = np.unique(srt, axis=0, return_index=True)
        new_faces = new_faces[np.sort(first)]
    used = np.zeros(n, dtype=bool)
    used[new_faces.reshape(-1)] = True
    counts = np.bincount(inv, minlength=n).astype(np.float64)
    means = np.stack([np.bincount(inv, weights=v[:, d], minlength=n) for d in range(3)], axis=1) / counts[:, None]
    rep = np.zeros(n, dtype=np.int64)
    rep[inv] = np.arange(len(v))
    remap = np.cumsum(used) - 1
    return means[used], remap[new_faces], rep[used]


def decimate_to_budget(name: str, vertices: np.ndarray, faces: np.ndarray, max_faces: int, *,
                       vertex_colors: np.ndarray | None = None, uv: np.ndarray | None = None,
                       texture: np.ndarray | None = None, symmetry: Symmetry | None = None, obj_id: int = 1,
                       category: str | None = None, source_path: str | None = None) -> ObjectModel:
    """An :class:`ObjectModel` of the mesh (arrays in metres) with at most about ``max_faces`` faces, whose
    diameter and keypoints are those of the full-resolution mesh (exact, computed in chunks).

    Meshes above 2x the budget are first vertex-clustered (:func:`cluster_vertices`, cell size from the surface
    area) to at most about 2x; quadric decimation (:func:`decimate`) takes the rest. Colours/UVs follow the
    representative original vertex.
    """
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    diameter = mesh_diameter(v)
    lo, hi = v.min(axis=0), v.max(axis=0)
    keypoints = np.concatenate([farthest_point_keypoints(v, N_KEYPOINTS), ((lo + hi) / 2)[None]], axis=0)
    rep = None
    if len(f) > 2 * max_faces:
        area = float(face_areas(v, f).sum())
        cell = float(np.sqrt(area / max_faces))
        for _ in range(6):
            cv, cf, crep = cluster_vertices(v, f, cell)
            if len(cf) <= 2 * max_faces and len(cf) >= 4:
                break
            cell *= float(np.sqrt(max(len(cf), 1) / max_faces)) if len(cf) > 2 * max_faces else 0.5
        if not 4 <= len(cf) <= 2 * max_faces:
            raise MeshError(f"mesh {source_path or name}: cannot decimate {len(f)} faces to the budget of {max_faces}")
        v, f, rep = cv, cf, crep
    if rep is not None:
        vertex_colors = None if vertex_colors is None else np.asarray(vertex_colors)[rep]
        uv = None if uv is None else np.asarray(uv)[rep]
    model = object_model_from_arrays(name, v, f, vertex_colors=vertex_colors, uv=uv, texture=texture,
                                     symmetry=symmetry, obj_id=obj_id, category=category, source_path=source_path)
    model = decimate(model, max_faces)
    model.diameter, model.keypoints = diameter, keypoints
    return model
