"""Anchor-free detector/segmenter for the full (downscaled) image, CenterNet-like (Zhou et al. 2019, "Objects as
Points"), for instance-level objects: each known object appears at most once per image.

Per class and stride-``s`` cell it predicts a centre heatmap logit, a sub-cell centre offset, a log box size and a
visible-mask logit. Decoding takes each class's heatmap peak; boxes are amodal (the projected object's full extent).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from selfpose_core.errors import ShapeError
from selfpose_core.models.backbones import BackboneConfig, UNetBackbone, head

SIZE_UNIT = 16.0  # box sizes are predicted as log(size / SIZE_UNIT), sizes in input pixels


@dataclass(slots=True)
class DetectorConfig:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(widths=(16, 32, 64, 96), out_stride=4))
    input_width: int = 160
    input_height: int = 120
    score_threshold: float = 0.3


@dataclass(slots=True)
class Detections:
    """Per image and class: score (B, C), box (B, C, 4) as (x0, y0, x1, y1) input pixels, mask_logits (B, C, h, w)."""

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor


class Detector(nn.Module):
    """forward(image (B, 3, H, W) float in [0, 1]) -> dict of stride-s maps:
    ``heatmap`` (B, C, h, w) logits, ``offset`` (B, C, 2, h, w) in cells, ``log_size`` (B, C, 2, h, w),
    ``mask_logits`` (B, C, h, w)."""

    def __init__(self, num_objects: int, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        self.num_objects = int(num_objects)
        self.backbone = UNetBackbone(3, self.config.backbone)
        c, f = self.num_objects, self.backbone.out_channels
        self.head = head(f, 6 * c)  # per class: heatmap, offset (2), log size (2), mask
        with torch.no_grad():
            self.head[-1].bias[:c] = -4.0  # CenterNet's prior: few cells are centres
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    @property
    def stride(self) -> int:
        return self.config.backbone.out_stride

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone((image - self.mean) * 4.0))
        b, _, h, w = out.shape
        c = self.num_objects
        box = out[:, c:5 * c].reshape(b, c, 4, h, w)
        return {"heatmap": out[:, :c], "offset": torch.sigmoid(box[:, :, :2]), "log_size": box[:, :, 2:],
                "mask_logits": out[:, 5 * c:]}

    def decode(self, out: dict[str, torch.Tensor]) -> Detections:
        """The best-scoring cell of each class; boxes in input pixels (centre = (cell + offset) * stride)."""
        heat = out["heatmap"]
        if heat.ndim != 4:
            raise ShapeError(f"heatmap must be (B, C, h, w), got {tuple(heat.shape)}")
        b, c, h, w = heat.shape
        score, idx = torch.sigmoid(heat).flatten(2).max(dim=-1)  # (B, C)
        gather = idx.view(b, c, 1, 1).expand(b, c, 2, 1)
        offset = out["offset"].flatten(3).gather(3, gather).squeeze(-1)  # (B, C, 2)
        log_size = out["log_size"].flatten(3).gather(3, gather).squeeze(-1)
        cell = torch.stack([idx % w, idx // w], dim=-1).to(offset.dtype)
        centre = (cell + offset) * self.stride
        half = torch.exp(log_size.clamp(-6.0, 6.0)) * SIZE_UNIT / 2.0
        return Detections(score, torch.cat([centre - half, centre + half], dim=-1), out["mask_logits"])
