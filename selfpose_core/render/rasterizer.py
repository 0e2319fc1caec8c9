"""Z-buffer rasterisation of projected triangles: per-pixel face id, depth and perspective-correct barycentrics.

This step is NOT differentiable (nvdiffrast's split): :mod:`selfpose_core.render.renderer` recomputes barycentrics
and depth with gradients from the face chosen here. Three backends share one interface and one coverage rule:

- ``"native"``: a C function compiled once (:mod:`selfpose_core.render.native`), multi-threaded; the default.
- ``"torch"``: pure torch, vectorised over (face, pixel) candidates in chunks; used when no C compiler exists.
- ``"pytorch3d"``: PyTorch3D's rasteriser when it is installed (GPU users).

Rules: pixel (u, v) covers [u-0.5, u+0.5] x [v-0.5, v+0.5] and is sampled at its centre (u, v); a centre lies in a
triangle when its three screen-space barycentrics are >= 0; the nearest face wins. Faces with a vertex nearer than
``near`` (behind the camera or crossing the near plane) are dropped, not clipped; faces with zero screen area are
skipped (they cover no pixel centre).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from selfpose_core.errors import ConfigError
from selfpose_core.render import native

log = logging.getLogger(__name__)

BACKENDS = ("auto", "native", "torch", "pytorch3d")
# candidate (face, pixel) pairs handled at once by the torch rasteriser
_TORCH_CHUNK = 1 << 22


@dataclass(slots=True)
class Fragments:
    """Rasteriser output for B views of H x W pixels."""

    face_ids: torch.Tensor  # (B, H, W) int64, -1 = background
    depth: torch.Tensor  # (B, H, W) float32 metres along the optical axis, 0 = background
    barycentrics: torch.Tensor  # (B, H, W, 3) float32 perspective-correct, 0 = background


def available_backends() -> list[str]:
    """The rasteriser backends usable on this machine."""
    names = ["torch"]
    if native.load() is not None:
        names.insert(0, "native")
    if importlib.util.find_spec("pytorch3d") is not None:
        names.append("pytorch3d")
    return names


def rasterize(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, size: tuple[int, int], *,
              near: float = 1e-3, backend: str = "auto") -> Fragments:
    """Rasterise B views of triangles given in pixel coordinates.

    Args:
        xy: (B, V, 2) projected vertices in pixels (x right, y down; pixel centres at integers).
        z: (B, V) vertex depth along the optical axis (metres).
        faces: (F, 3) or (B, F, 3) vertex indices.
        size: (H, W) of the output.
        near: faces with a vertex at z < near are dropped.
        backend: one of ``BACKENDS``; ``"auto"`` takes ``"native"`` when it builds, else ``"torch"``.

    Returns: :class:`Fragments`. No gradients (inputs are detached).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"render backend must be one of {BACKENDS}, got {backend!r}")
    H, W = int(size[0]), int(size[1])
    xy = xy.detach().to(torch.float32).cpu().contiguous()
    z = z.detach().to(torch.float32).cpu().contiguous()
    faces = faces.detach().to(torch.int64).cpu()
    faces = (faces[None] if faces.dim() == 2 else faces).contiguous()
    B = z.shape[0]
    if B == 0 or faces.shape[1] == 0 or H == 0 or W == 0:
        return Fragments(torch.full((B, H, W), -1, dtype=torch.int64), torch.zeros((B, H, W)),
                         torch.zeros((B, H, W, 3)))
    if backend == "pytorch3d":
        from selfpose_core.render.pytorch3d_backend import rasterize_pytorch3d
        return Fragments(*rasterize_pytorch3d(xy, z, faces, H, W, near))
    lib = native.load() if backend in ("auto", "native") else None
    if backend == "native" and lib is None:
        raise ConfigError("render backend 'native' is unavailable (no C compiler, or SELFPOSE_RENDER_NATIVE=0)")
    if lib is not None:
        fid, depth, bary = native.rasterize_native(lib, xy, z, faces, H, W, near)
        return Fragments(fid.long(), depth, bary)
    return Fragments(*rasterize_torch(xy, z, faces, H, W, near))


