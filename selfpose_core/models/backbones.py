"""Small convolutional encoder-decoders (U-Net shaped) shared by the detector and the pose networks.

Written for CPU inference on tiny inputs (64x64 crops, 160x120 images): 3x3 conv + BatchNorm + ReLU blocks, stride-2
downsampling, nearest upsampling to the skip's size (odd sizes are fine) and concatenated skips.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfpose_core.errors import ConfigError, ShapeError


@dataclass(slots=True)
class BackboneConfig:
    """Encoder widths per level (level i has stride 2**(i+1)) and the stride of the returned feature map."""

    widths: tuple[int, ...] = (16, 32, 64, 96)
    out_stride: int = 4

    def validate(self, where: str = "backbone") -> None:
        if len(self.widths) < 2 or any(int(w) < 1 for w in self.widths):
            raise ConfigError(f"{where}.widths must list at least 2 positive channel counts, got {self.widths}")
        levels = [2 ** (i + 1) for i in range(len(self.widths))]
        if self.out_stride not in levels[:-1]:
            raise ConfigError(f"{where}.out_stride must be one of {levels[:-1]} for {len(self.widths)} levels, "
                              f"got {self.out_stride}")


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetBackbone(nn.Module):
    """Encoder + FPN-style decoder returning features at ``config.out_stride``.

    Encoder level i: a stride-2 3x3 conv (plus a second 3x3 conv from level 1 on). Decoder step: 1x1 projection of
    the coarser map to the skip's width, nearest upsampling, sum with a 1x1 lateral of the skip, one 3x3 conv.
    Input (B, in_channels, H, W) -> output (B, widths[k], ceil(H / s), ceil(W / s)) with s = out_stride = 2**(k+1).
    """

    def __init__(self, in_channels: int = 3, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config or BackboneConfig()
        self.config.validate()
        w = [int(x) for x in self.config.widths]
        self.down = nn.ModuleList()
        cin = in_channels
        for i, width in enumerate(w):
            layers = [conv_bn_relu(cin, width, 2)] + ([conv_bn_relu(width, width)] if i > 0 else [])
            self.down.append(nn.Sequential(*layers))
            cin = width
        self.out_level = self.config.out_stride.bit_length() - 2
        self.reduce = nn.ModuleList()
        self.lateral = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(len(w) - 2, self.out_level - 1, -1):
            self.reduce.append(nn.Conv2d(cin, w[level], 1))
            self.lateral.append(nn.Conv2d(w[level], w[level], 1))
            self.fuse.append(conv_bn_relu(w[level], w[level]))
            cin = w[level]
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ShapeError(f"backbone input must be (B, C, H, W), got {tuple(x.shape)}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips[-1]
        for reduce, lateral, fuse, skip in zip(self.reduce, self.lateral, self.fuse, reversed(skips[self.out_level:-1])):
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode="nearest")
            x = fuse(x + lateral(skip))
        return x


def head(cin: int, cout: int, hidden: int | None = None) -> nn.Sequential:
    """A 3x3 conv + ReLU + 1x1 conv prediction head."""
    hidden = hidden or cin
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))


def pixel_centres(h: int, w: int, stride: int, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(h, w, 2) input-image (x, y) coordinates of the centres of a stride-``stride`` feature map's cells.

    OpenCV pixel convention (as the camera matrix K): input pixel (i, j) has its centre at (x, y) = (j, i); cell
    (i, j) of the feature map covers input pixels s j .. s j + s - 1 and has centre s j + (s - 1) / 2.
    """
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride - 0.5
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def select_object_channels(out: torch.Tensor, obj_index: torch.Tensor, per_object: int) -> torch.Tensor:
    """Pick each sample's object channel group.

    Args:
        out: (B, C * per_object, h, w) outputs of a head predicting ``per_object`` channels for each of C objects.
        obj_index: (B,) int64 object index of each sample in [0, C).

    Returns:
        (B, per_object, h, w).
    """
    b, ch, h, w = out.shape
    if ch % per_object:
        raise ShapeError(f"head output has {ch} channels, not a multiple of {per_object}")
    if obj_index.shape != (b,):
        raise ShapeError(f"obj_index must have shape ({b},), got {tuple(obj_index.shape)}")
    n_obj = ch // per_object
    if bool(((obj_index < 0) | (obj_index >= n_obj)).any()):
        raise ShapeError(f"obj_index values must lie in [0, {n_obj}), got {obj_index.tolist()}")
    out = out.view(b, n_obj, per_object, h, w)
    return out[torch.arange(b, device=out.device), obj_index]
