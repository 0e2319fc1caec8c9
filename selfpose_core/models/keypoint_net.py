"""Keypoint pose network on object crops (DSC-PoseNet, Yang et al. CVPR 2021, Sec. 3.2 and Fig. 2).

For every output pixel ``p_m`` and keypoint ``n`` the network predicts an offset ``dk_nm`` and an attention logit
``a_nm``; the keypoint is the attention-weighted mean of the per-pixel votes ``p_m + dk_nm`` over the predicted
foreground O (Eq. 3). It also predicts the object's visible mask. Keypoints are the object's 8 farthest-point
keypoints plus its centre (``ObjectModel.keypoints``); the pose follows from them by PnP.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from selfpose_core.errors import ShapeError
from selfpose_core.models.backbones import BackboneConfig, UNetBackbone, head, pixel_centres, select_object_channels


@dataclass(slots=True)
class KeypointNetConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_keypoints: int = 9
    crop_size: int = 64


def attention_keypoints(votes: torch.Tensor, attention: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Eq. 3 of DSC-PoseNet: softmax(attention)-weighted mean of per-pixel keypoint votes over the foreground.

    Args:
        votes: (B, N, 2, h, w) per-pixel keypoint predictions ``p_m + dk_nm`` (crop pixels, x then y).
        attention: (B, N, h, w) attention logits ``a_nm``.
        foreground: (B, h, w) foreground weights in [0, 1] (a hard mask or probabilities). Pixels with weight 0 are
            excluded; a sample whose foreground is empty falls back to all pixels (weights are floored at 1e-6).

    Returns:
        (B, N, 2) keypoints, differentiable in votes, attention and foreground.
    """
    b, n, two, h, w = votes.shape
    if two != 2 or attention.shape != (b, n, h, w) or foreground.shape != (b, h, w):
        raise ShapeError(f"attention_keypoints expects votes (B, N, 2, h, w), attention (B, N, h, w), foreground "
                         f"(B, h, w); got {tuple(votes.shape)}, {tuple(attention.shape)}, {tuple(foreground.shape)}")
    logits = attention + torch.log(foreground.clamp_min(1e-6)).unsqueeze(1)
    weights = torch.softmax(logits.reshape(b, n, h * w), dim=-1)  # (B, N, hw)
    return torch.einsum("bnm,bncm->bnc", weights, votes.reshape(b, n, 2, h * w))


class KeypointNet(nn.Module):
    """DSC-PoseNet-style keypoint network for ``num_objects`` objects sharing one backbone.

    forward(image (B, 3, S, S) float in [0, 1], obj_index (B,)) -> dict with
      ``mask_logits`` (B, h, w), ``votes`` (B, N, 2, h, w) crop-pixel keypoint votes, ``attention`` (B, N, h, w),
    where h = w = S / out_stride.
    """

    kind = "keypoint"

    def __init__(self, num_objects: int, config: KeypointNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or KeypointNetConfig()
        self.num_objects = int(num_objects)
        self.backbone = UNetBackbone(3, self.config.backbone)
        self.per_object = 3 * self.config.num_keypoints
        # the mask has its own head: sharing one with the (large, crop-pixel) offsets left it unlearned
        self.mask_head = head(self.backbone.out_channels, self.num_objects)
        self.head = head(self.backbone.out_channels, self.num_objects * self.per_object)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, obj_index: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.backbone((image - self.mean) * 4.0)
        mask = select_object_channels(self.mask_head(feat), obj_index, 1)[:, 0]
        out = select_object_channels(self.head(feat), obj_index, self.per_object)
        b, _, h, w = out.shape
        n = self.config.num_keypoints
        stride = self.config.backbone.out_stride
        centres = pixel_centres(h, w, stride, image.device, out.dtype).permute(2, 0, 1)  # (2, h, w)
        # Offsets are predicted in units of the crop size so that the head's outputs stay O(1).
        offsets = out[:, :2 * n].reshape(b, n, 2, h, w) * float(self.config.crop_size)
        return {"mask_logits": mask, "votes": centres + offsets, "attention": out[:, 2 * n:]}

    @staticmethod
    def keypoints(outputs: dict[str, torch.Tensor], foreground: torch.Tensor | None = None,
                  threshold: float = 0.5) -> torch.Tensor:
        """(B, N, 2) keypoints by Eq. 3; foreground (B, h, w) defaults to the predicted mask > ``threshold``."""
        if foreground is None:
            foreground = (torch.sigmoid(outputs["mask_logits"]) > threshold).to(outputs["votes"].dtype)
        return attention_keypoints(outputs["votes"], outputs["attention"], foreground)
