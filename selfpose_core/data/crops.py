"""Object crops: the square box around an object, the image crop, and the targets rendered in the crop's camera.

Boxes are (x0, y0, x1, y1) in pixel-edge coordinates (pixel (i, j) spans [j, j+1) x [i, i+1)), the convention of
``CameraIntrinsics.crop_resize``; keypoints and pixel centres use OpenCV's convention (pixel j has centre x = j).
Targets are rendered with :func:`selfpose_core.render.rasterizer.rasterize` directly in the crop's camera, so a
crop costs a crop-sized render whatever the size of the object in the full image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from selfpose_core.errors import ShapeError
from selfpose_core.render.rasterizer import rasterize
from selfpose_core.types import CameraIntrinsics, ObjectModel


@dataclass(slots=True)
class ObjectGeometry:
    """An object prepared for fast target rendering: float32 tensors plus what the pose networks predict."""

    vertices: torch.Tensor  # (V, 3)
    faces: torch.Tensor  # (F, 3) int64
    normals: torch.Tensor  # (V, 3) unit vertex normals
    keypoints: np.ndarray  # (9, 3) float64
    coord_centre: np.ndarray  # (3,)
    coord_half_extent: np.ndarray  # (3,)
    diameter: float
    symmetries: np.ndarray  # (S, 4, 4) symmetry transforms, identity first

    @classmethod
    def from_model(cls, model: ObjectModel, symmetries: np.ndarray | None = None) -> ObjectGeometry:
        v = np.asarray(model.vertices, np.float64)
        f = np.asarray(model.faces, np.int64)
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted face normals
        vn = np.zeros_like(v)
        for k in range(3):
            np.add.at(vn, f[:, k], fn)
        vn /= np.linalg.norm(vn, axis=1, keepdims=True).clip(1e-12)
        lo, hi = v.min(axis=0), v.max(axis=0)
        syms = np.eye(4)[None] if symmetries is None else np.asarray(symmetries, np.float64)
        if syms.ndim != 3 or syms.shape[1:] != (4, 4):
            raise ShapeError(f"symmetries of {model.name} must be (S, 4, 4), got {syms.shape}")
        return cls(torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(f), torch.as_tensor(vn, dtype=torch.float32),
                   np.asarray(model.keypoints, np.float64), (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-6),
                   float(model.diameter), syms)


def amodal_box(K: np.ndarray, T_cam_obj: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """(4,) edge-coordinate box of the projected ``vertices`` (N, 3) (object frame) at pose ``T_cam_obj``."""
    X = vertices @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    z = np.clip(X[:, 2], 1e-6, None)
    u = K[0, 0] * X[:, 0] / z + K[0, 2]
    v = K[1, 1] * X[:, 1] / z + K[1, 2]
    return np.array([u.min() + 0.5, v.min() + 0.5, u.max() + 0.5, v.max() + 0.5])


def square_box(box: np.ndarray, padding: float = 1.3, scale: float = 1.0,
               shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(4,) square box of side ``padding * scale * longest side`` centred at ``box``'s centre + ``shift`` * side."""
    box = np.asarray(box, np.float64)
    side = max(box[2] - box[0], box[3] - box[1], 1.0) * padding * scale
    cx = (box[0] + box[2]) / 2 + shift[0] * side / padding
    cy = (box[1] + box[3]) / 2 + shift[1] * side / padding
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def crop_affine(box: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) affine map from image pixels to crop pixels (OpenCV centres): u' = (u + 0.5 - x0) * s - 0.5."""
    sx = size / (box[2] - box[0])
    sy = size / (box[3] - box[1])
    return np.array([[sx, 0.0, (0.5 - box[0]) * sx - 0.5], [0.0, sy, (0.5 - box[1]) * sy - 0.5]])


