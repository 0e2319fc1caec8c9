"""The objects of the embedded scene: six household-like targets, random clutter and look-alikes of the targets (the
hard scene), each with a true appearance.

Object frame (all objects): metres, z up (the object stands upright on a surface), origin at the centre of the
axis-aligned bounding box. A :class:`SimObject` holds the textured mesh used for rendering the "real" world
(the learner never sees it) and gives the untextured CAD model (geometry only) the learner gets.

| name        | shape                                  | appearance                          | symmetry            |
|-------------|----------------------------------------|-------------------------------------|---------------------|
| cereal_box  | box 19 x 7 x 28 cm                     | printed box: title, logo, stripes   | 180 deg about x, y, z |
| tin_can     | bevelled cylinder r 3.4 cm, h 10.2 cm  | label with text and logo, metal lids | continuous about z  |
| mug         | hollow cylinder + swept-tube handle    | glaze with dots and text            | none                |
| bottle      | revolved profile with shoulder and cap | yellow body, label, red cap         | continuous about z  |
| drill       | cylinder body + chuck + grip + battery | plain colour (TEXTURELESS)          | none                |
| bowl        | revolved thick-walled bowl             | glaze with concentric rings         | continuous about z  |

The declared symmetries are those of the untextured CAD model the learner gets, not of the textured object: no
label-free method can tell the printed side of a can from its untextured mesh, so the object frame is only defined
up to the shape's symmetries (AD{D|I} then scores these objects with ADD-S; the plain ADD column still shows the
texture-defined error).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull

from selfpose_core.data.sim import textures as tx
from selfpose_core.data.sim.shapes import (PartMesh, box, box_net_cells, merge, revolve, rounded_c_path, sweep_tube,
                                           weld)
from selfpose_core.errors import ConfigError
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import ObjectModel, Symmetry

PX_PER_M = 1400.0  # texture resolution of printed surfaces


@dataclass(slots=True)
class SimObject:
    """One object of the simulated world.

    mesh: textured triangle mesh in the object frame; texture: (H, W, 3) uint8 true appearance (sRGB);
    specular / shininess: Blinn-Phong material; textureless: plain colour only.
    """

    name: str
    mesh: PartMesh
    texture: np.ndarray
    symmetry: Symmetry
    category: str
    specular: float = 0.1
    shininess: float = 20.0
    textureless: bool = False

    @property
    def footprint_radius(self) -> float:
        """Radius of the vertical cylinder about the object origin that contains the object (metres)."""
        return float(np.linalg.norm(self.mesh.vertices[:, :2], axis=1).max())

    @property
    def half_height(self) -> float:
        """Distance from the object origin down to its base (metres)."""
        return float(-self.mesh.vertices[:, 2].min())

    def cad_model(self, obj_id: int = 1) -> ObjectModel:
        """The untextured CAD model (welded closed geometry, no colours) that the learner is given."""
        vertices, faces = weld(self.mesh)
        return object_model_from_arrays(self.name, vertices, faces, symmetry=self.symmetry, obj_id=obj_id,
                                        category=self.category)


def _centred(mesh: PartMesh) -> PartMesh:
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    T = np.eye(4)
    T[:3, 3] = -(lo + hi) / 2
    return mesh.transformed(T)


def _about_z() -> Symmetry:
    """Rotation by any angle about the object's z axis (revolved shapes)."""
    return Symmetry(continuous=[(np.array([0.0, 0.0, 1.0]), np.zeros(3))])


def _rows(v0: float, v1: float, height: int) -> tuple[int, int]:
    """Pixel rows (y0, y1) of the texture band v in [v0, v1] (v = 0 at the bottom row)."""
    return int(round((1 - v1) * height)), int(round((1 - v0) * height))


def _rect(cell: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int]:
    u0, v0, u1, v1 = cell
    return int(round(u0 * w)), int(round((1 - v1) * h)), int(round(u1 * w)), int(round((1 - v0) * h))


