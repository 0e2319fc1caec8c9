"""Batched differentiable rendering of meshes: mask, silhouette, depth, object coordinates, attributes, texture.

Split as in nvdiffrast (Laine et al. 2020): a non-differentiable z-buffer rasteriser picks the face seen at each
pixel centre (:mod:`selfpose_core.render.rasterizer`); torch then recomputes that face's perspective-correct
barycentrics and depth from the projected vertices, so gradients reach ``R``, ``t``, ``K``, the vertices, the
attributes and the texture; the silhouette gets its pose gradient from the contour edges
(:mod:`selfpose_core.render.silhouette`). Camera: OpenCV optical frame, ``x_img = K (R X + t)``, pixel (u, v)
covers [u-0.5, u+0.5] x [v-0.5, v+0.5] and is sampled at its centre.

Documented behaviour at the edges: faces with a vertex nearer than ``near`` (behind the camera or crossing the
near plane) are dropped, not clipped; degenerate faces cover nothing; parts outside the image are cut off; an
empty mesh renders as background; nothing produces NaN. Depth is z along the optical axis (not the ray length).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.render.mesh import RenderMesh, batch_meshes
from selfpose_core.render.rasterizer import rasterize
from selfpose_core.render.silhouette import antialias_mask, contour_edges


@dataclass(slots=True)
class RenderOutput:
    """Everything one :func:`render` call produces for B views of H x W pixels (background = 0 / -1 / False)."""

    mask: torch.Tensor  # (B, H, W) bool, a face covers the pixel centre
    silhouette: torch.Tensor | None  # (B, H, W) float coverage in [0, 1], differentiable (w.r.t. pose, vertices, K)
    depth: torch.Tensor  # (B, H, W) float metres along the optical axis, 0 = background, differentiable
    coords: torch.Tensor | None  # (B, H, W, 3) object coordinates (metres, object frame), 0 = background
    attributes: torch.Tensor | None  # (B, H, W, C) interpolated RenderMesh.attributes
    texture: torch.Tensor | None  # (B, H, W, Ct) RenderMesh.texture sampled bilinearly at the interpolated uv
    face_ids: torch.Tensor  # (B, H, W) int64 face index into the view's mesh, -1 = background
    barycentrics: torch.Tensor  # (B, H, W, 3) perspective-correct, differentiable, 0 = background
    vertex_visibility: torch.Tensor | None  # (B, V) bool, V = the largest mesh's vertex count


def project_vertices(vertices: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                     near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (B, V, 2) and depth (B, V) of ``vertices`` (V, 3) or (B, V, 3) seen from poses
    ``R`` (B, 3, 3), ``t`` (B, 3) with intrinsics ``K`` (B, 3, 3). Vertices nearer than ``near`` get finite
    placeholder pixel coordinates (they are never drawn)."""
    X = vertices @ R.transpose(-1, -2) + t[:, None, :]
    z = X[..., 2]
    zs = torch.where(z >= near, z, torch.ones_like(z))
    xn = X[..., :2] / zs[..., None]
    xy = xn @ K[:, :2, :2].transpose(-1, -2) + K[:, None, :2, 2]
    return xy, z


def _check_inputs(R: torch.Tensor, t: torch.Tensor, K: torch.Tensor) -> int:
    dims: dict[str, int] = {}
    check_shape(R, ("B", 3, 3), "R", dims)
    check_shape(t, ("B", 3), "t", dims)
    check_shape(K, ("B", 3, 3), "K", dims)
    return dims["B"]


