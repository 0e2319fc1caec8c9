"""Cross-domain occlusion augmentation of Sock et al. (Sec. 3.2): randomly sized patches of Gaussian noise placed
on the real crop and on the rendering in every iteration; the masked real image excludes the patch pixels.
"""
from __future__ import annotations

import torch

from selfpose_core.errors import ConfigError
from selfpose_core.geometry.shapes import check_shape


def random_patches(batch: int, height: int, width: int, generator: torch.Generator, *, probability: float = 0.5,
                   max_patches: int = 2, size: tuple[float, float] = (0.1, 0.35)) -> torch.Tensor:
    """(B, H, W) bool: per image, with ``probability``, 1..``max_patches`` axis-aligned rectangles whose sides are
    uniform in ``size`` (fractions of the image side) at uniform positions; all False otherwise."""
    if not 0 < size[0] <= size[1] <= 1:
        raise ConfigError(f"occlusion patch size must satisfy 0 < min <= max <= 1, got {size}")
    if max_patches < 1:
        raise ConfigError(f"occlusion max_patches must be >= 1, got {max_patches}")
    u = torch.rand(batch, max_patches, 5, generator=generator)
    on = torch.rand(batch, 1, generator=generator) < probability
    count = 1 + (torch.rand(batch, 1, generator=generator) * max_patches).long().clamp(max=max_patches - 1)
    on = on & (torch.arange(max_patches)[None] < count)  # (B, P)
    ph = (size[0] + (size[1] - size[0]) * u[..., 0]) * height
    pw = (size[0] + (size[1] - size[0]) * u[..., 1]) * width
    y0 = u[..., 2] * (height - ph)
    x0 = u[..., 3] * (width - pw)
    ys = torch.arange(height, dtype=torch.float32)[None, None, :, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, None, None, :] + 0.5
    inside = ((ys >= y0[..., None, None]) & (ys < (y0 + ph)[..., None, None])
              & (xs >= x0[..., None, None]) & (xs < (x0 + pw)[..., None, None]))  # (B, P, H, W)
    return (inside & on[..., None, None]).any(dim=1)


def fill_noise(images: torch.Tensor, patches: torch.Tensor, generator: torch.Generator, *, mean: float = 0.5,
               std: float = 0.25) -> torch.Tensor:
    """``images`` (B, C, H, W) in [0, 1] with the ``patches`` (B, H, W) pixels replaced by Gaussian noise
    N(mean, std) clamped to [0, 1] (independent per pixel and channel). Not in place."""
    dims: dict[str, int] = {}
    check_shape(images, ("B", "C", "H", "W"), "images", dims)
    check_shape(patches, (dims["B"], dims["H"], dims["W"]), "patches")
    noise = (torch.randn(images.shape, generator=generator) * std + mean).clamp(0, 1).to(images)
    return torch.where(patches[:, None].to(images.device), noise, images)
