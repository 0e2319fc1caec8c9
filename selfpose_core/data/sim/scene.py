"""Layout of the simulated world: a room, a table, target objects and clutter on it, and a light.

World frame: metres, z up, origin on the floor below the centre of the table top. A *background style* (an
integer) selects the room/table textures and the lighting: style 0 is the training scene; the held-out test
trajectories use other styles (different walls, floor, table top, light colour and position) and a new
arrangement of the objects on the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from selfpose_core.data.sim import textures as tx
from selfpose_core.data.sim.catalog import SimObject, clutter
from selfpose_core.data.sim.shapes import box, merge, quad
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


def build_scene(targets: list[SimObject], rng: np.random.Generator, style: int = 0, n_clutter: int = 3,
                n_floor_clutter: int = 2) -> Scene:
    """Room + table + ``targets`` (obj_id 1..N in order) + ``n_clutter`` distractors on the table + larger ones
    on the floor, all laid out from ``rng``; ``style`` only labels the scene (the textures come from ``rng``)."""
    instances = []
    items = list(targets) + [clutter(rng, k) for k in range(n_clutter)]
    poses = place_on_table(items, rng)
    for k, (obj, T) in enumerate(zip(items, poses)):
        instances.append(Instance(obj, T, obj_id=k + 1 if k < len(targets) else 0))
    for k in range(n_floor_clutter):
        obj = clutter(rng, n_clutter + k)
        big = SimObject(obj.name, obj.mesh.scaled(2.5), obj.texture, obj.symmetry, obj.category,
                        obj.specular, obj.shininess)
        az, rad = rng.uniform(0, 2 * np.pi), rng.uniform(1.8, 2.6)
        instances.append(Instance(big, _pose(rad * np.cos(az), rad * np.sin(az), big.half_height,
                                             rng.uniform(-np.pi, np.pi))))
    instances += _table(rng) + _room(rng)
    return Scene(instances, _light(rng, style), style)