def _pad(meshes: list[RenderMesh], dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    """Stack meshes into (M, Vmax, 3) vertices and (M, Fmax, 3) faces; padded faces are degenerate (0, 0, 0)."""
    Vm = max(m.num_vertices for m in meshes)
    Fm = max(m.num_faces for m in meshes)
    Em = max(len(m.edges()[0]) for m in meshes)
    M = len(meshes)
    # the padded vertex slot keeps every face index valid even for empty meshes
    Vm1 = max(Vm, 1)
    verts = torch.stack([Fn.pad(m.vertices.to(dtype), (0, 0, 0, Vm1 - m.num_vertices)) for m in meshes])
    faces = torch.zeros((M, Fm, 3), dtype=torch.int64)
    edges = torch.zeros((M, Em, 2), dtype=torch.int64)
    edge_faces = torch.full((M, Em, 2), -1, dtype=torch.int64)
    vvalid = torch.zeros((M, Vm1), dtype=torch.bool)
    for i, m in enumerate(meshes):
        faces[i, :m.num_faces] = m.faces
        e, ef = m.edges()
        edges[i, :len(e)] = e
        edge_faces[i, :len(e)] = ef
        vvalid[i, :m.num_vertices] = True
    out: dict[str, torch.Tensor | None] = dict(vertices=verts, faces=faces, edges=edges, edge_faces=edge_faces,
                                               vertex_valid=vvalid, attributes=None)
    if all(m.attributes is not None for m in meshes):
        C = {m.attributes.shape[1] for m in meshes}
        if len(C) != 1:
            raise ShapeError(f"all meshes of one render call need the same attribute channels, got {sorted(C)}")
        out["attributes"] = torch.stack([Fn.pad(m.attributes.to(dtype), (0, 0, 0, Vm1 - m.num_vertices))
                                         for m in meshes])
    return out


def render(meshes: RenderMesh | Sequence[RenderMesh], R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
           size: tuple[int, int], *, coords: bool = True, attributes: bool = True, silhouette: bool = True,
           visibility: bool = True, near: float = 1e-3, backend: str = "auto") -> RenderOutput:
    """Render B views of one mesh (shared) or of one mesh per view.

    Args:
        meshes: a :class:`RenderMesh` or a sequence of B of them.
        R: (B, 3, 3) rotations ``R_cam_obj``; t: (B, 3) translations (metres); K: (B, 3, 3) intrinsics of the
            output image (for a crop, the crop's K, e.g. ``CameraIntrinsics.crop_resize``).
        size: (H, W) output size in pixels.
        coords / attributes / silhouette / visibility: compute those outputs (``None`` otherwise; attributes and
            texture also ``None`` when the meshes lack them).
        near: near plane in metres; faces with a vertex nearer are dropped.
        backend: rasteriser backend, see :func:`selfpose_core.render.rasterizer.rasterize`.

    Returns: :class:`RenderOutput`; float outputs have the dtype of ``R``/``t``.
    Gradients: depth, coords, attributes, texture and barycentrics are differentiable w.r.t. R, t, K, vertices,
    attributes and texture inside the mask; the silhouette along the contour. Mask, face ids and visibility are
    not differentiable.
    """
    B = _check_inputs(R, t, K)
    H, W = int(size[0]), int(size[1])
    if H < 0 or W < 0:
        raise ShapeError(f"render size must be (H, W) >= 0, got {size}")
    dtype = torch.promote_types(R.dtype, t.dtype)
    mesh_list = batch_meshes(meshes, B)
    packed = _pad(mesh_list, dtype)
    M = len(mesh_list)
    mesh_of_view = torch.zeros(B, dtype=torch.int64) if M == 1 else torch.arange(B)
    verts = packed["vertices"]  # (M, V, 3)
    faces = packed["faces"]  # (M, F, 3)
    R, t, K = R.to(dtype), t.to(dtype), K.to(dtype)
    xy, z = project_vertices(verts if M > 1 else verts[0], R, t, K, near)  # (B, V, 2), (B, V)
    frags = rasterize(xy, z, faces, (H, W), near=near, backend=backend)
    face_ids = frags.face_ids
    mask = face_ids >= 0

    lin = mask.reshape(-1).nonzero(as_tuple=True)[0]  # (P,) covered pixels
    b = torch.div(lin, H * W, rounding_mode="floor")
    px = (lin % W).to(dtype)
    py = (torch.div(lin, W, rounding_mode="floor") % H).to(dtype)
    f = face_ids.reshape(-1)[lin]
    mb = mesh_of_view[b]
    vi = faces[mb, f]  # (P, 3)

    geo_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (R, t, K, verts))
    if geo_grad:
        tri = xy[b[:, None], vi]  # (P, 3, 2)
        tz = z[b[:, None], vi]  # (P, 3)
        x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
        x1, y1 = tri[:, 1, 0], tri[:, 1, 1]
        x2, y2 = tri[:, 2, 0], tri[:, 2, 1]
        ia = 1.0 / ((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0))
        w = torch.stack([((x1 - px) * (y2 - py) - (x2 - px) * (y1 - py)) * ia,
                         ((x2 - px) * (y0 - py) - (x0 - px) * (y2 - py)) * ia,
                         ((x0 - px) * (y1 - py) - (x1 - px) * (y0 - py)) * ia], -1)
        lam = w / tz
        d = 1.0 / lam.sum(-1)
        bary = lam * d[:, None]
    else:
        bary = frags.barycentrics.reshape(-1, 3)[lin].to(dtype)

    def scatter(values: torch.Tensor) -> torch.Tensor:
        shape = (B * H * W,) + tuple(values.shape[1:])
        return values.new_zeros(shape).index_put((lin,), values).view((B, H, W) + tuple(values.shape[1:]))

    def interpolate(table: torch.Tensor) -> torch.Tensor:  # table (M, V, C) -> (B, H, W, C)
        return scatter((bary[:, :, None] * table[mb[:, None], vi]).sum(1))

    if geo_grad:
        depth, bary_img = scatter(d), scatter(bary)
    else:  # the rasteriser's images already hold these values
        depth, bary_img = frags.depth.to(dtype), frags.barycentrics.to(dtype)
    out_coords = interpolate(verts) if coords else None
    out_attrs = interpolate(packed["attributes"]) if attributes and packed["attributes"] is not None else None
    out_tex = _sample_texture(mesh_list, mb, vi, bary, scatter) if attributes else None

    sil = None
    if silhouette:
        vb, pairs = contour_edges(xy, z >= near, faces, packed["edges"], packed["edge_faces"], mesh_of_view)
        sil = antialias_mask(mask, xy, vb, pairs)

    vis = None
    if visibility:
        vis = _vertex_visibility(xy.detach(), z.detach(), frags.depth, packed["vertex_valid"][mesh_of_view], near)
        vis[b[:, None].expand_as(vi), vi] = True
    return RenderOutput(mask, sil, depth, out_coords, out_attrs, out_tex, face_ids, bary_img, vis)