def cereal_box(rng: np.random.Generator) -> SimObject:
    size = (0.19, 0.07, 0.28)
    cells = box_net_cells(size)
    w, h = int((2 * size[0] + 2 * size[1]) * PX_PER_M), int((size[2] + 2 * size[1]) * PX_PER_M)
    main, accent, text = tx.random_color(rng), tx.random_color(rng), (255, 250, 235)
    img = tx.plain(main, (h, w))
    fx0, fy0, fx1, fy1 = _rect(cells["front"], w, h)
    fh = fy1 - fy0
    tx.stripes(img[:, fx0:fx1], (fy0, fy0 + fh // 6), [accent, text, accent])
    tx.put_text(img, "CRUNCHY", (fx0 + 15, fy0 + fh // 6 + 10, fx1 - 15, fy0 + fh // 3), text, 3)
    tx.put_text(img, "O's", (fx0 + 60, fy0 + fh // 3, fx1 - 60, fy0 + fh // 2), accent, 3)
    tx.logo(img, ((fx0 + fx1) // 2, fy0 + int(fh * 0.72)), int((fx1 - fx0) * 0.3), rng)
    bx0, by0, bx1, by1 = _rect(cells["back"], w, h)
    tx.put_text(img, "NUTRITION", (bx0 + 20, by0 + 30, bx1 - 20, by0 + 90), text, 2)
    for k in range(8):
        y = by0 + 120 + k * 28
        img[y:y + 10, bx0 + 30:bx1 - 30 - int(rng.integers(0, 80))] = text
    for side in ("left", "right"):
        sx0, sy0, sx1, sy1 = _rect(cells[side], w, h)
        img[sy0:sy1, sx0 + 8:sx0 + 22] = accent
        tx.logo(img, ((sx0 + sx1) // 2, sy0 + (sy1 - sy0) // 3), (sx1 - sx0) // 3, rng)
    for lid in ("top", "bottom"):
        lx0, ly0, lx1, ly1 = _rect(cells[lid], w, h)
        img[ly0:ly1, lx0:lx1] = accent
    flips = np.stack([np.diag(d) for d in ([1.0, -1.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0])])
    return SimObject("cereal_box", _centred(box(size)), tx.printed(rng, img), Symmetry(discrete=flips), "box", 0.08,
                     15.0)


def tin_can(rng: np.random.Generator) -> SimObject:
    R, H, b = 0.034, 0.102, 0.003
    prof = np.array([[0, 0], [R - b, 0], [R - b, 0], [R, b], [R, b], [R, H - b], [R, H - b], [R - b, H],
                     [R - b, H], [0, H]])
    v = np.array([0, 0.03, 0.03, 0.06, 0.06, 0.94, 0.94, 0.97, 0.97, 1.0])
    mesh = revolve(prof, 64, v)
    w, h = int(2 * np.pi * R * PX_PER_M), 320
    metal, label, band = (170, 170, 175), tx.random_color(rng, value=(0.6, 0.95)), tx.random_color(rng)
    img = tx.plain(label, (h, w))
    img[: _rows(0.94, 1, h)[1]] = metal
    img[_rows(0, 0.06, h)[0]:] = metal
    tx.stripes(img, _rows(0.78, 0.94, h), [band, (250, 250, 250)])
    tx.stripes(img, _rows(0.06, 0.16, h), [(250, 250, 250), band])
    tx.put_text(img, "TOMATO", (20, _rows(0.5, 0.72, h)[0], w // 2 - 10, _rows(0.5, 0.72, h)[1]), (250, 250, 250), 2)
    tx.put_text(img, "SOUP", (w // 2 + 20, _rows(0.2, 0.45, h)[0], w - 20, _rows(0.2, 0.45, h)[1]), band, 2)
    tx.logo(img, (w // 4, _rows(0.2, 0.45, h)[0] + 35), 30, rng)
    return SimObject("tin_can", _centred(mesh), tx.printed(rng, img), _about_z(), "can", 0.5, 40.0)


def mug(rng: np.random.Generator) -> SimObject:
    R, H, wall, bottom = 0.04, 0.095, 0.006, 0.008
    ri = R - wall
    prof = np.array([[0, 0], [R, 0], [R, 0], [R, H], [R, H], [ri, H], [ri, H], [ri, bottom], [ri, bottom],
                     [0, bottom]])
    v = np.array([0.0, 0.0, 0.0, 0.75, 0.82, 0.82, 0.82, 0.95, 0.95, 1.0])
    body = revolve(prof, 56, v)
    path = rounded_c_path(R - wall / 2, R + 0.03, 0.022, 0.078, 0.014)
    handle = sweep_tube(path, 0.0055, 14).with_uv((1.0, 0.0), (0.0, 0.785))
    mesh = merge([body, handle])
    w, h = int(2 * np.pi * R * PX_PER_M), 400
    glaze, ink, inner = tx.random_color(rng, value=(0.5, 0.9)), tx.random_color(rng), (240, 238, 230)
    img = tx.plain(glaze, (h, w))
    img[: _rows(0.8, 1.0, h)[1]] = inner
    y0, y1 = _rows(0.05, 0.75, h)
    for k, cy in enumerate(range(y0 + 20, y1 - 10, 36)):
        for cx in range(20 + (k % 2) * 18, w, 36):
            if not (w // 3 < cx < 2 * w // 3):
                tx.cv2.circle(img, (cx, cy), 7, ink, -1, lineType=tx.cv2.LINE_AA)
    tx.put_text(img, "BEST", (w // 3 + 10, y0 + 20, 2 * w // 3 - 10, (y0 + y1) // 2), ink, 2)
    tx.put_text(img, "MUG", (w // 3 + 10, (y0 + y1) // 2, 2 * w // 3 - 10, y1 - 20), ink, 2)
    return SimObject("mug", _centred(mesh), tx.printed(rng, img, 0.03), Symmetry(), "mug", 0.45, 60.0)


def bottle(rng: np.random.Generator) -> SimObject:
    R, rn, rc = 0.033, 0.012, 0.014
    s = np.linspace(0, 1, 10)
    shoulder = np.stack([rn + (R - rn) * np.cos(s * np.pi / 2), 0.13 + 0.045 * np.sin(s * np.pi / 2)], 1)
    prof = np.concatenate([[[0, 0], [R - 0.004, 0], [R, 0.004]], shoulder, [[rn, 0.185], [rn, 0.185], [rc, 0.185],
                                                                            [rc, 0.185], [rc, 0.205], [rc, 0.205],
                                                                            [0, 0.205]]])
    mesh = revolve(prof, 48)
    Hm = 0.205
    w, h = int(2 * np.pi * R * PX_PER_M), int(Hm * PX_PER_M)
    body, cap, ink = (230, 190, 30), (200, 30, 30), (180, 20, 20)
    img = tx.plain(body, (h, w))
    img[: _rows(0.185 / Hm, 1, h)[1]] = cap
    y0, y1 = _rows(0.03 / Hm, 0.115 / Hm, h)
    img[y0:y1, : w // 2] = (250, 248, 240)
    tx.put_text(img, "MUSTARD", (8, y0 + 10, w // 2 - 8, (y0 + y1) // 2), ink, 2)
    tx.logo(img, (w // 4, (y0 + y1) // 2 + (y1 - y0) // 4), (y1 - y0) // 5, rng)
    tx.stripes(img[:, w // 2:], (y1 - 18, y1), [ink, (250, 248, 240)])
    return SimObject("bottle", _centred(mesh), tx.printed(rng, img), _about_z(), "bottle", 0.35, 50.0)


def drill(rng: np.random.Generator) -> SimObject:
    z_to_x = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    body_prof = np.array([[0, 0], [0.026, 0], [0.032, 0.015], [0.032, 0.15], [0.026, 0.16], [0, 0.16]])
    chuck_prof = np.array([[0, 0.155], [0.015, 0.155], [0.015, 0.155], [0.011, 0.21], [0.011, 0.21], [0, 0.21]])
    shift = np.eye(4)
    shift[:3, 3] = (-0.06, 0.0, 0.17)
    body = merge([revolve(body_prof, 40), revolve(chuck_prof, 32)]).transformed(shift @ z_to_x)
    tilt = np.eye(4)
    a = np.deg2rad(12.0)
    tilt[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    tilt[:3, 3] = (0.005, 0.0, 0.095)
    grip = box((0.036, 0.03, 0.12)).transformed(tilt)
    battery = box((0.095, 0.075, 0.042), (0.0, 0.0, 0.021))
    mesh = merge([body, grip, battery]).with_uv((0.0, 0.0), (0.5, 0.5))
    color = tx.random_color(rng, (0.5, 0.8), (0.35, 0.6))
    return SimObject("drill", _centred(mesh), tx.plain(color), Symmetry(), "drill", 0.3, 30.0, textureless=True)


def bowl(rng: np.random.Generator) -> SimObject:
    R, Rb, H, t = 0.075, 0.035, 0.055, 0.005
    s = np.linspace(0, 1, 12)
    outer = np.stack([Rb + (R - Rb) * np.sin(s * np.pi / 2), H * (1 - np.cos(s * np.pi / 2))], 1)
    inner = np.stack([Rb - t + (R - Rb) * np.sin(s * np.pi / 2), t + (H - t) * (1 - np.cos(s * np.pi / 2))], 1)[::-1]
    prof = np.concatenate([[[0, 0]], outer, [[R - t, H]], inner, [[0, t]]])
    mesh = revolve(prof, 64)
    glaze, ring = tx.random_color(rng, (0.1, 0.4), (0.7, 0.95)), tx.random_color(rng)
    img = tx.plain(glaze, (256, 16))
    for v0, v1 in ((0.82, 0.88), (0.92, 0.95), (0.3, 0.34)):
        y0, y1 = _rows(v0, v1, 256)
        img[y0:y1] = ring
    return SimObject("bowl", _centred(mesh), img, _about_z(), "bowl", 0.5, 60.0)


TARGETS: dict[str, Callable[[np.random.Generator], SimObject]] = {
    "cereal_box": cereal_box, "tin_can": tin_can, "mug": mug, "bottle": bottle, "drill": drill, "bowl": bowl,
}


def make_targets(names: list[str], rng: np.random.Generator) -> list[SimObject]:
    """The named target objects (each from its own child generator of ``rng``, so adding one changes no other)."""
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown simulated object(s) {unknown}; available: {', '.join(TARGETS)}")
    seeds = {n: int(s) for n, s in zip(TARGETS, rng.integers(0, 2 ** 31, len(TARGETS)))}
    return [TARGETS[n](np.random.default_rng(seeds[n])) for n in names]


def clutter(rng: np.random.Generator, index: int) -> SimObject:
    """A random distractor: a printed block, a striped cylinder or a mottled ball (never a target shape)."""
    kind = ("block", "cylinder", "ball")[int(rng.integers(0, 3))]
    if kind == "block":
        size = (rng.uniform(0.05, 0.12), rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.16))
        mesh = box(size)
        w, h = int((2 * size[0] + 2 * size[1]) * 800), int((size[2] + 2 * size[1]) * 800)
        img = tx.mix(tx.random_color(rng), tx.random_color(rng), tx.value_noise(rng, (h, w), 4, 3))
        tx.put_text(img, "".join(rng.choice(list("ABCDEFGHKMNPRSTUVWXZ"), 4)), (10, h // 3, w // 2, 2 * h // 3),
                    tx.random_color(rng, value=(0.85, 1.0)), 2)
    elif kind == "cylinder":
        r, hh = rng.uniform(0.02, 0.045), rng.uniform(0.05, 0.15)
        mesh = revolve(np.array([[0, 0], [r, 0], [r, 0], [r, hh], [r, hh], [0, hh]]), 40)
        img = tx.plain(tx.random_color(rng), (64, 64))
        tx.stripes(img, (0, 64), [tx.random_color(rng) for _ in range(int(rng.integers(2, 6)))])
    else:
        r = rng.uniform(0.025, 0.05)
        a = np.linspace(-np.pi / 2, np.pi / 2, 16)
        mesh = revolve(np.stack([r * np.cos(a), r * np.sin(a) + r], 1), 32)
        img = tx.mix(tx.random_color(rng), tx.random_color(rng), tx.value_noise(rng, (64, 128), 4, 2))
    return SimObject(f"clutter_{index}_{kind}", _centred(mesh), img, Symmetry(), "clutter",
                     float(rng.uniform(0.05, 0.5)), 30.0)


def dominant_colors(texture: np.ndarray, k: int = 2, apart: int = 48) -> list[tx.Color]:
    """The ``k`` main colours of ``texture`` (H, W, 3), most frequent first: mean colours of the most frequent colour
    bins (8 levels per channel) that differ from those already chosen by more than ``apart`` in some channel;
    fewer when the texture has fewer such colours."""
    px = texture.reshape(-1, 3)
    code = (px // 32).astype(np.int64) @ np.array([64, 8, 1])
    counts = np.bincount(code, minlength=512)
    colors: list[np.ndarray] = []
    for c in np.argsort(-counts, kind="stable"):
        if counts[c] == 0 or len(colors) == k:
            break
        mean = px[code == c].mean(0)
        if all(np.abs(mean - m).max() > apart for m in colors):
            colors.append(mean)
    return [tuple(int(round(x)) for x in m) for m in colors]


def lookalike(rng: np.random.Generator, target: SimObject, index: int) -> SimObject:
    """A distractor resembling ``target``: about its size (0.85-1.15 per axis) in its two dominant colours (jittered),
    a cylinder with a label band when the target is round seen from above (can, mug, bottle, bowl), else a blotched
    block (box, drill)."""
    v = target.mesh.vertices
    size = (v.max(0) - v.min(0)) * rng.uniform(0.85, 1.15, 3)
    colors = dominant_colors(target.texture)
    if len(colors) == 1:
        colors.append(tuple(int(0.6 * c) for c in colors[0]))
    main, second = (tuple(int(x) for x in np.clip(np.add(c, rng.integers(-12, 13, 3)), 0, 255)) for c in colors)
    hull = ConvexHull(v[:, :2])
    if 4 * np.pi * hull.volume / hull.area ** 2 > 0.8:  # 2D hull: volume = area, area = perimeter
        r, h = min(size[0], size[1]) / 2, size[2]
        mesh = revolve(np.array([[0, 0], [r, 0], [r, 0], [r, h], [r, h], [0, h]]), 48)
        img = tx.plain(main, (64, 64))
        tx.stripes(img, (int(rng.integers(8, 24)), int(rng.integers(32, 56))), [second])
        kind = "cylinder"
    else:
        mesh = box(tuple(size))
        img = tx.mix(main, second, np.clip((tx.value_noise(rng, (64, 128), 4, 2) - 0.55) / 0.15, 0, 1))  # blotches
        kind = "block"
    return SimObject(f"clutter_{index}_{kind}_like_{target.name}", _centred(mesh), img, Symmetry(), "clutter",
                     float(target.specular * rng.uniform(0.7, 1.2)), target.shininess)
