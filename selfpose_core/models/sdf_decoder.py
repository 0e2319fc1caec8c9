"""The DeepSDF decoder (Park et al., CVPR'19) that SSC-6D (seed 003, Eq. 1) uses as a category's shape prior.

``F(p; v) = sdf``: a stack of fully connected layers maps a query point ``p`` (3,) and a shape latent ``v`` (K,) to
the signed distance of ``p`` to the shape ``v`` encodes (negative inside). As in DeepSDF: the input ``[v, p]`` is fed
again, concatenated, into layer ``latent_in`` (a skip connection), ReLU between layers, weight normalisation, a tanh
on the output, which starts near 0 (inside the clamp of the training loss, where the gradient is not zero). SSC-6D
uses eight layers and K = 16; DeepSDF's layers are 512 wide, ours default to 64 (a CPU budget: docs/categories.md,
"Shape prior").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from selfpose_core.errors import ConfigError, ShapeError

MAX_LATENT = 1024
MAX_WIDTH = 4096
MAX_LAYERS = 32


@dataclass(slots=True)
class SdfDecoderConfig:
    """Architecture of :class:`SdfDecoder` (recorded in a prior's ``prior.yaml``)."""

    latent_size: int = 16  # SSC-6D: 16 for every category
    width: int = 64  # DeepSDF: 512
    layers: int = 8  # hidden fully connected layers (SSC-6D, DeepSDF: 8); one more linear layer outputs the SDF
    latent_in: int = 4  # the layer whose input gets [v, p] again (DeepSDF: 4)
    weight_norm: bool = True
    dropout: float = 0.0  # DeepSDF: 0.2; 0 suits the small CPU-trained priors (they underfit, not overfit)

    def validate(self, where: str = "decoder") -> None:
        checks = (("latent_size", 1, MAX_LATENT), ("width", 8, MAX_WIDTH), ("layers", 2, MAX_LAYERS))
        for key, lo, hi in checks:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{where}.{key} must be an integer in {lo}..{hi}, got {value!r}")
        if isinstance(self.latent_in, bool) or not isinstance(self.latent_in, int) \
                or not 1 <= self.latent_in < self.layers:
            raise ConfigError(f"{where}.latent_in must be an integer in 1..{self.layers - 1}, got {self.latent_in!r}")
        if self.width <= self.latent_size + 3:
            raise ConfigError(f"{where}.width ({self.width}) must exceed latent_size + 3 ({self.latent_size + 3}): "
                              "the layer before latent_in leaves room for the re-fed input")
        if not isinstance(self.weight_norm, bool):
            raise ConfigError(f"{where}.weight_norm must be true or false, got {self.weight_norm!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout!r}")


class SdfDecoder(nn.Module):
    """``F(p; v)``: signed distances of query points for shape latents."""

    def __init__(self, config: SdfDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or SdfDecoderConfig()
        self.config.validate()
        c = self.config
        n_in = c.latent_size + 3
        layers = []
        for i in range(c.layers):
            cin = n_in if i == 0 else c.width
            cout = c.width - n_in if i + 1 == c.latent_in else c.width
            lin = nn.Linear(cin, cout)
            layers.append(weight_norm(lin) if c.weight_norm else lin)
        self.hidden = nn.ModuleList(layers)
        self.out = nn.Linear(c.width, 1)
        with torch.no_grad():  # start near 0, inside the training clamp (a clamped prediction gets no gradient)
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Signed distances (*, P) of ``points`` (*, P, 3) for the shapes ``latent`` (*, K), one per leading index."""
        k = self.config.latent_size
        if points.ndim < 2 or points.shape[-1] != 3:
            raise ShapeError(f"points must be (*, P, 3), got {tuple(points.shape)}")
        if latent.shape[-1:] != (k,) or latent.shape[:-1] != points.shape[:-2]:
            raise ShapeError(f"latent must be {(*points.shape[:-2], k)} for points {tuple(points.shape)}, got "
                             f"{tuple(latent.shape)}")
        x_in = torch.cat([latent.unsqueeze(-2).expand(*points.shape[:-1], k), points], dim=-1)
        x = x_in
        for i, layer in enumerate(self.hidden):
            if i == self.config.latent_in:
                x = torch.cat([x, x_in], dim=-1)
            x = self.dropout(torch.relu(layer(x)))
        return torch.tanh(self.out(x)).squeeze(-1)
