"""Ray-cast rendering of the simulated world with Open3D's ``RaycastingScene`` (Embree, C++).

One primary ray per pixel centre (pixel (u, v) looks along ``K^-1 [u, v, 1]``, OpenCV optical frame) gives the
first hit's triangle and barycentric coordinates; from them we interpolate texture coordinates and normals,
sample the true texture (bilinear), and shade with Blinn-Phong (ambient + Lambert + specular) from a point light
with cast shadows (one occlusion ray per lit pixel). Depth is the metric z of the hit (the ray direction has
unit z in the camera frame, so the hit distance in ray units is z). No anti-aliasing: the camera model adds blur.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from selfpose_core.data.sim.scene import Scene
from selfpose_core.errors import ShapeError
from selfpose_core.types import CameraIntrinsics, ObjectModel

_INVALID = np.uint32(o3d.t.geometry.RaycastingScene.INVALID_ID)
SHADOW_OFFSET = 1e-3  # metres along the normal before casting the shadow ray


@dataclass(slots=True)
class RenderOutput:
    """One rendered view. color: (H, W, 3) float32 linear radiance (about [0, 1]); depth: (H, W) float32 metres
    (0 where nothing was hit); instance: (H, W) int32 index into ``scene.instances`` (-1 none); albedo_luma,
    specular, cos_view: (H, W) float32 surface albedo luminance, specular term and |n . view| (for depth holes)."""

    color: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    albedo_luma: np.ndarray
    specular: np.ndarray
    cos_view: np.ndarray


def camera_directions(K: CameraIntrinsics, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
    """Ray directions (h, w, 3) float32 in the camera frame, ``K^-1 [u, v, 1]`` for the pixel centres of a window."""
    rows = rows or slice(0, K.height)
    cols = cols or slice(0, K.width)
    v, u = np.mgrid[rows, cols].astype(np.float32)
    return np.stack([(u - np.float32(K.cx)) / np.float32(K.fx), (v - np.float32(K.cy)) / np.float32(K.fy),
                     np.ones_like(u)], -1)


def pixel_rays(K: CameraIntrinsics, T_world_cam: np.ndarray, rows: slice | None = None,
               cols: slice | None = None, directions: np.ndarray | None = None) -> np.ndarray:
    """Rays (h, w, 6) float32 (origin, direction with unit camera-z) through the pixel centres of a window;
    ``directions`` = :func:`camera_directions` of that window if already computed."""
    if np.shape(T_world_cam) != (4, 4):
        raise ShapeError(f"T_world_cam must be (4, 4), got {np.shape(T_world_cam)}")
    d_cam = camera_directions(K, rows, cols) if directions is None else directions
    rays = np.empty(d_cam.shape[:-1] + (6,), np.float32)
    rays[..., 3:] = d_cam @ T_world_cam[:3, :3].T.astype(np.float32)
    rays[..., :3] = T_world_cam[:3, 3]
    return rays


def srgb_to_linear(img: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> float32 linear in [0, 1] (IEC 61966-2-1)."""
    c = img.astype(np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


class TextureAtlas:
    """All textures of a scene packed into one float32 image (shelf packing) with a one-texel border that repeats
    the opposite edge (u always wraps; v wraps for tiling textures, else the edge row is repeated), so one bilinear
    ``cv2.remap`` samples every pixel of a frame.

    Args:
        textures: (h_k, w_k, 3) float32 linear images. tiling: per texture, whether v wraps too.
    """

    def __init__(self, textures: list[np.ndarray], tiling: list[bool], width: int = 2048) -> None:
        padded = []
        for tex, tile in zip(textures, tiling):
            t = np.concatenate([tex[:, -1:], tex, tex[:, :1]], 1)
            top, bottom = (t[-1:], t[:1]) if tile else (t[:1], t[-1:])
            padded.append(np.concatenate([top, t, bottom], 0))
        width = max(width, max(p.shape[1] for p in padded))
        order = sorted(range(len(padded)), key=lambda k: -padded[k].shape[0])
        pos = [(0, 0)] * len(padded)
        x = y = shelf = 0
        for k in order:
            h, w = padded[k].shape[:2]
            if x + w > width:
                x, y, shelf = 0, y + shelf, 0
            pos[k] = (x, y)
            x, shelf = x + w, max(shelf, h)
        self.image = np.zeros((y + shelf, width, 3), np.float32)
        for k, (px, py) in enumerate(pos):
            h, w = padded[k].shape[:2]
            self.image[py:py + h, px:px + w] = padded[k]
        self.offset = np.array([(px + 1, py + 1) for px, py in pos], np.float32)  # (K, 2) inner top-left
        self.size = np.array([(t.shape[1], t.shape[0]) for t in textures], np.float32)  # (K, 2) = (w, h)
        self.tiling = np.asarray(tiling, bool)

    def sample(self, which: np.ndarray, uv: np.ndarray) -> np.ndarray:
        """Bilinear colours (M, 3) of textures ``which`` (M,) int at ``uv`` (M, 2) (v = 0 at the bottom row)."""
        w, h = self.size[which, 0], self.size[which, 1]
        x = np.mod(uv[:, 0], 1.0) * w - 0.5 + self.offset[which, 0]
        vv = 1.0 - uv[:, 1]
        y = np.where(self.tiling[which], np.mod(vv, 1.0), np.clip(vv, 0.0, 1.0)) * h - 0.5 + self.offset[which, 1]
        m = len(uv)
        cols = 1024
        n = -(-m // cols) * cols
        mx = np.zeros(n, np.float32)
        my = np.zeros(n, np.float32)
        mx[:m], my[:m] = x, y
        out = cv2.remap(self.image, mx.reshape(-1, cols), my.reshape(-1, cols), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
        return out.reshape(-1, 3)[:m]


class SceneRaycaster:
    """Renders a :class:`Scene` (static during a trajectory) from any camera pose.

    Args:
        scene: the world. shadows: cast shadow rays (default True).
    """

    def __init__(self, scene: Scene, shadows: bool = True) -> None:
        self.scene = scene
        self.shadows = shadows
        self._rc = o3d.t.geometry.RaycastingScene()
        norms, uvs, faces, self._face_offset = [], [], [], []
        n_v = n_f = 0
        for k, inst in enumerate(scene.instances):
            R, t = inst.T_world_obj[:3, :3], inst.T_world_obj[:3, 3]
            v = inst.obj.mesh.vertices @ R.T + t
            gid = self._rc.add_triangles(o3d.core.Tensor(v.astype(np.float32)),
                                         o3d.core.Tensor(inst.obj.mesh.faces.astype(np.uint32)))
            if gid != k:
                raise RuntimeError(f"Open3D returned geometry id {gid} for instance {k}")
            norms.append(inst.obj.mesh.normals @ R.T)
            uvs.append(inst.obj.mesh.uv)
            faces.append(inst.obj.mesh.faces + n_v)
            self._face_offset.append(n_f)
            n_v += len(v)
            n_f += len(inst.obj.mesh.faces)
        self._attr = np.concatenate([np.concatenate(norms), np.concatenate(uvs)], 1).astype(np.float32)  # n, uv
        self._faces = np.concatenate(faces).astype(np.int32)
        self._face_offset = np.asarray(self._face_offset, dtype=np.int64)
        self._atlas = TextureAtlas([srgb_to_linear(i.obj.texture) for i in scene.instances],
                                   [i.tiling for i in scene.instances])
        self._spec = np.array([i.obj.specular for i in scene.instances], np.float32)
        self._shin = np.array([i.obj.shininess for i in scene.instances], np.float32)
        self._single = {k: self._single_scene(k) for k, i in enumerate(scene.instances) if i.obj_id > 0}
        self._dirs: tuple[CameraIntrinsics, np.ndarray] | None = None

    def render(self, T_world_cam: np.ndarray, K: CameraIntrinsics) -> RenderOutput:
        """Render the view of the camera at ``T_world_cam`` (4, 4) with intrinsics ``K``."""
        H, W = K.height, K.width
        if self._dirs is None or self._dirs[0] != K:
            self._dirs = (K, camera_directions(K))
        rays = pixel_rays(K, T_world_cam, directions=self._dirs[1]).reshape(-1, 6)
        hit = self._rc.cast_rays(o3d.core.Tensor(rays))
        t = hit["t_hit"].numpy()
        gid = hit["geometry_ids"].numpy()
        ok = np.isfinite(t) & (gid != _INVALID)
        idx = slice(None) if ok.all() else np.flatnonzero(ok)  # a closed room: usually every pixel hits
        g = gid[idx].astype(np.int64)
        face = self._faces[self._face_offset[g] + hit["primitive_ids"].numpy()[idx].astype(np.int64)]
        ab = hit["primitive_uvs"].numpy()[idx]
        b1, b2 = ab[:, :1], ab[:, 1:]
        b0 = 1.0 - b1 - b2
        f0, f1, f2 = face[:, 0], face[:, 1], face[:, 2]
        d = rays[idx, 3:]
        p = rays[idx, :3] + t[idx, None] * d
        attr = self._attr[f0] * b0 + self._attr[f1] * b1 + self._attr[f2] * b2
        n, uv = attr[:, :3], attr[:, 3:]
        n /= np.maximum(_norm(n), 1e-12)
        view = -d / _norm(d)
        cos_v = _dot(n, view)
        n[cos_v < 0] *= -1.0
        cos_v = np.abs(cos_v)
        albedo = self._atlas.sample(g, uv)
        spec_k, shin = self._spec[g], self._shin[g]
        light = self.scene.light
        to_light = light.position.astype(np.float32) - p
        dist = _norm(to_light)
        ldir = to_light / dist
        lambert = _dot(n, ldir)
        lit = lambert > 0
        if self.shadows and lit.any():
            sel = np.flatnonzero(lit)
            srays = np.empty((len(sel), 6), np.float32)
            np.take(n, sel, axis=0, out=srays[:, :3])
            srays[:, :3] *= np.float32(SHADOW_OFFSET)
            srays[:, :3] += np.take(p, sel, axis=0)
            np.subtract(light.position.astype(np.float32), srays[:, :3], out=srays[:, 3:])
            occluded = self._rc.test_occlusions(o3d.core.Tensor(srays), tnear=1e-4, tfar=1.0).numpy().astype(bool)
            lit[sel[occluded]] = False
        ref = np.linalg.norm(light.position - self.scene.table_center)
        falloff = (ref / dist[:, 0]) ** 2
        half = ldir + view
        half /= np.maximum(_norm(half), 1e-12)
        spec = np.where(lit, spec_k * np.clip(_dot(n, half), 0, 1) ** shin * falloff, 0.0)
        diffuse = np.where(lit, lambert * falloff, 0.0)
        amb, lc = light.ambient.astype(np.float32), light.color.astype(np.float32)
        color = np.zeros((H * W, 3), np.float32)
        rad = diffuse[:, None] * lc
        rad += amb
        rad *= albedo
        rad += spec[:, None] * lc
        color[idx] = rad
        depth = np.zeros(H * W, np.float32)
        depth[idx] = t[idx]
        inst_map = np.full(H * W, -1, np.int32)
        inst_map[idx] = g
        luma = np.zeros(H * W, np.float32)
        luma[idx] = albedo @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        spec_map = np.zeros(H * W, np.float32)
        spec_map[idx] = spec
        cos_map = np.zeros(H * W, np.float32)
        cos_map[idx] = cos_v
        return RenderOutput(color.reshape(H, W, 3), depth.reshape(H, W), inst_map.reshape(H, W),
                            luma.reshape(H, W), spec_map.reshape(H, W), cos_map.reshape(H, W))

    def full_mask(self, index: int, T_world_cam: np.ndarray, K: CameraIntrinsics) -> np.ndarray:
        """(H, W) bool silhouette of instance ``index`` alone (ignoring occluders), ray-cast in its projected box."""
        if index not in self._single:
            self._single[index] = self._single_scene(index)
        mask = np.zeros((K.height, K.width), bool)
        box = _projected_box(self._verts_of(index), T_world_cam, K)
        if box is None:
            return mask
        x0, y0, x1, y1 = box
        rays = pixel_rays(K, T_world_cam, slice(y0, y1), slice(x0, x1))
        t = self._single[index].cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        mask[y0:y1, x0:x1] = np.isfinite(t)
        return mask

    def _single_scene(self, index: int) -> o3d.t.geometry.RaycastingScene:
        rc = o3d.t.geometry.RaycastingScene()
        rc.add_triangles(o3d.core.Tensor(self._verts_of(index).astype(np.float32)),
                         o3d.core.Tensor(self.scene.instances[index].obj.mesh.faces.astype(np.uint32)))
        return rc

    def _verts_of(self, index: int) -> np.ndarray:
        inst = self.scene.instances[index]
        R, t = inst.T_world_obj[:3, :3], inst.T_world_obj[:3, 3]
        return inst.obj.mesh.vertices @ R.T + t


def _norm(x: np.ndarray) -> np.ndarray:
    """Row norms (M, 1) of (M, 3)."""
    return np.sqrt(_dot(x, x))[:, None]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row dot products (M,) of (M, 3) arrays."""
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _projected_box(points_world: np.ndarray, T_world_cam: np.ndarray,
                   K: CameraIntrinsics) -> tuple[int, int, int, int] | None:
    """Integer pixel window (x0, y0, x1, y1) (exclusive ends) containing the projection of the points, clipped to
    the image; the whole image if some point is behind the camera; None if it misses the image."""
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    X = (points_world - t) @ R
    if (X[:, 2] <= 1e-6).any():
        return 0, 0, K.width, K.height
    u = K.fx * X[:, 0] / X[:, 2] + K.cx
    v = K.fy * X[:, 1] / X[:, 2] + K.cy
    x0, x1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, K.width)
    y0, y1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, K.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def render_cad(models: list[ObjectModel], T_cam_obj: list[np.ndarray], K: CameraIntrinsics,
               color: tuple[int, int, int] = (200, 200, 205)) -> np.ndarray:
    """Plain flat-shaded render (H, W, 3) uint8 of untextured models at poses ``T_cam_obj`` (4, 4) each, black
    background; the shade of a face is ``0.2 + 0.8 |n . view|`` (a head light)."""
    rc = o3d.t.geometry.RaycastingScene()
    normals = []
    for m, T in zip(models, T_cam_obj):
        v = m.vertices @ T[:3, :3].T + T[:3, 3]
        rc.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(m.faces.astype(np.uint32)))
        fn = np.cross(v[m.faces[:, 1]] - v[m.faces[:, 0]], v[m.faces[:, 2]] - v[m.faces[:, 0]])
        normals.append(fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12))
    rays = pixel_rays(K, np.eye(4)).reshape(-1, 6)
    hit = rc.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    idx = np.flatnonzero(np.isfinite(t))
    img = np.zeros((K.height * K.width, 3), np.uint8)
    if len(idx):
        g = hit["geometry_ids"].numpy()[idx]
        pid = hit["primitive_ids"].numpy()[idx]
        n = np.empty((len(idx), 3))
        for k in np.unique(g):
            sel = g == k
            n[sel] = normals[k][pid[sel]]
        d = rays[idx, 3:] / np.linalg.norm(rays[idx, 3:], axis=1, keepdims=True)
        shade = 0.2 + 0.8 * np.abs(np.einsum("ij,ij->i", n, d))
        img[idx] = np.clip(shade[:, None] * np.asarray(color, np.float64), 0, 255).astype(np.uint8)
    return img.reshape(K.height, K.width, 3)