def crop_image(image: np.ndarray, box: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``box`` from ``image`` (H, W[, C]); outside the image is 0."""
    return cv2.warpAffine(image, crop_affine(box, size), (size, size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def render_targets(obj: ObjectGeometry, K: np.ndarray, T_cam_obj: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Render one object alone at ``T_cam_obj`` through ``K`` (3, 3) into an image of ``size`` = (h, w).

    Returns float32 arrays: ``mask`` (h, w) in {0, 1}, ``coords`` (h, w, 3) object coordinates in metres (0 off
    the object), ``normals`` (h, w, 3) camera-frame unit normals, ``depth`` (h, w) metres (0 off the object).
    """
    h, w = size
    R = torch.as_tensor(T_cam_obj[:3, :3], dtype=torch.float32)
    t = torch.as_tensor(T_cam_obj[:3, 3], dtype=torch.float32)
    X = obj.vertices @ R.T + t
    z = X[:, 2]
    Kt = torch.as_tensor(K, dtype=torch.float32)
    xy = torch.stack([Kt[0, 0] * X[:, 0] / z.clamp_min(1e-6) + Kt[0, 2], Kt[1, 1] * X[:, 1] / z.clamp_min(1e-6) + Kt[1, 2]], -1)
    frag = rasterize(xy[None], z[None], obj.faces, (h, w))
    fid = frag.face_ids[0].reshape(-1)
    hit = torch.nonzero(fid >= 0).squeeze(1)
    tri = obj.faces[fid[hit]]  # (P, 3) faces of the covered pixels only
    bary = frag.barycentrics[0].reshape(-1, 3)[hit].unsqueeze(-1)  # (P, 3, 1)
    coords = torch.zeros(h * w, 3)
    coords[hit] = (obj.vertices[tri] * bary).sum(-2)
    n = (obj.normals[tri] * bary).sum(-2) @ R.T
    normals = torch.zeros(h * w, 3)
    normals[hit] = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    mask = (fid >= 0).float()
    return {"mask": mask.reshape(h, w).numpy(), "coords": coords.reshape(h, w, 3).numpy(),
            "normals": normals.reshape(h, w, 3).numpy(), "depth": frag.depth[0].numpy()}


def project_points(K: np.ndarray, T_cam_obj: np.ndarray, X: np.ndarray) -> np.ndarray:
    """(..., N, 2) OpenCV pixels of object points ``X`` (..., N, 3) at pose(s) ``T_cam_obj`` (..., 4, 4)."""
    Xc = X @ np.swapaxes(T_cam_obj[..., :3, :3], -1, -2) + T_cam_obj[..., None, :3, 3]
    z = np.clip(Xc[..., 2], 1e-6, None)
    return np.stack([K[0, 0] * Xc[..., 0] / z + K[0, 2], K[1, 1] * Xc[..., 1] / z + K[1, 2]], -1)


def pool_targets(mask: np.ndarray, coords: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``stride`` x ``stride`` blocks: mask (h, w) -> fraction covered, coords (h, w, 3) -> mean over the
    covered pixels (the block's centre is the output cell's centre, see ``backbones.pixel_centres``)."""
    if stride == 1:
        return mask, coords
    h, w = mask.shape
    hs, ws = h // stride, w // stride
    m = mask[:hs * stride, :ws * stride].reshape(hs, stride, ws, stride)
    c = coords[:hs * stride, :ws * stride].reshape(hs, stride, ws, stride, 3)
    cover = m.sum(axis=(1, 3))
    mean = (c * m[..., None]).sum(axis=(1, 3)) / np.clip(cover, 1, None)[..., None]
    return cover / stride ** 2, mean


def pose_targets(obj: ObjectGeometry, K_crop: CameraIntrinsics, T_cam_obj: np.ndarray, crop_size: int,
                 stride: int, visible: np.ndarray | None = None,
                 render: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Everything a pose network is trained on for one crop (float32 arrays, ``h = crop_size / stride``):

    ``silhouette`` (h, h) amodal mask, ``visible`` (h, h) visible mask (``visible`` (crop, crop) bool given, else
    the silhouette), ``coords`` (S, 3, h, h) normalised coordinates per symmetry, ``keypoints`` (S, 9, 2) crop
    pixels per symmetry, ``scale`` () longest side of the object's box in crop pixels. ``render`` is
    :func:`render_targets`' output for this crop when the caller has it already.
    """
    K = K_crop.K
    r = render_targets(obj, K, T_cam_obj, (crop_size, crop_size)) if render is None else render
    sil, coords = pool_targets(r["mask"], r["coords"], stride)
    vis = sil if visible is None else pool_targets(r["mask"] * visible, r["coords"], stride)[0]
    syms = obj.symmetries  # X_sym = S^-1 X: the coordinates the network would predict for the symmetric pose
    S_inv = np.linalg.inv(syms)
    c_sym = coords.reshape(-1, 3) @ np.swapaxes(S_inv[:, :3, :3], 1, 2) + S_inv[:, None, :3, 3]  # (S, hw, 3)
    c_norm = (c_sym - obj.coord_centre) / obj.coord_half_extent
    hh, ww = sil.shape
    c_norm = c_norm.reshape(len(syms), hh, ww, 3).transpose(0, 3, 1, 2) * (sil > 0.5)[None, None]
    kp = project_points(K, T_cam_obj @ syms, obj.keypoints[None])  # (S, 9, 2)
    box = amodal_box(K, T_cam_obj, obj.vertices.numpy().astype(np.float64))
    return {"silhouette": (sil > 0.5).astype(np.float32), "visible": (vis > 0.5).astype(np.float32),
            "coords": c_norm.astype(np.float32), "keypoints": kp.astype(np.float32),
            "scale": np.float32(max(box[2] - box[0], box[3] - box[1]))}


def crop_sample(obj: ObjectGeometry, image: np.ndarray, K_crop: CameraIntrinsics, T_cam_obj: np.ndarray,
                obj_index: int, stride: int, n_sym: int, visible: np.ndarray | None = None,
                render: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """One pose-network training sample: the (s, s, 3) float crop ``image`` in [0, 1] with its targets
    (:func:`pose_targets`), symmetry entries padded to ``n_sym`` so samples of different objects collate.

    Keys: image (3, s, s), obj_index, silhouette, visible, coords (n_sym, 3, h, h), keypoints (n_sym, 9, 2), scale,
    K (3, 3) of the crop, T (4, 4) ``T_cam_obj``.
    """
    s = image.shape[0]
    t = pose_targets(obj, K_crop, T_cam_obj, s, stride, visible, render=render)
    coords, kp = t["coords"], t["keypoints"]
    if len(coords) < n_sym:
        pad = n_sym - len(coords)
        coords = np.concatenate([coords, np.repeat(coords[:1], pad, 0)])
        kp = np.concatenate([kp, np.repeat(kp[:1], pad, 0)])
    return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "obj_index": torch.tensor(obj_index), "silhouette": torch.from_numpy(t["silhouette"]),
            "visible": torch.from_numpy(t["visible"]), "coords": torch.from_numpy(coords),
            "keypoints": torch.from_numpy(kp), "scale": torch.tensor(t["scale"]),
            "K": torch.as_tensor(K_crop.K, dtype=torch.float32), "T": torch.as_tensor(T_cam_obj, dtype=torch.float32)}


def cut_crop(image: np.ndarray, K: CameraIntrinsics, crop_box: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) float32 crop in [0, 1] of the uint8 ``image`` over the square ``crop_box`` (4,) and the
    crop's (3, 3) camera matrix."""
    img = cv2.warpAffine(image, crop_affine(crop_box, size), (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT).astype(np.float32) / 255.0
    return img, K.crop_resize(tuple(crop_box), size).K


def crop_to_image(points: torch.Tensor, crop_box: torch.Tensor, size: int) -> torch.Tensor:
    """Crop pixels (B, N, 2) of the ``size`` crops of ``crop_box`` (B, 4) -> image pixels (OpenCV centres)."""
    cb = crop_box.to(points.dtype)
    s = (cb[:, 2:] - cb[:, :2]) / size
    return (points + 0.5) * s[:, None] + cb[:, None, :2] - 0.5
