"""Analytic antialiasing of a hard mask into a silhouette whose gradient moves the mesh's contour edges.

The idea is nvdiffrast's (Laine et al., "Modular Primitives for High-Performance Differentiable Rendering", 2020,
section 3.3): for two neighbouring pixels of which one is covered and one is not, find the contour edge that
crosses the segment between their centres and turn its crossing position into pixel coverage. In one dimension,
with the covered centre at 0, the empty one at 1 and the edge at ``s`` in [0, 1], the covered pixel keeps coverage
``min(1, s + 0.5)`` and the empty one gets ``max(0, s - 0.5)``; both change with ``ds/dvertex``, so the loss on
the silhouette pulls the contour. Contour edges are mesh edges between a front- and a back-facing triangle, or
open boundary edges. An edge is handled only by the pixel pairs across which it runs most steeply (horizontal
pairs for edges closer to vertical, vertical pairs otherwise), so a pixel is not corrected twice by one edge.
Several crossings at one pixel (corners, objects near pixel size) combine as independent coverages: a covered pixel
keeps the product of its remaining fractions, an empty one gets one minus the product of its uncovered ones (exact
for an axis-aligned corner). The result is the hard mask off a one-pixel band along the silhouette; gradients
exist only in that band. An object covering no pixel centre has no silhouette at all.
"""
from __future__ import annotations

import torch


def contour_edges(xy: torch.Tensor, front: torch.Tensor, faces: torch.Tensor, edges: torch.Tensor,
                  edge_faces: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Contour edges per view.

    Args:
        xy: (B, V, 2) projected vertices (pixels); only the signs of the screen areas are used.
        front: (B, V) bool, vertex in front of the near plane.
        faces: (M, F, 3) faces of the M meshes; edges (M, E, 2) and edge_faces (M, E, 2) (-1 = none) likewise.
        batch_index: (B,) mesh index of each view.
    Returns: (view index (N,), vertex pairs (N, 2)) of the contour edges.
    """
    B = xy.shape[0]
    with torch.no_grad():
        fb = faces[batch_index]  # (B, F, 3)
        bi = torch.arange(B)[:, None, None]
        tri = xy.detach()[bi, fb]  # (B, F, 3, 2)
        d1, d2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        area = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]
        valid = front[bi, fb].all(-1) & (area != 0)  # (B, F)
        facing = area > 0
        ef = edge_faces[batch_index]  # (B, E, 2)
        ev = edges[batch_index]  # (B, E, 2)
        has1 = ef[..., 1] >= 0
        f0, f1 = ef[..., 0].clamp(min=0), ef[..., 1].clamp(min=0)
        b2 = torch.arange(B)[:, None]
        v0, v1 = valid[b2, f0] & (ef[..., 0] >= 0), valid[b2, f1] & has1
        fa0, fa1 = facing[b2, f0], facing[b2, f1]
        contour = (v0 & v1 & (fa0 != fa1)) | (v0 ^ v1)
        contour &= front[b2, ev[..., 0]] & front[b2, ev[..., 1]]
        vb, ve = contour.nonzero(as_tuple=True)
        return vb, ev[vb, ve]


def antialias_mask(mask: torch.Tensor, xy: torch.Tensor, view: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Coverage (B, H, W) in [0, 1] from the hard ``mask`` (B, H, W) bool and the contour edges.

    ``xy`` (B, V, 2) projected vertices carrying gradients; ``view`` (N,) and ``pairs`` (N, 2) from
    :func:`contour_edges`. The dtype of the result is that of ``xy``.
    """
    B, H, W = mask.shape
    if len(view) == 0:
        return mask.to(xy.dtype)
    # per pixel, the sum of log(1 - |coverage change|): covered pixels keep exp(S), empty ones get 1 - exp(S)
    log_keep = torch.zeros(B * H * W, dtype=xy.dtype)
    a, c = xy[view, pairs[:, 0]], xy[view, pairs[:, 1]]  # (N, 2)
    d = (c - a).detach()
    steep = d[:, 1].abs() >= d[:, 0].abs()
    for horizontal_pairs in (True, False):
        # rows: the axis the edge is enumerated along; cross: the axis in which the two pixels of a pair differ
        row_ax, cross_ax = (1, 0) if horizontal_pairs else (0, 1)
        n_row, n_cross = (H, W) if horizontal_pairs else (W, H)
        sel = (steep if horizontal_pairs else ~steep) & (d[:, row_ax].abs() > 1e-9)
        if not bool(sel.any()):
            continue
        A, C, vb = a[sel], c[sel], view[sel]
        ra, rc = A[:, row_ax].detach(), C[:, row_ax].detach()
        lo = torch.minimum(ra, rc).ceil().clamp(min=0)
        hi = torch.maximum(ra, rc).floor().clamp(max=n_row - 1)
        cnt = (hi - lo + 1).clamp(min=0).long()
        rep = torch.repeat_interleave(torch.arange(len(cnt)), cnt)
        if len(rep) == 0:
            continue
        r = lo[rep] + (torch.arange(len(rep)) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)).to(lo.dtype)
        A, C, vb = A[rep], C[rep], vb[rep]
        s = (r - A[:, row_ax]) / (C[:, row_ax] - A[:, row_ax])
        x = A[:, cross_ax] + s * (C[:, cross_ax] - A[:, cross_ax])  # crossing position, with gradient
        x0 = torch.floor(x.detach()).long()
        ok = (x0 >= 0) & (x0 + 1 < n_cross)
        x, x0, vb, ri = x[ok], x0[ok], vb[ok], r[ok].long()
        if horizontal_pairs:
            lin0 = (vb * H + ri) * W + x0
            step = 1
        else:
            lin0 = (vb * H + x0) * W + ri
            step = W
        m0, m1 = mask.reshape(-1)[lin0], mask.reshape(-1)[lin0 + step]
        ok = m0 != m1
        x, x0, lin0, m0 = x[ok], x0[ok], lin0[ok], m0[ok]
        t = x - x0.to(x.dtype)
        tp = torch.where(m0, t, 1.0 - t)  # distance from the covered centre to the edge, in (0, 1]
        # one crossing per pixel pair: the outermost (largest tp), then the first
        tpd = tp.detach()
        best = torch.full((B * H * W,), -1.0, dtype=tpd.dtype).scatter_reduce(0, lin0, tpd, reduce="amax")
        keep = tpd == best[lin0]
        idx = torch.arange(len(lin0))
        first = torch.full((B * H * W,), len(lin0), dtype=torch.int64).scatter_reduce(
            0, lin0[keep], idx[keep], reduce="amin")
        keep &= first[lin0] == idx
        tp, lin0, m0 = tp[keep], lin0[keep], m0[keep]
        fg = torch.where(m0, lin0, lin0 + step)
        bg = torch.where(m0, lin0 + step, lin0)
        target = torch.where(tp.detach() < 0.5, fg, bg)
        log_keep = log_keep.index_put((target,), torch.log1p(-(tp - 0.5).abs().clamp(max=0.5)), accumulate=True)
    keep = torch.exp(log_keep).view(B, H, W)
    return torch.where(mask, keep, 1.0 - keep)