def rasterize_torch(xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, H: int, W: int,
                    near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch rasteriser with the same rules as the C one. Shapes as in :func:`rasterize` (faces (1|B, F, 3))."""
    B, F = z.shape[0], faces.shape[1]
    xy64, z64 = xy.double(), z.double()
    fb = faces.expand(B, F, 3)
    bidx = torch.arange(B)[:, None].expand(B, F)
    tri = xy64[bidx[..., None], fb]  # (B, F, 3, 2)
    tz = z64[bidx[..., None], fb]  # (B, F, 3)
    x0, y0, x1, y1, x2, y2 = (tri[..., i, j] for i in range(3) for j in range(2))
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    xmin = tri[..., 0].amin(-1).ceil().clamp(min=0)
    xmax = tri[..., 0].amax(-1).floor().clamp(max=W - 1)
    ymin = tri[..., 1].amin(-1).ceil().clamp(min=0)
    ymax = tri[..., 1].amax(-1).floor().clamp(max=H - 1)
    ok = (tz >= near).all(-1) & (area.abs() > 1e-12) & (xmin <= xmax) & (ymin <= ymax)
    bi, fi = ok.nonzero(as_tuple=True)
    nx = (xmax - xmin + 1)[bi, fi].long()
    ny = (ymax - ymin + 1)[bi, fi].long()
    # key = (float32 depth bits << 32) | face id: the minimum is the nearest face (positive floats sort as ints)
    best = torch.full((B * H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    counts = nx * ny
    ends = counts.cumsum(0)
    start = 0
    while start < len(bi):
        stop = int(torch.searchsorted(ends, ends[start] - counts[start] + _TORCH_CHUNK, right=True))
        stop = max(stop, start + 1)
        sl = slice(start, stop)
        b, f, cx, cy = bi[sl], fi[sl], nx[sl], counts[sl]
        rep = torch.repeat_interleave(torch.arange(len(b)), cy)
        local = torch.arange(len(rep)) - torch.repeat_interleave(cy.cumsum(0) - cy, cy)
        px = xmin[b, f][rep] + (local % cx[rep]).double()
        py = ymin[b, f][rep] + torch.div(local, cx[rep], rounding_mode="floor").double()
        bb, ff = b[rep], f[rep]
        X0, Y0, X1, Y1, X2, Y2 = (v[bb, ff] for v in (x0, y0, x1, y1, x2, y2))
        ia = 1.0 / area[bb, ff]
        w0 = ((X1 - px) * (Y2 - py) - (X2 - px) * (Y1 - py)) * ia
        w1 = ((X2 - px) * (Y0 - py) - (X0 - px) * (Y2 - py)) * ia
        w2 = ((X0 - px) * (Y1 - py) - (X1 - px) * (Y0 - py)) * ia
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        zz = tz[bb, ff]
        d = 1.0 / (w0 / zz[:, 0] + w1 / zz[:, 1] + w2 / zz[:, 2])
        lin = (bb * H + py.long()) * W + px.long()
        key = (d.float().view(torch.int32).long() << 32) | ff
        best.scatter_reduce_(0, lin[inside], key[inside], reduce="amin")
        start = stop
    hit = best != torch.iinfo(torch.int64).max
    face_ids = torch.where(hit, best & 0xFFFFFFFF, torch.full_like(best, -1)).view(B, H, W)
    # barycentrics of the winning faces, recomputed in double
    lin = hit.nonzero(as_tuple=True)[0]
    b = torch.div(lin, H * W, rounding_mode="floor")
    py = (torch.div(lin, W, rounding_mode="floor") % H).double()
    px = (lin % W).double()
    f = face_ids.view(-1)[lin]
    X0, Y0, X1, Y1, X2, Y2 = (v[b, f] for v in (x0, y0, x1, y1, x2, y2))
    ia = 1.0 / area[b, f]
    w = torch.stack([((X1 - px) * (Y2 - py) - (X2 - px) * (Y1 - py)) * ia,
                     ((X2 - px) * (Y0 - py) - (X0 - px) * (Y2 - py)) * ia,
                     ((X0 - px) * (Y1 - py) - (X1 - px) * (Y0 - py)) * ia], -1)
    lam = w / tz[b, f]
    d = 1.0 / lam.sum(-1)
    depth = torch.zeros(B * H * W)
    depth[lin] = d.float()
    bary = torch.zeros(B * H * W, 3)
    bary[lin] = (lam * d[:, None]).float()
    return face_ids, depth.view(B, H, W), bary.view(B, H, W, 3)
