"""Masked MS-SSIM, the gradient loss and the perceptual substitute."""
from __future__ import annotations

import kornia
import pytest
import torch

from selfpose_core.adapt.perceptual import gradient_loss, ms_ssim, ms_ssim_loss, perceptual_loss, ssim_maps
from selfpose_core.errors import ShapeError


def _images(seed: int = 0, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_single_scale_equals_kornia_away_from_the_border():
    x, y = _images(0).double(), _images(1).double()
    lum, cs = ssim_maps(x, y)
    ref = kornia.metrics.ssim(x, y, 11, padding="valid")
    assert torch.allclose((lum * cs)[..., 5:-5, 5:-5], ref, atol=1e-9)


def test_ms_ssim_is_one_for_equal_images_and_drops_with_noise():
    x = _images(0)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(ms_ssim_loss(x, x), torch.zeros(2), atol=1e-6)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    losses = [float(ms_ssim_loss(x, (x + s * noise).clamp(0, 1)).mean()) for s in (0.02, 0.1, 0.3)]
    assert 0 < losses[0] < losses[1] < losses[2]
    assert float(ms_ssim_loss(x, _images(1)).mean()) > losses[0]


def test_mask_ignores_pixels_outside():
    x = _images(0)
    y = x.clone()
    y[..., :, 30:] = torch.rand(y[..., :, 30:].shape, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 48, 48, dtype=torch.bool)
    mask[:, :, :16] = True  # far (> window radius at every scale) from the changed columns
    assert float(ms_ssim_loss(x, y, mask, scales=2).max()) < 1e-4
    assert float(ms_ssim_loss(x, y).min()) > 0.05
    assert float(gradient_loss(x, y, mask).max()) < 1e-6 < float(gradient_loss(x, y).min())


def test_losses_have_gradients_and_check_shapes():
    x = _images(0).requires_grad_(True)
    y = _images(1)
    perceptual_loss(x, y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert float(perceptual_loss(y, y).max()) < 1e-5
    with pytest.raises(ShapeError):
        ms_ssim(x, y[:, :2])
    with pytest.raises(ShapeError):
        ms_ssim(x, y, torch.ones(2, 10, 10))


def test_small_images_use_fewer_scales():
    x, y = _images(0, 16), _images(1, 16)
    assert torch.allclose(ms_ssim(x, y, scales=5), ms_ssim(x, y, scales=3))  # 16 px: 16, 8, 4
    assert not torch.allclose(ms_ssim(x, y, scales=3), ms_ssim(x, y, scales=1))
