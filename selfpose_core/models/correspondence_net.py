"""Dense-correspondence pose network on object crops (Pix2Pose, Park et al. ICCV 2019; the Sock et al. baseline).

Per output pixel the network predicts the object coordinates of the surface seen there, normalised to [-1, 1] by
the object's bounding box, a visible-mask logit and the expected error of its own coordinates (Pix2Pose's
confidence). The pose follows by PnP-RANSAC on the pixels that are foreground and confident.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from selfpose_core.models.backbones import BackboneConfig, UNetBackbone, head, select_object_channels


@dataclass(slots=True)
class CorrespondenceNetConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    crop_size: int = 64


def coordinate_normaliser(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre (3,), half_extent (3,)) of the object's bounding box: coords_norm = (X - centre) / half_extent."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    return (lo + hi) / 2.0, np.maximum((hi - lo) / 2.0, 1e-6)


class CorrespondenceNet(nn.Module):
    """Pix2Pose-style network for ``num_objects`` objects sharing one backbone.

    forward(image (B, 3, S, S) float in [0, 1], obj_index (B,)) -> dict with
      ``coords`` (B, 3, h, w) normalised object coordinates in [-1, 1], ``mask_logits`` (B, h, w),
      ``error`` (B, h, w) predicted mean absolute coordinate error (normalised units, >= 0),
    where h = w = S / out_stride.
    """

    kind = "correspondence"
    per_object = 5

    def __init__(self, num_objects: int, config: CorrespondenceNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or CorrespondenceNetConfig()
        self.num_objects = int(num_objects)
        self.backbone = UNetBackbone(3, self.config.backbone)
        self.head = head(self.backbone.out_channels, self.num_objects * self.per_object)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, obj_index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = select_object_channels(self.head(self.backbone((image - self.mean) * 4.0)), obj_index, self.per_object)
        return {"coords": torch.tanh(out[:, :3]), "mask_logits": out[:, 3],
                "error": nn.functional.softplus(out[:, 4])}
