"""Layout of the simulated world: a room, a table, target objects and clutter on it, and a light.

World frame: metres, z up, origin on the floor below the centre of the table top. A *background style* (an
integer) selects the room/table textures and the lighting: style 0 is the training scene; the held-out test
trajectories use other styles (different walls, floor, table top, light colour and position) and a new
arrangement of the objects on the table. The normal layout stands every object upright, apart from the others; the
hard one (:class:`HardLayout`) lays targets in other stable resting poses, puts two of them in contact and adds
distractors that look like targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.spatial import ConvexHull

from selfpose_core.data.sim import textures as tx
from selfpose_core.data.sim.catalog import SimObject, clutter, lookalike
from selfpose_core.data.sim.shapes import box, merge, quad, weld
from selfpose_core.errors import ConfigError
from selfpose_core.types import Symmetry

TABLE_SIZE = (1.0, 0.8)  # table top (x, y), metres
TABLE_HEIGHT = 0.5  # floor to table top, metres
ROOM_HALF = 3.5  # walls at +-ROOM_HALF in x and y
ROOM_HEIGHT = 2.8


@dataclass(slots=True)
class Light:
    """A point light (Blinn-Phong shading with cast shadows) plus ambient light; colours are linear RGB."""

    position: np.ndarray  # (3,) world
    color: np.ndarray  # (3,) linear RGB, intensity at the table centre
    ambient: np.ndarray  # (3,) linear RGB


@dataclass(slots=True)
class Instance:
    """An object placed in the world. ``obj_id`` > 0 for targets (BOP id), 0 for clutter and background;
    ``tiling``: texture coordinates repeat (room surfaces)."""

    obj: SimObject
    T_world_obj: np.ndarray  # (4, 4)
    obj_id: int = 0
    tiling: bool = False


@dataclass(slots=True)
class Scene:
    """Everything the renderer needs: instances (targets first), the light, the table top centre."""

    instances: list[Instance]
    light: Light
    style: int
    table_center: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, TABLE_HEIGHT]))

    @property
    def targets(self) -> list[Instance]:
        return [i for i in self.instances if i.obj_id > 0]


def _pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = (x, y, z)
    return T


def _background(name: str, mesh, texture: np.ndarray, specular: float = 0.05) -> SimObject:
    return SimObject(name, mesh, texture, Symmetry(), "background", specular, 10.0)


def _room(rng: np.random.Generator) -> list[Instance]:
    """Floor (tiles), four walls (wallpaper), ceiling; UVs in units of one texture repeat."""
    h, H = ROOM_HALF, ROOM_HEIGHT
    tile_m, paper_m = float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.8, 1.5))
    floor = quad((-h, -h, 0.0), (2 * h, 0, 0), (0, 2 * h, 0), (0, 0, 2 * h / tile_m, 2 * h / tile_m))
    walls = merge([quad(o, a, (0, 0, H), (0, 0, 2 * h / paper_m, H / paper_m)) for o, a in
                   (((-h, h, 0), (2 * h, 0, 0)), ((h, h, 0), (0, -2 * h, 0)), ((h, -h, 0), (-2 * h, 0, 0)),
                    ((-h, -h, 0), (0, 2 * h, 0)))])
    ceiling = quad((-h, -h, H), (0, 2 * h, 0), (2 * h, 0, 0))
    eye = np.eye(4)
    return [Instance(_background("floor", floor, tx.tiles(rng, n=2)), eye, tiling=True),
            Instance(_background("walls", walls, tx.wallpaper(rng)), eye, tiling=True),
            Instance(_background("ceiling", ceiling, tx.plain((235, 235, 230))), eye, tiling=True)]


def _table(rng: np.random.Generator) -> list[Instance]:
    W, D = TABLE_SIZE
    t = 0.03
    top = box((W, D, t), (0.0, 0.0, TABLE_HEIGHT - t / 2))
    light_c = tx.random_color(rng, (0.25, 0.65), (0.45, 0.9), hue=(15.0, 45.0))  # wood tones
    dark_c = tuple(int(c * rng.uniform(0.45, 0.65)) for c in light_c)
    top_tex = tx.wood(rng, (384, 768), dark_c, light_c)
    legs = merge([box((0.05, 0.05, TABLE_HEIGHT - t), (sx * (W / 2 - 0.06), sy * (D / 2 - 0.06),
                                                      (TABLE_HEIGHT - t) / 2)) for sx in (-1, 1) for sy in (-1, 1)])
    eye = np.eye(4)
    return [Instance(_background("table_top", top, top_tex, 0.15), eye),
            Instance(_background("table_legs", legs, tx.plain(dark_c)), eye)]


def _light(rng: np.random.Generator, style: int) -> Light:
    az = rng.uniform(0, 2 * np.pi)
    pos = np.array([rng.uniform(0.5, 1.5) * np.cos(az), rng.uniform(0.5, 1.5) * np.sin(az), rng.uniform(2.1, 2.6)])
    temp = rng.uniform(-1, 1) * (0.1 if style == 0 else 0.25)  # warm (+) / cool (-) tint
    color = np.array([1.0 + temp, 1.0, 1.0 - temp]) * rng.uniform(0.8, 1.1)
    ambient = np.array([1.0, 1.0, 1.0]) * rng.uniform(0.15, 0.3)
    return Light(pos, color, ambient)


def place_on_table(objects: list[SimObject], rng: np.random.Generator, gap: float = 0.02,
                   margin: float = 0.03, max_tries: int = 4000) -> list[np.ndarray]:
    """Random non-overlapping upright poses (4, 4) of ``objects`` standing on the table top, random yaw.

    Objects are kept apart by their footprint circles plus ``gap``; raises ConfigError when they do not fit.
    """
    W, D = TABLE_SIZE
    placed: list[tuple[float, float, float]] = []
    poses: list[np.ndarray | None] = [None] * len(objects)
    for i in sorted(range(len(objects)), key=lambda k: -objects[k].footprint_radius):
        r = objects[i].footprint_radius
        for _ in range(max_tries):
            x = rng.uniform(-W / 2 + r + margin, W / 2 - r - margin)
            y = rng.uniform(-D / 2 + r + margin, D / 2 - r - margin)
            if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + gap) ** 2 for px, py, pr in placed):
                break
        else:
            raise ConfigError(f"cannot place {len(objects)} objects on the {W} x {D} m table without overlap "
                              "(use fewer --objects or less clutter)")
        placed.append((x, y, r))
        poses[i] = _pose(x, y, TABLE_HEIGHT + objects[i].half_height, rng.uniform(-np.pi, np.pi))
    return poses


@dataclass(slots=True, frozen=True)
class HardLayout:
    """The hard table top: targets in other stable resting poses, a pair in contact, look-alike distractors."""

    lying: float = 0.5  # probability that a target lies in a non-upright stable pose (at least one per scene does)
    min_tilt_deg: float = 30.0  # tilt of the object's z axis from world up above which a resting pose is "lying"
    contact_gap: tuple[float, float] = (0.0005, 0.003)  # footprint gap of the pair in contact (metres)
    gap: float = 0.01  # footprint gap between all other objects (metres)
    margin: float = 0.02  # footprints stay this far inside the table edge (metres)
    n_lookalikes: int = 2  # distractors with the size and colours of a target
    max_tries: int = 4000


def lying_poses(obj: SimObject, min_tilt_deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """The stable resting poses of ``obj`` on a plane whose z axis is tilted more than ``min_tilt_deg`` from up.

    Returns rotations (n, 3, 3) (object to world, before a yaw about world z) and their probabilities (n,) of
    ending in that pose when dropped (trimesh's quasi-static model on the convex hull, uniform density).
    """
    vertices, faces = weld(obj.mesh)
    R, prob = _stable_poses(np.ascontiguousarray(vertices, np.float64).tobytes(), faces.tobytes())
    keep = R[:, 2, 2] < np.cos(np.radians(min_tilt_deg))
    return R[keep], prob[keep]


@lru_cache(maxsize=16)
def _stable_poses(vertices: bytes, faces: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (n, 3, 3) and probabilities (n,) of all stable poses of the closed mesh given as float64 (N, 3)
    vertex and int64 (F, 3) face bytes (cached: every background style lays out the same targets)."""
    import trimesh

    mesh = trimesh.Trimesh(np.frombuffer(vertices).reshape(-1, 3), np.frombuffer(faces, np.int64).reshape(-1, 3),
                           process=False)
    T, prob = trimesh.poses.compute_stable_poses(mesh, seed=0)
    return T[:, :3, :3], prob


def footprint(vertices: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Convex hull (k, 2), counter-clockwise, of the object ``vertices`` (N, 3) rotated by ``R`` (3, 3), seen from
    above (xy, object origin at 0)."""
    xy = (vertices @ R.T)[:, :2]
    return xy[ConvexHull(xy).vertices]


def polygon_distance(P: np.ndarray, Q: np.ndarray) -> float:
    """Euclidean distance between the convex polygons ``P`` (n, 2) and ``Q`` (m, 2) (vertices in order); 0 when
    they touch or overlap (separating-axis test on the edge normals)."""
    normals = np.concatenate([_edge_normals(P), _edge_normals(Q)])
    p, q = P @ normals.T, Q @ normals.T
    if not ((p.max(0) < q.min(0)) | (q.max(0) < p.min(0))).any():
        return 0.0
    return float(min(_point_segment_distances(P, Q).min(), _point_segment_distances(Q, P).min()))


def _edge_normals(P: np.ndarray) -> np.ndarray:
    e = np.roll(P, -1, 0) - P
    return np.stack([e[:, 1], -e[:, 0]], 1)


def _point_segment_distances(X: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(n, m) distances from the points ``X`` (n, 2) to the edges of the closed polygon ``P`` (m, 2)."""
    e = np.roll(P, -1, 0) - P
    rel = X[:, None] - P[None]
    t = np.clip(np.einsum("nmi,mi->nm", rel, e) / np.maximum((e ** 2).sum(1), 1e-18), 0.0, 1.0)
    return np.linalg.norm(rel - t[..., None] * e[None], axis=2)


def _rigid(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def place_hard(objects: list[SimObject], n_targets: int, rng: np.random.Generator,
               layout: HardLayout = HardLayout()) -> list[np.ndarray]:
    """Resting poses (4, 4) of ``objects`` (the first ``n_targets`` are targets) on the table top, random yaw.

    Targets lie in a non-upright stable pose with probability ``layout.lying`` (at least one does); the others stand
    upright. Two targets (or the only target and the first distractor) are placed with footprints
    ``layout.contact_gap`` apart, all others ``layout.gap`` apart. Footprints are the convex hulls of the posed
    meshes seen from above, so nothing interpenetrates; each object's lowest point is on the table top. Raises
    ConfigError when the objects do not fit.
    """
    W, D = TABLE_SIZE
    resting = [lying_poses(o, layout.min_tilt_deg) for o in objects[:n_targets]]
    can_lie = np.array([len(p) > 0 for _, p in resting])
    lie = (rng.random(n_targets) < layout.lying) & can_lie
    if not lie.any() and can_lie.any():
        lie[rng.choice(np.flatnonzero(can_lie))] = True
    rotations = []
    for k, obj in enumerate(objects):
        yaw = rng.uniform(-np.pi, np.pi)
        R = _pose(0.0, 0.0, 0.0, yaw)[:3, :3]
        if k < n_targets and lie[k]:
            Rs, prob = resting[k]
            R = R @ Rs[rng.choice(len(prob), p=prob / prob.sum())]
        rotations.append(R)
    hulls = [footprint(o.mesh.vertices, R) for o, R in zip(objects, rotations)]
    radii = [float(np.linalg.norm(h, axis=1).max()) for h in hulls]
    lo = [np.array([-W / 2, -D / 2]) + layout.margin - h.min(0) for h in hulls]
    hi = [np.array([W / 2, D / 2]) - layout.margin - h.max(0) for h in hulls]
    if any((h < low).any() for low, h in zip(lo, hi)):
        raise ConfigError(f"an object's footprint does not fit on the {W} x {D} m table")
    if n_targets >= 2:
        pair = [int(k) for k in rng.choice(n_targets, 2, replace=False)]
    else:
        pair = [0, 1][:len(objects)]
    for _ in range(layout.max_tries):
        centres = {pair[0]: rng.uniform(lo[pair[0]], hi[pair[0]])}
        if len(pair) == 1:
            break
        a, b = pair
        c = _touching(hulls[a] + centres[a], hulls[b], centres[a], rng.uniform(0, 2 * np.pi),
                      rng.uniform(*layout.contact_gap), radii[a] + radii[b])
        if (c >= lo[b]).all() and (c <= hi[b]).all():
            centres[b] = c
            break
    else:
        raise ConfigError(f"cannot place two objects in contact on the {W} x {D} m table")
    for i in sorted(set(range(len(objects))) - set(pair), key=lambda k: -radii[k]):
        for _ in range(layout.max_tries):
            c = rng.uniform(lo[i], hi[i])
            if all(np.linalg.norm(c - cj) > radii[i] + radii[j] + layout.gap
                   or polygon_distance(hulls[i] + c, hulls[j] + cj) >= layout.gap for j, cj in centres.items()):
                break
        else:
            raise ConfigError(f"cannot place {len(objects)} objects on the {W} x {D} m table without overlap "
                              "(use fewer --objects or less clutter)")
        centres[i] = c
    return [_rigid(R, [*centres[i], TABLE_HEIGHT - (objects[i].mesh.vertices @ R[2]).min()])
            for i, R in enumerate(rotations)]


def _touching(A: np.ndarray, B: np.ndarray, a: np.ndarray, angle: float, gap: float, reach: float) -> np.ndarray:
    """Where to put the origin of footprint ``B`` (k, 2) in direction ``angle`` from ``a`` so that it is ``gap``
    from the placed footprint ``A`` (m, 2): bisection on the distance, which is convex along the ray."""
    u = np.array([np.cos(angle), np.sin(angle)])
    s0, s1 = 0.0, reach + gap
    for _ in range(40):
        s = (s0 + s1) / 2
        if polygon_distance(A, B + a + s * u) >= gap:
            s1 = s
        else:
            s0 = s
    return a + s1 * u


def build_scene(targets: list[SimObject], rng: np.random.Generator, style: int = 0, n_clutter: int = 3,
                n_floor_clutter: int = 2, hard: HardLayout | None = None) -> Scene:
    """Room + table + ``targets`` (obj_id 1..N in order) + ``n_clutter`` distractors on the table + larger ones
    on the floor, all laid out from ``rng``; ``style`` only labels the scene (the textures come from ``rng``).
    ``hard``: lay the table out with :func:`place_hard` and add its look-alike distractors (default: upright,
    apart)."""
    instances = []
    items = list(targets) + [clutter(rng, k) for k in range(n_clutter)]
    if hard is None:
        poses = place_on_table(items, rng)
    else:
        like = rng.permutation(len(targets))
        items += [lookalike(rng, targets[like[k % len(targets)]], n_clutter + k) for k in range(hard.n_lookalikes)]
        poses = place_hard(items, len(targets), rng, hard)
    for k, (obj, T) in enumerate(zip(items, poses)):
        instances.append(Instance(obj, T, obj_id=k + 1 if k < len(targets) else 0))
    for k in range(n_floor_clutter):
        obj = clutter(rng, len(items) - len(targets) + k)
        big = SimObject(obj.name, obj.mesh.scaled(2.5), obj.texture, obj.symmetry, obj.category,
                        obj.specular, obj.shininess)
        az, rad = rng.uniform(0, 2 * np.pi), rng.uniform(1.8, 2.6)
        instances.append(Instance(big, _pose(rad * np.cos(az), rad * np.sin(az), big.half_height,
                                             rng.uniform(-np.pi, np.pi))))
    instances += _table(rng) + _room(rng)
    return Scene(instances, _light(rng, style), style)