def _sample_texture(meshes: list[RenderMesh], mb: torch.Tensor, vi: torch.Tensor, bary: torch.Tensor,
                    scatter: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """Texture colours (B, H, W, Ct) at the interpolated uv of the covered pixels; None without textures."""
    if not all(m.uv is not None for m in meshes):
        return None
    chans = {m.texture.shape[2] for m in meshes}
    if len(chans) != 1:
        raise ShapeError(f"all textures of one render call need the same channels, got {sorted(chans)}")
    vals = bary.new_zeros((len(vi), chans.pop()))
    for i, m in enumerate(meshes):
        sel = (mb == i).nonzero(as_tuple=True)[0]
        if len(sel) == 0:
            continue
        uv = (bary[sel, :, None] * m.uv.to(bary.dtype)[vi[sel]]).sum(1)  # (P, 2)
        # grid_sample: x = -1 left edge, y = -1 top edge (align_corners=False); v points up in the texture
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)[None, None]
        tex = m.texture.to(bary.dtype).permute(2, 0, 1)[None]
        vals = vals.index_put((sel,), Fn.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                                                     align_corners=False)[0, :, 0].T)
    return scatter(vals)


def _vertex_visibility(xy: torch.Tensor, z: torch.Tensor, zbuf: torch.Tensor, valid: torch.Tensor,
                       near: float) -> torch.Tensor:
    """(B, V) bool: in front, inside the image and not behind the z-buffer at the farthest covered of the four
    pixel centres around the projection (visible when none is covered; relative tolerance 1e-3 plus 0.1 mm).
    The caller adds the vertices of every face that was drawn."""
    B, H, W = zbuf.shape
    x, y = xy[..., 0], xy[..., 1]
    inside = valid & (z >= near) & (x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5)
    if H == 0 or W == 0:
        return torch.zeros_like(inside)
    zb = zbuf
    x0, y0 = x.floor().clamp(0, W - 1).long(), y.floor().clamp(0, H - 1).long()
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    bi = torch.arange(B)[:, None]
    far = torch.maximum(torch.maximum(zb[bi, y0, x0], zb[bi, y0, x1]), torch.maximum(zb[bi, y1, x0], zb[bi, y1, x1]))
    return inside & ((far == 0) | (z <= far.to(z.dtype) * (1 + 1e-3) + 1e-4))
