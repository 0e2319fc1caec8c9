"""Image similarity losses of the self-supervised stages: masked MS-SSIM and an image-gradient loss.

MS-SSIM follows Wang, Simoncelli, Bovik, "Multi-scale structural similarity for image quality assessment"
(Asilomar 2003): SSIM's contrast-structure term at every scale, the luminance term at the coarsest, 2x average
pooling between scales, exponents (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), Gaussian window 11 / sigma 1.5,
K = (0.01, 0.03). Differences from the reference: every scale keeps its full size (replicate padding instead of
"valid" filtering) so that a per-pixel ``mask`` can restrict the means to the pixels that are compared (warped
pixels, a silhouette); fewer scales are used when the image is too small for five (the coarsest keeps >= 4 pixels)
and the exponents are then renormalised; per-scale means are clamped to >= 1e-4 before the power.

Sock et al. (Eq. 3) use an L2 distance of normalised VGG features as perceptual loss. No pretrained network can be
shipped or downloaded here, so :func:`perceptual_loss` substitutes ``(1 - MS-SSIM) + w * gradient L1`` (the
structure terms of MS-SSIM and the Sobel gradients compare shapes and edges, not absolute colours, which is what
the comparison of a shaded CAD rendering with a real object needs).
kornia's ``MS_SSIMLoss`` mixes MS-SSIM with an L1 term (Zhao et al.) and has no mask, so it is not used here; the
single-scale SSIM of this module equals ``kornia.metrics.ssim`` away from the border (tested).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import spatial_gradient

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import check_shape

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | None = None) -> torch.Tensor:
    """(size, size) normalised Gaussian window."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-x * x / (2.0 * sigma * sigma))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = window.shape[-1]
    p = k // 2
    xp = F.pad(x, (p, p, p, p), mode="replicate")
    return F.conv2d(xp, window.expand(c, 1, k, k), groups=c)


def ssim_maps(x: torch.Tensor, y: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5,
              data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Luminance and contrast-structure maps of SSIM, each (B, C, H, W), for images ``x``, ``y`` (B, C, H, W).

    SSIM = luminance * contrast_structure; replicate padding keeps the size.
    """
    dims: dict[str, int] = {}
    check_shape(x, ("B", "C", "H", "W"), "x", dims)
    check_shape(y, (dims["B"], dims["C"], dims["H"], dims["W"]), "y", dims)
    w = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = _filter(x, w), _filter(y, w)
    sxx = _filter(x * x, w) - mx * mx
    syy = _filter(y * y, w) - my * my
    sxy = _filter(x * y, w) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return lum, cs


def _masked_mean(v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) mean of v (B, C, H, W) over channels and the pixels weighted by mask (B, 1, H, W)."""
    if mask is None:
        return v.mean(dim=(1, 2, 3))
    m = mask.to(v.dtype)
    return (v * m).sum(dim=(1, 2, 3)) / (m.sum(dim=(1, 2, 3)) * v.shape[1]).clamp_min(1e-6)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *, scales: int = 5,
            window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Masked multi-scale SSIM (module docstring) of images ``x``, ``y`` (B, C, H, W) -> (B,) in [0, 1].

    ``mask`` (B, H, W) (bool or weights in [0, 1]) restricts the means to its pixels at every scale (average pooled
    with the images); a sample with an empty mask gets the value of its (meaningless) clamp, 1e-4 ** sum(weights).
    """
    dims: dict[str, int] = {}
    check_shape(x, ("B", "C", "H", "W"), "x", dims)
    check_shape(y, (dims["B"], dims["C"], dims["H"], dims["W"]), "y", dims)
    if scales < 1:
        raise ShapeError(f"ms_ssim: scales must be >= 1, got {scales}")
    m = None
    if mask is not None:
        check_shape(mask, (dims["B"], dims["H"], dims["W"]), "mask")
        m = mask.to(x.dtype)[:, None]
    n = max(1, min(scales, len(MS_SSIM_WEIGHTS), int(math.log2(max(min(dims["H"], dims["W"]), 4) / 4)) + 1))
    weights = torch.tensor(MS_SSIM_WEIGHTS[:n], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    values = []
    for j in range(n):
        lum, cs = ssim_maps(x, y, window_size=window_size, sigma=sigma, data_range=data_range)
        v = cs if j < n - 1 else lum * cs
        values.append(_masked_mean(v, m).clamp_min(1e-4))
        if j < n - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            m = None if m is None else F.avg_pool2d(m, 2)
    vals = torch.stack(values, -1)  # (B, n)
    return torch.prod(vals ** weights, dim=-1)


def ms_ssim_loss(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """(B,) ``1 - ms_ssim(x, y, mask)`` (Sock et al. Eq. 5)."""
    return 1.0 - ms_ssim(x, y, mask, **kwargs)


def gradient_loss(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean absolute difference of the normalised Sobel gradients of ``x`` and ``y`` (B, C, H, W) over
    ``mask`` (B, H, W) (all pixels when None)."""
    dims: dict[str, int] = {}
    check_shape(x, ("B", "C", "H", "W"), "x", dims)
    check_shape(y, (dims["B"], dims["C"], dims["H"], dims["W"]), "y")
    d = (spatial_gradient(x) - spatial_gradient(y)).abs().mean(dim=2)  # (B, C, H, W)
    m = None
    if mask is not None:
        check_shape(mask, (dims["B"], dims["H"], dims["W"]), "mask")
        m = mask.to(x.dtype)[:, None]
    return _masked_mean(d, m)


def perceptual_loss(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, *,
                    gradient_weight: float = 1.0, scales: int = 5) -> torch.Tensor:
    """(B,) ``(1 - MS-SSIM) + gradient_weight * gradient L1`` between ``x`` and ``y`` (B, C, H, W) over ``mask``:
    the substitute for Sock et al.'s VGG perceptual distance (module docstring)."""
    return ms_ssim_loss(x, y, mask, scales=scales) + gradient_weight * gradient_loss(x, y, mask)
