"""Shape families of the six NOCS categories: parametric, seeded, no download (docs/categories.md).

``instance(category, index, seed)`` draws the shape parameters of instance ``index`` of a category from its own
generator (``numpy.random.default_rng([seed, category number, index])``), so an instance never depends on which
others were made. Training instances are indices ``0, 1, ...``; held-out instances start at
:data:`HELDOUT_START`, so no parameter draw of a held-out instance is ever one of the training family's.

Every instance is a union of parts (revolved profiles, rounded boxes, swept tubes), each a closed outward-wound
surface once welded; parts may overlap (a mug's handle ends inside its wall), so the solid is their union and its
signed distance the minimum over the parts. Meshes are in metres in the NOCS frame of
``selfpose_core.mesh.categories`` (y up, origin at the box centre). The parts are built z-up (the builders of
``shapes.py``) and turned into that frame by ``T_ZUP_NOCS^-1``. ``CategoryInstance.sdf`` gives signed distances (the
samples a DeepSDF prior trains on).

| category | parts | what varies |
|----------|-------|-------------|
| bottle | one revolved profile | height 16-30 cm, radius, shoulder height and roundness, neck, waist, one- or two-tier cap |
| bowl | one revolved thick wall | rim radius 5.5-9.5 cm, depth, base width, wall profile (round to flat-sided), thickness, foot ring |
| can | one revolved profile | radius 2.6-4.5 cm, height 6.5-16 cm, bevels, tapered neck, recessed lid |
| camera | rounded body + lens + grip + viewfinder + button | body 9-14 cm wide, corner radius, lens radius / length / position / second ring, grip, viewfinder hump |
| laptop | rounded base + rounded screen | width 28-40 cm, depth, thicknesses, hinge (opening) angle 70-135 deg |
| mug | revolved cup + swept handle | radius 3.5-5.5 cm, height 7.5-12 cm, taper, belly, wall and bottom thickness, handle span / reach / corners / thickness |
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy.spatial import ConvexHull

from selfpose_core.data.sim.shapes import PartMesh, merge, revolve, sweep_tube, weld
from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.mesh.categories import CATEGORIES, T_ZUP_NOCS, category_symmetry, nocs_scale, nocs_size
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import ObjectModel, Symmetry

HELDOUT_START = 1_000_000  # first index of the held-out instances; training indices lie below it
SEGMENTS = 48  # facets around revolved parts


@dataclass(slots=True)
class CategoryInstance:
    """One shape of a category family: parts (NOCS frame, metres) and the parameters they were built from."""

    category: str
    index: int
    seed: int
    parts: list[PartMesh]
    params: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<category>_<index>``, e.g. ``mug_1000003``."""
        return f"{self.category}_{self.index}"

    @property
    def heldout(self) -> bool:
        """True for instances of the held-out range (never among the training instances)."""
        return self.index >= HELDOUT_START

    @property
    def mesh(self) -> PartMesh:
        """All parts in one textured-ready mesh (UVs and normals kept per part)."""
        return merge(self.parts)

    @property
    def size(self) -> np.ndarray:
        """(3,) extents of the tight box in the NOCS frame, metres (the NOCS size)."""
        return nocs_size(np.concatenate([p.vertices for p in self.parts]))

    @property
    def scale(self) -> float:
        """The NOCS scale: the diagonal of the tight box, metres."""
        return nocs_scale(np.concatenate([p.vertices for p in self.parts]))

    @property
    def symmetry(self) -> Symmetry:
        return category_symmetry(self.category)

    def trimesh(self) -> trimesh.Trimesh:
        """The welded geometry (closed surface, parts possibly overlapping) as a trimesh."""
        v, f = weld(self.mesh)
        return trimesh.Trimesh(v, f, process=False)

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (N,) in metres from ``points`` (N, 3) in the NOCS frame to the solid, negative inside.

        The minimum over the parts' signed distances (Open3D ray-casting scene per closed part): exact outside the
        solid; inside, where parts overlap, the distance to the boundary of the deepest part (a lower bound).
        """
        import open3d as o3d

        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ShapeError(f"points must be (N, 3), got {pts.shape}")
        query = o3d.core.Tensor(pts.astype(np.float32))
        out = np.full(len(pts), np.inf)
        for part in self.parts:
            v, f = weld(part)
            scene = o3d.t.geometry.RaycastingScene()
            scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
            out = np.minimum(out, scene.compute_signed_distance(query).numpy().astype(np.float64))
        return out

    def object_model(self, obj_id: int = 1) -> ObjectModel:
        """The instance as an untextured :class:`ObjectModel` (for evaluation; a category learner never gets it)."""
        v, f = weld(self.mesh)
        return object_model_from_arrays(self.name, v, f, symmetry=self.symmetry, obj_id=obj_id,
                                        category=self.category)


def _planar_uv(v: np.ndarray) -> np.ndarray:
    lo, hi = v.min(0), v.max(0)
    return (v[:, [0, 2]] - lo[[0, 2]]) / np.maximum(hi[[0, 2]] - lo[[0, 2]], 1e-9)


def _sphere_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread over the sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def rounded_box(size: tuple[float, float, float], radius: float, center: tuple[float, float, float] = (0, 0, 0),
                directions: int = 48) -> PartMesh:
    """Box of outer ``size`` (x, y, z) with edges and corners rounded by ``radius``: the convex hull of the inner
    box's corners grown by a sphere of ``radius``. Normals are exact (from the inner box); UVs are the planar x-z
    projection."""
    half = np.asarray(size, dtype=np.float64) / 2 - radius
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
    pts = (corners[:, None] + radius * _sphere_directions(directions)[None]).reshape(-1, 3)
    hull = ConvexHull(pts)
    used, faces = np.unique(hull.simplices, return_inverse=True)
    v, faces = pts[used], faces.reshape(-1, 3).astype(np.int64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    flip = np.einsum("fi,fi->f", np.cross(b - a, c - a), a + b + c) < 0  # convex about the origin: outward
    faces[flip] = faces[flip][:, ::-1]
    normals = (v - np.clip(v, -half, half)) / radius
    return PartMesh(v + np.asarray(center), faces, _planar_uv(v), normals)


def _along_minus_y(part: PartMesh, y0: float, x: float, z: float) -> PartMesh:
    """A part revolved about z (base at z = 0) turned to point along -y, its base at (x, y0, z)."""
    T = np.array([[1.0, 0, 0, x], [0, 0, -1, y0], [0, 1, 0, z], [0, 0, 0, 1]])
    return part.transformed(T)


def _bottle(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    H, R = rng.uniform(0.16, 0.30), rng.uniform(0.028, 0.045)
    rn = max(0.009, R * rng.uniform(0.3, 0.45))
    rc = rn * rng.uniform(1.0, 1.25)
    hc, hn, hs = rng.uniform(0.012, 0.03), rng.uniform(0.01, 0.05), H * rng.uniform(0.15, 0.35)
    hb = H - hc - hn - hs
    bevel, roundness = rng.uniform(0.002, 0.006), rng.uniform(0.0, 1.0)
    waist = rng.uniform(0.05, 0.15) * R if rng.random() < 0.35 else 0.0
    waist_at = rng.uniform(0.35, 0.65)
    two_tier = rng.random() < 0.3
    s = np.linspace(0, 1, 16)
    body_z = bevel + (hb - bevel) * s
    body_r = R - waist * np.exp(-((s - waist_at) / 0.15) ** 2)
    t = np.linspace(0, 1, 14)[1:]
    sh_r = rn + (R - rn) * ((1 - roundness) * np.cos(t * np.pi / 2) + roundness * (1 - t))
    sh_z = hb + hs * np.sin(t * np.pi / 2) * (1 - roundness) + hs * t * roundness
    top = hb + hs
    cap = [(rn, top + hn), (rn, top + hn), (rc, top + hn), (rc, top + hn)]
    if two_tier:
        cap += [(rc, top + hn + hc * 0.6), (rc * 0.75, top + hn + hc * 0.6), (rc * 0.75, H), (rc * 0.75, H)]
    else:
        cap += [(rc, H), (rc, H)]
    prof = np.concatenate([[[0, 0], [R - bevel, 0], [R - bevel, 0]], np.stack([body_r, body_z], 1),
                           np.stack([sh_r, sh_z], 1), [[rn, top]], cap, [[0, H]]])
    return [revolve(prof, SEGMENTS)], {"height": H, "radius": R, "neck_radius": rn, "cap_radius": rc,
                                       "shoulder_height": hs, "shoulder_roundness": roundness, "waist": waist,
                                       "two_tier_cap": float(two_tier)}


def _bowl(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    R = rng.uniform(0.055, 0.095)
    H, Rb, t = R * rng.uniform(0.45, 0.75), R * rng.uniform(0.35, 0.6), rng.uniform(0.003, 0.007)
    n = rng.uniform(1.5, 4.0)  # wall profile: 2 = elliptic, larger = flatter bottom and steeper sides
    foot = rng.uniform(0.004, 0.01) if rng.random() < 0.5 else 0.0
    th = np.linspace(0, np.pi / 2, 16)[1:]
    e = 2.0 / n
    outer = np.stack([Rb + (R - Rb) * np.sin(th) ** e, foot + H * (1 - np.cos(th) ** e)], 1)
    inner = np.stack([Rb - t + (R - Rb) * np.sin(th) ** e, foot + t + (H - t) * (1 - np.cos(th) ** e)], 1)[::-1]
    if foot > 0:
        ring = Rb * rng.uniform(0.75, 0.9)
        base = [[0, foot], [ring, foot], [ring, foot], [ring, 0], [ring, 0], [Rb, 0]]
    else:
        base = [[0, 0], [Rb, 0]]
    prof = np.concatenate([base, outer, [[R - t, foot + H]], inner[1:], [[Rb - t, foot + t], [0, foot + t]]])
    return [revolve(prof, SEGMENTS)], {"radius": R, "depth": H, "base_radius": Rb, "thickness": t,
                                       "wall_exponent": n, "foot": foot}


def _can(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    R, H = rng.uniform(0.026, 0.045), rng.uniform(0.065, 0.16)
    b, lip, recess = rng.uniform(0.002, 0.005), rng.uniform(0.0015, 0.004), rng.uniform(0.001, 0.004)
    neck = rng.uniform(0.05, 0.12) * R if rng.random() < 0.4 else 0.0
    hn = rng.uniform(0.008, 0.015) if neck else 0.0
    rt = R - neck
    prof = [(0, 0), (R - b, 0), (R - b, 0), (R, b), (R, b), (R, H - b - hn)]
    if neck:
        prof += [(rt, H - b)]
    prof += [(rt, H - b), (rt - b, H), (rt - b, H), (rt - b - lip, H), (rt - b - lip, H),
             (rt - b - lip, H - recess), (rt - b - lip, H - recess), (0, H - recess)]
    return [revolve(np.asarray(prof, dtype=np.float64), SEGMENTS)], {"radius": R, "height": H, "bevel": b,
                                                                     "neck": neck, "recess": recess}


def _camera(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    W, D, Hh = rng.uniform(0.09, 0.14), rng.uniform(0.035, 0.07), rng.uniform(0.055, 0.095)
    cr = rng.uniform(0.003, 0.012)
    parts = [rounded_box((W, D, Hh), cr)]
    rl = min(rng.uniform(0.015, 0.032), 0.42 * min(W, Hh))
    L = rng.uniform(0.015, 0.08)
    lx = W * rng.uniform(-0.15, 0.15)
    lz = Hh * rng.uniform(-0.08, 0.05)
    inset = min(cr, 0.004) + 0.002  # the lens starts inside the body
    step = rng.random() < 0.5
    r2 = rl * rng.uniform(0.75, 1.1)
    split = L * rng.uniform(0.35, 0.7)
    lens = [(0, 0), (rl, 0), (rl, 0), (rl, split + inset)]
    lens += [(r2, split + inset), (r2, split + inset)] if step else []
    lens += [(r2 if step else rl, L + inset), (r2 if step else rl, L + inset), (0, L + inset)]
    parts.append(_along_minus_y(revolve(np.asarray(lens, dtype=np.float64), SEGMENTS), -D / 2 + inset, lx, lz))
    grip = rng.random() < 0.7
    if grip:
        gw, gd = rng.uniform(0.02, 0.035), rng.uniform(0.008, 0.02)
        parts.append(rounded_box((gw, D / 2 + gd, Hh * 0.9), min(cr, gw / 3, 0.006),
                                 (W / 2 - gw / 2, -D / 4 - gd / 2, -Hh * 0.05)))
    finder = rng.random() < 0.5
    if finder:
        fw, fh = W * rng.uniform(0.25, 0.4), rng.uniform(0.01, 0.025)
        parts.append(rounded_box((fw, D * 0.8, fh + 0.004), 0.003, (lx, 0.0, Hh / 2 + fh / 2 - 0.002)))
    br, bx = rng.uniform(0.004, 0.007), W / 2 - rng.uniform(0.015, 0.025)
    button = revolve(np.array([[0, 0], [br, 0], [br, 0], [br, 0.006], [br, 0.006], [0, 0.006]]), 16)
    parts.append(button.transformed(np.array([[1.0, 0, 0, bx], [0, 1, 0, 0], [0, 0, 1, Hh / 2 - 0.002],
                                              [0, 0, 0, 1]])))
    return parts, {"width": W, "depth": D, "height": Hh, "corner_radius": cr, "lens_radius": rl, "lens_length": L,
                   "lens_step": float(step), "grip": float(grip), "viewfinder": float(finder)}


def _laptop(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    W, Db, Tb = rng.uniform(0.28, 0.40), rng.uniform(0.19, 0.27), rng.uniform(0.012, 0.025)
    Ds, Ts = Db * rng.uniform(0.9, 1.0), rng.uniform(0.005, 0.012)
    hinge = rng.uniform(70.0, 135.0)
    a = np.deg2rad(hinge)
    base = rounded_box((W, Db, Tb), min(0.005, Tb / 3), (0.0, 0.0, Tb / 2))
    screen = rounded_box((W, Ds, Ts), min(0.004, Ts / 3), (0.0, -Ds / 2, Ts / 2))  # closed: hinge line at y=z=0
    T = np.eye(4)  # open by the hinge angle about x, the hinge at the back top edge of the base (back = +y)
    T[:3, :3] = [[1, 0, 0], [0, np.cos(a), np.sin(a)], [0, -np.sin(a), np.cos(a)]]
    T[:3, 3] = (0.0, Db / 2 - 0.002, Tb - 0.002)
    return [base, screen.transformed(T)], {"width": W, "base_depth": Db, "base_thickness": Tb, "screen_depth": Ds,
                                           "screen_thickness": Ts, "hinge_deg": hinge}


def _mug(rng: np.random.Generator) -> tuple[list[PartMesh], dict[str, float]]:
    R, H = rng.uniform(0.035, 0.055), rng.uniform(0.075, 0.12)
    taper, belly = rng.uniform(0.8, 1.05), rng.uniform(0.0, 0.08)
    t, tb = rng.uniform(0.003, 0.006), rng.uniform(0.005, 0.012)
    z = np.linspace(0, H, 14)

    def radius(zz: np.ndarray) -> np.ndarray:
        s = np.asarray(zz) / H
        return R * (taper + (1 - taper) * s) + R * belly * np.sin(np.pi * s)

    r = radius(z)
    zi = np.linspace(H, tb, 12)
    prof = np.concatenate([[[0, 0]], np.stack([r, z], 1), [[r[-1], H], [r[-1] - t, H], [r[-1] - t, H]],
                           np.stack([radius(zi) - t, zi], 1)[1:], [[radius(tb) - t, tb], [0, tb]]])
    cup = revolve(prof, SEGMENTS)
    span = H * rng.uniform(0.45, 0.75)
    z_bot = H * rng.uniform(0.1, 0.25)
    z_top = min(z_bot + span, H - 0.012)
    rt = rng.uniform(0.004, 0.0075)
    reach = rng.uniform(0.018, 0.035)
    corner = (z_top - z_bot) / 2 * rng.uniform(0.35, 1.0)  # 1: a round "C", smaller: a squarer "D"
    corner = max(min(corner, reach - 0.002), 1.6 * rt)
    x_top, x_bot = float(radius(z_top)) - t / 2, float(radius(z_bot)) - t / 2
    x_out = max(x_top, x_bot) + reach
    handle = sweep_tube(_handle_path(x_top, x_bot, x_out, z_bot, z_top, corner), rt, 14)
    return [cup, handle], {"radius": R, "height": H, "taper": taper, "belly": belly, "wall": t, "bottom": tb,
                           "handle_span": z_top - z_bot, "handle_reach": reach, "handle_corner": corner,
                           "handle_radius": rt}


def _handle_path(x_top: float, x_bot: float, x_out: float, z_bot: float, z_top: float, corner: float,
                 samples: int = 10, spacing: float = 0.002) -> np.ndarray:
    """(P, 3) centre line of a handle in the x-z plane: from the wall at (x_top, z_top) out to ``x_out``, down to
    ``z_bot`` and back into the wall at (x_bot, z_bot), with quarter-circle corners of radius ``corner``, resampled
    every ``spacing`` metres of arc length."""
    a = np.linspace(0.0, np.pi / 2, samples)
    top = np.stack([x_out - corner + corner * np.sin(a), z_top - corner + corner * np.cos(a)], 1)
    bot = np.stack([x_out - corner + corner * np.cos(a), z_bot + corner - corner * np.sin(a)], 1)
    out = [np.stack([np.linspace(x_top, x_out - corner, 4, endpoint=False), np.full(4, z_top)], 1), top]
    n_side = max(0, int((z_top - z_bot - 2 * corner) / 0.008))
    if n_side:
        out.append(np.stack([np.full(n_side, x_out), np.linspace(z_top - corner, z_bot + corner, n_side + 2)[1:-1]],
                            1))
    out += [bot, np.stack([np.linspace(x_out - corner, x_bot, 5)[1:], np.full(4, z_bot)], 1)]
    pts = np.concatenate(out)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    even = np.linspace(0.0, arc[-1], max(8, int(np.ceil(arc[-1] / spacing)) + 1))  # rings evenly spaced: no folds
    x, z = np.interp(even, arc, pts[:, 0]), np.interp(even, arc, pts[:, 1])
    return np.stack([x, np.zeros(len(x)), z], 1)


BUILDERS: dict[str, Callable[[np.random.Generator], tuple[list[PartMesh], dict[str, float]]]] = {
    "bottle": _bottle, "bowl": _bowl, "camera": _camera, "can": _can, "laptop": _laptop, "mug": _mug,
}


def instance(category: str, index: int, seed: int = 0) -> CategoryInstance:
    """Instance ``index`` of ``category``'s family for ``seed`` (same arguments, same mesh, bit for bit)."""
    if category not in BUILDERS:
        raise ConfigError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ConfigError(f"instance index must be a non-negative integer, got {index!r}")
    rng = np.random.default_rng([int(seed), CATEGORIES.index(category), int(index)])
    parts, params = BUILDERS[category](rng)
    lo = np.min([p.vertices.min(0) for p in parts], axis=0)
    hi = np.max([p.vertices.max(0) for p in parts], axis=0)
    centre = np.eye(4)
    centre[:3, 3] = -(lo + hi) / 2
    T = np.linalg.inv(T_ZUP_NOCS) @ centre
    return CategoryInstance(category, int(index), int(seed), [p.transformed(T) for p in parts],
                            {k: float(v) for k, v in params.items()})


def training_instances(category: str, count: int, seed: int = 0) -> list[CategoryInstance]:
    """The first ``count`` training instances of ``category`` (indices 0 .. count - 1)."""
    if not 0 <= count <= HELDOUT_START:
        raise ConfigError(f"training instances: count must be in 0..{HELDOUT_START}, got {count}")
    return [instance(category, i, seed) for i in range(count)]


def heldout_instances(category: str, count: int, seed: int = 0) -> list[CategoryInstance]:
    """``count`` held-out instances of ``category`` (indices from :data:`HELDOUT_START`), never trained on."""
    if count < 0:
        raise ConfigError(f"held-out instances: count must be >= 0, got {count}")
    return [instance(category, HELDOUT_START + i, seed) for i in range(count)]
