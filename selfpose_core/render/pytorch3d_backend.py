"""PyTorch3D's mesh rasteriser behind :func:`selfpose_core.render.rasterizer.rasterize` (only when installed).

Only the non-differentiable step is delegated; barycentrics, depth and gradients are recomputed by the renderer as
for the other backends. Pixel coordinates are mapped to PyTorch3D's NDC (+x left, +y up, the shorter image side
spanning [-1, 1], pixel i's centre at ``-o + (r i + o) / S`` with r the NDC range and o = r / 2 along an axis of
S pixels, output row/column order reversed) so that both sample the same pixel centres.
PyTorch3D counts a pixel centre as inside only when all barycentrics are > 0, so ties on edges may differ.
"""
from __future__ import annotations

import torch


def _ndc(coord: torch.Tensor, size: int, other: int) -> torch.Tensor:
    """NDC coordinate of continuous pixel coordinate ``coord`` (pixel centres at integers, index reversed)."""
    rng = 2.0 * max(size / other, 1.0)
    off = rng / 2.0
    return -off + (rng * ((size - 1) - coord) + off) / size


def rasterize_pytorch3d(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, H: int, W: int,
                        near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`selfpose_core.render.rasterizer.rasterize_torch`."""
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    B, F = z.shape[0], faces.shape[1]
    zz = torch.where(z >= near, z, torch.full_like(z, -1.0))  # PyTorch3D drops faces with a vertex at z < 1e-8
    verts = torch.stack([_ndc(xy[..., 0], W, H), _ndc(xy[..., 1], H, W), zz], -1)
    meshes = Meshes(verts=list(verts), faces=list(faces.expand(B, F, 3)))
    pix_to_face, zbuf, bary, _ = rasterize_meshes(meshes, image_size=(H, W), blur_radius=0.0, faces_per_pixel=1,
                                                  perspective_correct=True, cull_backfaces=False)
    pix = pix_to_face[..., 0]
    hit = pix >= 0
    offset = (torch.arange(B, device=pix.device) * F)[:, None, None]
    face_ids = torch.where(hit, pix - offset, torch.full_like(pix, -1)).long().cpu()
    depth = torch.where(hit, zbuf[..., 0], torch.zeros_like(zbuf[..., 0])).float().cpu()
    bary = torch.where(hit[..., None], bary[..., 0, :], torch.zeros_like(bary[..., 0, :])).float().cpu()
    return face_ids, depth, bary
