"""Procedural triangle meshes for the embedded scene: surfaces of revolution, boxes, swept tubes, quads.

Every builder returns a :class:`PartMesh` in metres with per-vertex texture coordinates and smooth normals.
Vertices are duplicated along texture seams and sharp edges (so UVs and normals stay exact per face); the
geometry alone (``weld``) is a closed surface. Faces are wound counter-clockwise seen from outside (their
right-hand normal agrees with the vertex normals). Texture convention: ``u`` runs left to right over the image,
``v = 0`` is the bottom image row (as in OBJ/PLY).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfpose_core.errors import ShapeError


@dataclass(slots=True)
class PartMesh:
    """A triangle mesh with texture coordinates and vertex normals.

    vertices: (N, 3) float64 metres; faces: (F, 3) int64; uv: (N, 2) float64; normals: (N, 3) float64 unit.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.vertices)
        if self.vertices.shape != (n, 3) or self.uv.shape != (n, 2) or self.normals.shape != (n, 3):
            raise ShapeError(f"PartMesh arrays disagree: vertices {self.vertices.shape}, uv {self.uv.shape}, "
                             f"normals {self.normals.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ShapeError(f"PartMesh.faces must be (F, 3), got {self.faces.shape}")

    def transformed(self, T: np.ndarray) -> PartMesh:
        """The mesh moved by the rigid transform ``T`` (4, 4)."""
        R, t = T[:3, :3], T[:3, 3]
        return PartMesh(self.vertices @ R.T + t, self.faces.copy(), self.uv.copy(), self.normals @ R.T)

    def scaled(self, factor: float) -> PartMesh:
        """The mesh scaled uniformly by ``factor`` about the origin."""
        return PartMesh(self.vertices * factor, self.faces.copy(), self.uv.copy(), self.normals.copy())

    def with_uv(self, scale: tuple[float, float], offset: tuple[float, float]) -> PartMesh:
        """The mesh with texture coordinates mapped to ``uv * scale + offset`` (place a part in an atlas)."""
        return PartMesh(self.vertices, self.faces, self.uv * np.asarray(scale) + np.asarray(offset), self.normals)


def _orient(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Faces (F, 3) with degenerate ones removed and each wound so its geometric normal agrees with the vertex normals."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    fn = np.cross(b - a, c - a)
    area2 = np.linalg.norm(fn, axis=1)
    keep = area2 > 1e-14
    faces, fn = faces[keep], fn[keep]
    flip = np.einsum("fi,fi->f", fn, normals[faces].sum(axis=1)) < 0
    faces[flip] = faces[flip][:, ::-1]
    return faces


def merge(parts: list[PartMesh]) -> PartMesh:
    """Concatenate parts into one mesh (vertex indices offset)."""
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    return PartMesh(np.concatenate([p.vertices for p in parts]),
                    np.concatenate([p.faces + o for p, o in zip(parts, offsets)]).astype(np.int64),
                    np.concatenate([p.uv for p in parts]), np.concatenate([p.normals for p in parts]))


def weld(mesh: PartMesh, decimals: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Geometry only: vertices at the same position merged, degenerate faces dropped.

    Returns (vertices (M, 3), faces (F', 3)); for meshes built here this is a closed surface (the untextured CAD).
    """
    key = np.round(mesh.vertices, decimals)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    first = np.full(len(uniq), len(mesh.vertices), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(mesh.vertices)))
    faces = inverse[mesh.faces]
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return mesh.vertices[first], faces[ok].astype(np.int64)


def revolve(profile: np.ndarray, n_segments: int = 48, v: np.ndarray | None = None) -> PartMesh:
    """Surface of revolution about the z axis.

    Args:
        profile: (P, 2) points (r, z), r >= 0, traversed so that the solid lies on the left (bottom axis point,
            outwards, up, back to the axis). Repeat a point to make a sharp edge there (normals are not smoothed
            across a zero-length segment). End points with r = 0 close the surface.
        n_segments: facets around the axis.
        v: (P,) texture row of each profile point (default: z normalised to [0, 1]); u = angle / 2 pi.
    """
    profile = np.asarray(profile, dtype=np.float64)
    if profile.ndim != 2 or profile.shape[1] != 2 or len(profile) < 2:
        raise ShapeError(f"profile must be (P, 2) with P >= 2, got {profile.shape}")
    r, z = profile[:, 0], profile[:, 1]
    if v is None:
        v = (z - z.min()) / max(z.max() - z.min(), 1e-12)
    v = np.asarray(v, dtype=np.float64)
    d = np.diff(profile, axis=0)
    length = np.linalg.norm(d, axis=1)
    seg_n = np.stack([d[:, 1], -d[:, 0]], axis=1) / np.maximum(length, 1e-12)[:, None]  # outward (dr, dz) normal
    seg_n[length < 1e-12] = 0.0
    pn = np.zeros_like(profile)
    pn[:-1] += seg_n
    pn[1:] += seg_n
    pn /= np.maximum(np.linalg.norm(pn, axis=1, keepdims=True), 1e-12)
    theta = np.linspace(0.0, 2 * np.pi, n_segments + 1)
    c, s = np.cos(theta), np.sin(theta)
    P, S = len(profile), n_segments + 1
    verts = np.stack([r[:, None] * c, r[:, None] * s, np.broadcast_to(z[:, None], (P, S))], axis=-1).reshape(-1, 3)
    norms = np.stack([pn[:, :1] * c, pn[:, :1] * s, np.broadcast_to(pn[:, 1:], (P, S))], axis=-1).reshape(-1, 3)
    uv = np.stack([np.broadcast_to(theta / (2 * np.pi), (P, S)), np.broadcast_to(v[:, None], (P, S))],
                  axis=-1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(P - 1), np.arange(n_segments), indexing="ij")
    a, b = i * S + j, i * S + j + 1
    cc, dd = (i + 1) * S + j + 1, (i + 1) * S + j
    faces = np.concatenate([np.stack([a, b, cc], -1).reshape(-1, 3), np.stack([a, cc, dd], -1).reshape(-1, 3)])
    return PartMesh(verts, _orient(verts, faces.astype(np.int64), norms), uv, norms)


def box(size: tuple[float, float, float], center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> PartMesh:
    """Axis-aligned box of ``size`` = (W, D, H) along (x, y, z) with UVs laid out as a net.

    The net (see :func:`box_net_cells`) puts the faces -y (front), +x, +y, -x side by side in the middle row, +z
    above the front and -z below it, with their true proportions.
    """
    W, D, H = (float(x) for x in size)
    cells = box_net_cells(size)
    corners = {  # face: (origin, axis_u, axis_v, normal), origin = bottom-left corner seen from outside
        "front": ((-W / 2, -D / 2, -H / 2), (W, 0, 0), (0, 0, H), (0, -1, 0)),
        "right": ((W / 2, -D / 2, -H / 2), (0, D, 0), (0, 0, H), (1, 0, 0)),
        "back": ((W / 2, D / 2, -H / 2), (-W, 0, 0), (0, 0, H), (0, 1, 0)),
        "left": ((-W / 2, D / 2, -H / 2), (0, -D, 0), (0, 0, H), (-1, 0, 0)),
        "top": ((-W / 2, -D / 2, H / 2), (W, 0, 0), (0, D, 0), (0, 0, 1)),
        "bottom": ((-W / 2, D / 2, -H / 2), (W, 0, 0), (0, -D, 0), (0, 0, -1)),
    }
    parts = []
    for name, (o, au, av, n) in corners.items():
        u0, v0, u1, v1 = cells[name]
        parts.append(quad(np.asarray(o) + np.asarray(center), np.asarray(au, float), np.asarray(av, float),
                          uv_rect=(u0, v0, u1, v1)))
    return merge(parts)


def box_net_cells(size: tuple[float, float, float]) -> dict[str, tuple[float, float, float, float]]:
    """UV rectangles (u0, v0, u1, v1) of the six faces of :func:`box` (v = 0 at the bottom of the texture)."""
    W, D, H = (float(x) for x in size)
    tw, th = 2 * W + 2 * D, H + 2 * D
    xs = np.cumsum([0.0, W, D, W, D]) / tw
    mid = (D / th, (D + H) / th)
    return {"front": (xs[0], mid[0], xs[1], mid[1]), "right": (xs[1], mid[0], xs[2], mid[1]),
            "back": (xs[2], mid[0], xs[3], mid[1]), "left": (xs[3], mid[0], xs[4], mid[1]),
            "top": (xs[0], mid[1], xs[1], 1.0), "bottom": (xs[0], 0.0, xs[1], mid[0])}


def quad(origin: np.ndarray, axis_u: np.ndarray, axis_v: np.ndarray,
         uv_rect: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> PartMesh:
    """Planar rectangle ``origin + s axis_u + t axis_v`` (s, t in [0, 1]), facing ``axis_u x axis_v``."""
    o, au, av = (np.asarray(x, dtype=np.float64) for x in (origin, axis_u, axis_v))
    verts = np.stack([o, o + au, o + au + av, o + av])
    n = np.cross(au, av)
    n = np.broadcast_to(n / np.linalg.norm(n), (4, 3)).copy()
    u0, v0, u1, v1 = uv_rect
    uv = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)
    return PartMesh(verts, _orient(verts, np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64), n), uv, n)


def sweep_tube(path: np.ndarray, radius: float, n_sides: int = 16,
               binormal: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> PartMesh:
    """Closed tube of circular cross-section swept along a planar polyline, with flat end caps.

    Args:
        path: (P, 3) centre line, lying in the plane whose normal is ``binormal``; its curvature radius must
            exceed ``radius`` (no self-intersection).
        radius: tube radius in metres. n_sides: facets around the tube.
    UVs: u along the path (arc length), v around the tube; caps map to the point (u_end, 0.5).
    """
    path = np.asarray(path, dtype=np.float64)
    if path.ndim != 2 or path.shape[1] != 3 or len(path) < 2:
        raise ShapeError(f"path must be (P, 3) with P >= 2, got {path.shape}")
    b = np.asarray(binormal, dtype=np.float64)
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    nrm = np.cross(b, tang)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    phi = np.linspace(0.0, 2 * np.pi, n_sides + 1)
    ring_n = np.cos(phi)[None, :, None] * nrm[:, None] + np.sin(phi)[None, :, None] * b[None, None]
    P, S = len(path), n_sides + 1
    verts = (path[:, None] + radius * ring_n).reshape(-1, 3)
    norms = ring_n.reshape(-1, 3)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    uv = np.stack([np.broadcast_to((arc / arc[-1])[:, None], (P, S)),
                   np.broadcast_to(phi / (2 * np.pi), (P, S))], -1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(P - 1), np.arange(n_sides), indexing="ij")
    a, bb = i * S + j, i * S + j + 1
    cc, dd = (i + 1) * S + j + 1, (i + 1) * S + j
    faces = np.concatenate([np.stack([a, bb, cc], -1).reshape(-1, 3), np.stack([a, cc, dd], -1).reshape(-1, 3)])
    tube = PartMesh(verts, _orient(verts, faces.astype(np.int64), norms), uv, norms)
    caps = []
    for end, sign in ((0, -1.0), (P - 1, 1.0)):
        ring = path[end] + radius * ring_n[end, :-1]
        cv = np.concatenate([path[end][None], ring])
        cn = np.broadcast_to(sign * tang[end], cv.shape).copy()
        k = np.arange(n_sides)
        cf = np.stack([np.zeros(n_sides, dtype=np.int64), 1 + k, 1 + (k + 1) % n_sides], -1)
        cuv = np.broadcast_to([uv[end * S, 0], 0.5], (len(cv), 2)).copy()
        caps.append(PartMesh(cv, _orient(cv, cf, cn), cuv, cn))
    return merge([tube] + caps)


def rounded_c_path(x0: float, x1: float, z_bottom: float, z_top: float, corner: float,
                   samples_per_corner: int = 10) -> np.ndarray:
    """(P, 3) centre line of a "C"-shaped handle in the x-z plane (y = 0): from (x0, z_top) out to x1, down to
    z_bottom and back to x0, with quarter-circle corners of radius ``corner``."""
    a = np.linspace(0.0, np.pi / 2, samples_per_corner)
    top = np.stack([x1 - corner + corner * np.sin(a), z_top - corner + corner * np.cos(a)], 1)
    bot = np.stack([x1 - corner + corner * np.cos(a), z_bottom + corner - corner * np.sin(a)], 1)
    n_side = max(2, samples_per_corner // 2)
    pts = np.concatenate([np.stack([np.linspace(x0, x1 - corner, n_side, endpoint=False),
                                    np.full(n_side, z_top)], 1), top,
                          np.stack([np.full(n_side, x1), np.linspace(z_top - corner, z_bottom + corner,
                                                                      n_side + 2)[1:-1]], 1), bot,
                          np.stack([np.linspace(x1 - corner, x0, n_side + 1)[1:], np.full(n_side, z_bottom)], 1)])
    return np.stack([pts[:, 0], np.zeros(len(pts)), pts[:, 1]], 1)
