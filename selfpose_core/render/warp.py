"""Depth-based image warping for warp-align: unproject a depth map, move the points, project, sample bilinearly.

Camera convention as in the renderer: OpenCV optical frame, pixel (u, v) centred at integer coordinates. All
functions are batched over B, differentiable w.r.t. depth, poses, intrinsics and the source image (through
``grid_sample``), and never produce NaN: invalid depth (0 or NaN) and points behind the camera are flagged in the
returned validity mask instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as Fn

from selfpose_core.geometry.se3 import make_T, transform_points
from selfpose_core.geometry.shapes import check_shape


def pixel_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(H, W, 2) pixel centre coordinates (u, v)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    return torch.stack([u, v], -1)


def unproject_depth(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (B, H, W, 3) of a depth map ``depth`` (B, H, W) (metres along z) with ``K`` (B, 3, 3).

    Invalid depth (0 or NaN) gives the point (0, 0, 0).
    """
    dims: dict[str, int] = {}
    check_shape(depth, ("B", "H", "W"), "depth", dims)
    check_shape(K, ("B", 3, 3), "K", dims)
    B, H, W = depth.shape
    d = torch.nan_to_num(depth, nan=0.0)
    uv = pixel_grid(H, W, dtype=d.dtype)
    fx, fy = K[:, 0, 0, None, None].to(d.dtype), K[:, 1, 1, None, None].to(d.dtype)
    cx, cy, s = K[:, 0, 2, None, None].to(d.dtype), K[:, 1, 2, None, None].to(d.dtype), K[:, 0, 1, None, None]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - s.to(d.dtype) * y) / fx
    return torch.stack([x * d, y * d, d], -1)


def project_points(X: torch.Tensor, K: torch.Tensor, *, near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (B, *, 2) and depth (B, *) of camera-frame points ``X`` (B, *, 3) with ``K`` (B, 3, 3).

    Points nearer than ``near`` get finite placeholder coordinates; check ``z >= near`` to know which are real.
    """
    check_shape(K, ("B", 3, 3), "K")
    if X.dim() < 2 or X.shape[0] != K.shape[0] or X.shape[-1] != 3:
        check_shape(X, ("B", "N", 3), "X")
    shape = X.shape
    Xf = X.reshape(shape[0], -1, 3)
    z = Xf[..., 2]
    zs = torch.where(z >= near, z, torch.ones_like(z))
    xy = (Xf[..., :2] / zs[..., None]) @ K[:, :2, :2].transpose(-1, -2).to(X.dtype) + K[:, None, :2, 2].to(X.dtype)
    return xy.reshape(shape[:-1] + (2,)), z.reshape(shape[:-1])


def sample_image(image: torch.Tensor, uv: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Sample ``image`` (B, C, H, W) at pixel coordinates ``uv`` (B, H', W', 2) -> (B, C, H', W').

    Outside the image the result is 0 (zero padding).
    """
    check_shape(image, ("B", "C", "H", "W"), "image")
    check_shape(uv, (image.shape[0], "H2", "W2", 2), "uv")
    H, W = image.shape[-2:]
    grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1).to(image.dtype)
    return Fn.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_image(image_src: torch.Tensor, depth_tgt: torch.Tensor, K_tgt: torch.Tensor, K_src: torch.Tensor,
               R_src_tgt: torch.Tensor, t_src_tgt: torch.Tensor, *, depth_src: torch.Tensor | None = None,
               occlusion_tol: float = 0.02, near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a source image into the target view using the target's depth.

    Each target pixel with depth is unprojected (``K_tgt`` (B, 3, 3)), moved into the source camera by
    ``R_src_tgt`` (B, 3, 3), ``t_src_tgt`` (B, 3) (the pose ``T_src_tgt``), projected with ``K_src`` and the source
    image ``image_src`` (B, C, Hs, Ws) is sampled bilinearly there.

    Returns: warped image (B, C, H, W) (0 where invalid) and validity (B, H, W) bool: target depth valid, point in
    front of the source camera, inside the source image, and, when ``depth_src`` (B, Hs, Ws) is given, not occluded
    in the source (|z - depth_src| <= ``occlusion_tol`` * z at the nearest source pixel, source depth valid).
    """
    dims: dict[str, int] = {}
    check_shape(image_src, ("B", "C", "Hs", "Ws"), "image_src", dims)
    check_shape(depth_tgt, ("B", "H", "W"), "depth_tgt", dims)
    check_shape(K_tgt, ("B", 3, 3), "K_tgt", dims)
    check_shape(K_src, ("B", 3, 3), "K_src", dims)
    B, _, Hs, Ws = image_src.shape
    valid_tgt = torch.isfinite(depth_tgt) & (depth_tgt > 0)
    X_tgt = unproject_depth(depth_tgt, K_tgt)
    X = transform_points(make_T(R_src_tgt, t_src_tgt), X_tgt.reshape(B, -1, 3)).reshape(X_tgt.shape)
    uv, z = project_points(X, K_src, near=near)
    u, v = uv[..., 0].detach(), uv[..., 1].detach()
    valid = valid_tgt & (z.detach() >= near) & (u > -0.5) & (u < Ws - 0.5) & (v > -0.5) & (v < Hs - 0.5)
    if depth_src is not None:
        check_shape(depth_src, (B, Hs, Ws), "depth_src")
        ui = u.round().clamp(0, Ws - 1).long()
        vi = v.round().clamp(0, Hs - 1).long()
        ds = torch.nan_to_num(depth_src, nan=0.0)[torch.arange(B)[:, None, None], vi, ui]
        zd = z.detach()
        valid &= (ds > 0) & ((zd - ds).abs() <= occlusion_tol * zd)
    warped = sample_image(image_src, uv) * valid[:, None].to(image_src.dtype)
    return warped, valid
