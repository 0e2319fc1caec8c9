"""Neural Object Learning (NOL, Park et al. 2020): render an object in a new pose from a few posed source images.

Pipeline of one rendering (paper Sec. 3.1, Fig. 2), all at crop resolution (64-128 px on CPU):

1. each source crop ``I_k`` (K, 3, S, S) is encoded (:class:`SourceEncoder`): a 4-level pyramid whose levels are
   reduced to 4, 3, 3, 3 channels by 3x3 convolutions and resized bilinearly to S x S; with the colour image this
   gives 16 image channels (the paper uses DenseNet-121's first four blocks; we have no pretrained weights offline,
   so a small encoder trained from scratch with NOL replaces it);
2. the target view is rasterised once; each covered pixel's surface point is moved into every source camera
   (pose ``T_k``) and projected, which gives its UV in the source crop, the face angle (cosine between surface
   normal and viewing ray: the paper's 17th channel, computed from the mesh rather than stored as an image) and a
   validity flag (in the source's object mask and not self-occluded, by a z-buffer test); the encoded source is
   sampled bilinearly there (:func:`project_sources`) -- a texture lookup with per-source UVs, differentiable
   w.r.t. the source poses (Eq. 3 needs it);
3. the projected maps ``P_k`` (17 channels + validity) are integrated over k by a ConvLSTM into ``X_I`` (16 ch);
   on CPU the LSTM runs at half resolution and ``X_I`` is upsampled bilinearly (``lstm_stride``);
4. the weight block maps ``[X_I, P_k]`` to a logit per source and pixel, a softmax over the valid sources gives
   ``W_k``; ``X_S = sum_k W_k P_k``; its first three channels are the output image ``X_D``;
5. a WDSR-style decoder (wide-activation residual blocks) gives ``X_phi`` for the training losses only.

Losses (Eq. 1, 2): ``L_i`` = masked L1 (weight ``lambda_i``) + feature reconstruction (``lambda_f``) between
``X_phi`` and the target; ``L_s`` = masked absolute Laplacian of ``X_S`` (``lambda_s``). The paper's feature
network psi (DenseNet's first two blocks, ImageNet weights) is replaced by :class:`FixedFeatures`, a fixed bank of
oriented derivative-of-Gaussian filters at two scales (what the first blocks of ImageNet CNNs learn, without
weights we cannot download).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn

from selfpose_core.config_io import excerpt, one_line, require_at_least
from selfpose_core.data.nol_training_set import NolTrainingConfig, NolTrainingSets
from selfpose_core.errors import ConfigError, ModelError, ShapeError
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.models.harness import TrainingJob, run_job, step_batches
from selfpose_core.models.trainer import Trainer, TrainerConfig
from selfpose_core.render import RenderMesh, render
from selfpose_core.types import ObjectModel

log = logging.getLogger(__name__)

#: channels of a projected map P_k: colour (3), encoder features (13), face angle (1)
COLOUR = slice(0, 3)
MAX_NOL_PARAMETERS = 50_000_000  # load_nol refuses configs describing more (200 MB of float32)


@dataclass(slots=True)
class NolConfig:
    """Architecture and loss weights (paper Sec. 4.2: lambda_i = 5, lambda_f = 10, lambda_s = 1; K = 8 / 6)."""

    crop_size: int = 64
    encoder_widths: tuple[int, ...] = (16, 24, 32, 48)  # pyramid levels at stride 1, 2, 4, 8
    feature_channels: tuple[int, ...] = (4, 3, 3, 3)  # per level after the reducing conv (paper: 4, 3, 3, 3)
    lstm_channels: int = 16
    lstm_stride: int = 2  # the ConvLSTM runs at 1/lstm_stride resolution (CPU budget), X_I is upsampled
    weight_channels: int = 16
    decoder_blocks: int = 2
    decoder_width: int = 16
    decoder_expansion: int = 4
    train_sources: int = 8
    infer_sources: int = 6
    lambda_i: float = 5.0
    lambda_f: float = 10.0
    lambda_s: float = 1.0

    def validate(self, where: str = "nol") -> None:
        if len(self.encoder_widths) != len(self.feature_channels) or not self.encoder_widths:
            raise ConfigError(f"{where}.encoder_widths and {where}.feature_channels need the same non-zero length, "
                              f"got {self.encoder_widths} and {self.feature_channels}")
        stride = 2 ** (len(self.encoder_widths) - 1)
        if self.crop_size < 16 or self.crop_size % stride:
            raise ConfigError(f"{where}.crop_size must be >= 16 and a multiple of {stride}, got {self.crop_size}")
        if self.lstm_stride not in (1, 2, 4):
            raise ConfigError(f"{where}.lstm_stride must be 1, 2 or 4, got {self.lstm_stride}")
        require_at_least(self, ("lstm_channels", "weight_channels", "decoder_width", "decoder_expansion", "train_sources",
                    "infer_sources"), 1, where)

    @property
    def projected_channels(self) -> int:
        """Channels of a projected map P_k: 3 colour + encoder features + 1 face angle."""
        return 3 + sum(self.feature_channels) + 1


@dataclass(slots=True)
class NolMesh:
    """An object's geometry for NOL: vertices (V, 3) metres, faces (F, 3) int64, unit vertex normals (V, 3)."""

    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor

    @classmethod
    def from_arrays(cls, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray | None = None) -> NolMesh:
        """Wrap numpy arrays; area-weighted vertex normals are computed when ``normals`` is None."""
        v = np.asarray(vertices, np.float64)
        f = np.asarray(faces, np.int64)
        check_shape(v, ("V", 3), "vertices")
        check_shape(f, ("F", 3), "faces")
        if normals is None:
            fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
            normals = np.zeros_like(v)
            for k in range(3):
                np.add.at(normals, f[:, k], fn)
        n = np.asarray(normals, np.float64)
        n = n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
        return cls(torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(f), torch.as_tensor(n, dtype=torch.float32))

    @classmethod
    def from_object_model(cls, model: ObjectModel) -> NolMesh:
        return cls.from_arrays(model.vertices, model.faces)

    @property
    def render_mesh(self) -> RenderMesh:
        return RenderMesh(self.vertices, self.faces)


@dataclass(slots=True)
class TargetRaster:
    """The target views rasterised once: face ids (T, H, W) (-1 background) and barycentrics (T, H, W, 3)."""

    face_ids: torch.Tensor
    barycentrics: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.face_ids >= 0


def rasterize_targets(mesh: NolMesh, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                      size: tuple[int, int]) -> TargetRaster:
    """Rasterise the target poses ``R`` (T, 3, 3), ``t`` (T, 3) with crop intrinsics ``K`` (T, 3, 3) at ``size``."""
    with torch.no_grad():
        out = render(mesh.render_mesh, R.float(), t.float(), K.float(), size, coords=False, attributes=False,
                     silhouette=False, visibility=False)
    return TargetRaster(out.face_ids, out.barycentrics)


def render_source_depth(mesh: NolMesh, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                        size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) depth (0 off the object, no gradient) of the object at the source poses ``R`` (K, 3, 3),
    ``t`` (K, 3) through the crop intrinsics ``K`` (K, 3, 3): the z-buffer for the visibility test."""
    with torch.no_grad():
        return render(mesh.render_mesh, R.detach().float(), t.detach().float(), K.detach().float(), size,
                      coords=False, attributes=False, silhouette=False, visibility=False).depth


def project_sources(mesh: NolMesh, features: torch.Tensor, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor,
                    depth: torch.Tensor, masks: torch.Tensor, raster: TargetRaster,
                    depth_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the encoded source maps into the target views (the paper's UV projection, Sec. 3.1).

    Each covered target pixel's surface point (object frame, from the target's barycentrics) is moved into every
    source camera and projected; the source map is sampled bilinearly there. Interpolating the 3-D point and
    projecting per pixel (rather than interpolating per-vertex UVs) is exact for large faces.

    Args:
        mesh: the object.
        features: (K, C, Hs, Ws) encoded source crops (colour first, see :class:`SourceEncoder`).
        R, t, K: (K, 3, 3), (K, 3), (K, 3, 3) source poses ``T_cam_obj`` and crop intrinsics (differentiable).
        depth: (K, Hs, Ws) :func:`render_source_depth` at the source poses; masks: (K, Hs, Ws) bool object masks.
        raster: the target views (T of them, H x W).
        depth_tol: metres; a point is seen by a source when |z - depth| <= depth_tol at its nearest source pixel.

    Returns: ``P`` (T, K, C + 1, H, W) (last channel: cosine of the angle between the surface normal and the
    source's viewing ray) and ``valid`` (T, K, H, W) bool (covered in the target, in front of the source, inside
    its image and mask, not occluded by the object itself); ``P`` is 0 where invalid. Differentiable w.r.t. R, t,
    K and ``features``.
    """
    dims: dict[str, int] = {}
    check_shape(features, ("K", "C", "Hs", "Ws"), "features", dims)
    check_shape(R, ("K", 3, 3), "R", dims)
    check_shape(t, ("K", 3), "t", dims)
    check_shape(K, ("K", 3, 3), "K", dims)
    check_shape(depth, ("K", "Hs", "Ws"), "depth", dims)
    check_shape(masks, ("K", "Hs", "Ws"), "masks", dims)
    n_src, C, Hs, Ws = features.shape
    T_, H, W = raster.face_ids.shape
    dt = R.dtype
    lin = raster.mask.reshape(-1).nonzero(as_tuple=True)[0]
    vi = mesh.faces[raster.face_ids.reshape(-1)[lin]]  # (P, 3)
    bary = raster.barycentrics.reshape(-1, 3)[lin].to(dt)[..., None]  # (P, 3, 1)
    X = (bary * mesh.vertices.to(dt)[vi]).sum(1)  # (P, 3) object frame
    nrm = (bary * mesh.normals.to(dt)[vi]).sum(1)
    Xc = X @ R.transpose(-1, -2) + t[:, None]  # (K, P, 3)
    nc = nrm @ R.transpose(-1, -2)
    z = Xc[..., 2]
    zs = torch.where(z > 1e-3, z, torch.ones_like(z))
    uv = (Xc[..., :2] / zs[..., None]) @ K[:, :2, :2].transpose(-1, -2) + K[:, None, :2, 2]  # (K, P, 2)
    angle = (-(nc * Xc).sum(-1) / (nc.norm(dim=-1) * Xc.norm(dim=-1)).clamp_min(1e-9)).clamp(0, 1)
    with torch.no_grad():
        u, v = uv[..., 0], uv[..., 1]
        inside = (z > 1e-3) & (u > -0.5) & (u < Ws - 0.5) & (v > -0.5) & (v < Hs - 0.5)
        ui = u.round().long().clamp(0, Ws - 1)
        vj = v.round().long().clamp(0, Hs - 1)
        k_idx = torch.arange(n_src)[:, None]
        d = depth[k_idx, vj, ui]
        ok = inside & masks[k_idx, vj, ui] & (d > 0) & ((z - d).abs() <= depth_tol)
    grid = torch.stack([(2 * uv[..., 0] + 1) / Ws - 1, (2 * uv[..., 1] + 1) / Hs - 1], -1)[:, None]  # (K, 1, P, 2)
    sampled = Fn.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="border",
                             align_corners=False)[:, :, 0]  # (K, C, P)
    vals = torch.cat([sampled, angle[:, None].to(features.dtype)], 1) * ok[:, None].to(features.dtype)
    P = _scatter_pixels(vals, lin, T_ * H * W).view(n_src, C + 1, T_, H, W).permute(2, 0, 1, 3, 4)
    valid = torch.zeros((n_src, T_ * H * W), dtype=torch.bool)
    valid[:, lin] = ok
    return P, valid.view(n_src, T_, H, W).permute(1, 0, 2, 3)


def _scatter_pixels(vals: torch.Tensor, lin: torch.Tensor, n_pix: int) -> torch.Tensor:
    """(K, C, P) values at flat pixel indices ``lin`` (P,) -> (K, C, n_pix) with zeros elsewhere."""
    out = vals.new_zeros(vals.shape[:2] + (n_pix,))
    return out.index_copy(2, lin, vals)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class SourceEncoder(nn.Module):
    """Feature pyramid of a source crop (B, 3, S, S) -> (B, 3 + sum(feature_channels), S, S), colour first."""

    def __init__(self, config: NolConfig) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        self.reduce = nn.ModuleList()
        cin = 3
        for i, (w, c) in enumerate(zip(config.encoder_widths, config.feature_channels)):
            self.levels.append(nn.Sequential(_conv(cin, w, 1 if i == 0 else 2), _conv(w, w)))
            self.reduce.append(nn.Conv2d(w, c, 3, 1, 1))
            cin = w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_shape(images, ("B", 3, "H", "W"), "images")
        size = images.shape[-2:]
        x, feats = images * 2 - 1, [images]
        for level, reduce in zip(self.levels, self.reduce):
            x = level(x)
            y = reduce(x)
            feats.append(y if y.shape[-2:] == size else Fn.interpolate(y, size=size, mode="bilinear",
                                                                        align_corners=False))
        return torch.cat(feats, 1)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015): gates from a 3x3 conv of [input, hidden]."""

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, 3, 1, 1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            z = x.new_zeros((x.shape[0], self.hidden) + tuple(x.shape[-2:]))
            state = (z, z)
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class WideResBlock(nn.Module):
    """WDSR-A block: 3x3 conv to ``width * expansion`` channels, ReLU, 3x3 conv back, residual."""

    def __init__(self, width: int, expansion: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width * expansion, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width * expansion, width, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class NolNet(nn.Module):
    """The NOL network. Use :meth:`encode` once per source set, then :meth:`integrate` per batch of targets."""

    def __init__(self, config: NolConfig | None = None) -> None:
        super().__init__()
        self.config = config or NolConfig()
        self.config.validate()
        c = self.config
        C = c.projected_channels
        self.encoder = SourceEncoder(c)
        self.lstm_in = _conv(C + 1, c.lstm_channels)
        self.lstm = ConvLSTMCell(c.lstm_channels, c.lstm_channels)
        self.weight = nn.Sequential(_conv(c.lstm_channels + C + 1, c.weight_channels),
                                    _conv(c.weight_channels, c.weight_channels),
                                    nn.Conv2d(c.weight_channels, 1, 3, 1, 1))
        self.decoder = nn.Sequential(nn.Conv2d(C, c.decoder_width, 3, 1, 1),
                                     *[WideResBlock(c.decoder_width, c.decoder_expansion)
                                       for _ in range(c.decoder_blocks)],
                                     nn.Conv2d(c.decoder_width, 3, 3, 1, 1))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(K, 3, S, S) source crops in [0, 1] -> (K, projected_channels - 1, S, S) encoded maps."""
        return self.encoder(images)

    def integrate(self, P: torch.Tensor, valid: torch.Tensor, *, use_lstm: bool = True) -> dict[str, torch.Tensor]:
        """Weighted rendering from projected maps ``P`` (T, K, C, H, W) and ``valid`` (T, K, H, W).

        Returns ``X_S`` (T, C, H, W), ``X_D`` (T, 3, H, W) colour in [0, 1], ``weights`` (T, K, H, W) and
        ``mask`` (T, H, W) bool (at least one valid source: the paper's M_D). ``use_lstm=False`` replaces the
        LSTM and weight block by the plain average of the valid projections (the paper's "w/o LSTM" baseline).
        """
        check_shape(P, ("T", "K", self.config.projected_channels, "H", "W"), "P")
        check_shape(valid, P.shape[:2] + P.shape[3:], "valid")
        v = valid.to(P.dtype)
        mask = valid.any(1)
        if use_lstm:
            state = None
            st = self.config.lstm_stride
            for k in range(P.shape[1]):
                x = torch.cat([P[:, k], v[:, k, None]], 1)
                state = self.lstm(self.lstm_in(Fn.avg_pool2d(x, st) if st > 1 else x), state)
            X_I = state[0] if st == 1 else Fn.interpolate(state[0], size=P.shape[-2:], mode="bilinear",
                                                          align_corners=False)
            logits = torch.stack([self.weight(torch.cat([X_I, P[:, k], v[:, k, None]], 1))[:, 0]
                                  for k in range(P.shape[1])], 1)  # (T, K, H, W)
            logits = logits.masked_fill(~valid, -1e4)
            weights = torch.softmax(logits, 1) * mask[:, None].to(P.dtype)
        else:
            weights = v / v.sum(1, keepdim=True).clamp_min(1.0)
        X_S = (weights[:, :, None] * P).sum(1)
        return {"X_S": X_S, "X_D": X_S[:, COLOUR].clamp(0, 1), "weights": weights, "mask": mask}

    def decode(self, X_S: torch.Tensor) -> torch.Tensor:
        """Decoded rendering X_phi (T, 3, H, W) of ``X_S`` (training only)."""
        return X_S[:, COLOUR] + self.decoder(X_S)

    def forward(self, mesh: NolMesh, images: torch.Tensor, masks: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                K: torch.Tensor, raster: TargetRaster, *, depth_tol: float, decode: bool = True
                ) -> dict[str, torch.Tensor]:
        """Encode source crops ``images`` (K, 3, S, S) with object ``masks`` (K, S, S), project them with poses
        ``R``/``t`` and crop intrinsics ``K`` into the ``raster``'s target views and integrate.

        Returns :meth:`integrate`'s dict plus ``X_phi`` when ``decode``.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ShapeError(f"NOL source images must be float (K, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        depth = render_source_depth(mesh, R, t, K, tuple(images.shape[-2:]))
        P, valid = project_sources(mesh, self.encode(images), R, t, K, depth, masks, raster, depth_tol)
        out = self.integrate(P, valid)
        if decode:
            out["X_phi"] = self.decode(out["X_S"])
        return out


def _dog_bank(sigma: float) -> torch.Tensor:
    """(4, 1, k, k) derivative-of-Gaussian filters at 0, 45, 90, 135 degrees."""
    r = max(1, int(math.ceil(2.5 * sigma)))
    y, x = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
    g = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    bank = []
    for a in (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4):
        d = -(x * math.cos(a) + y * math.sin(a)) / sigma ** 2 * g
        bank.append(d / d.abs().sum() * 2)
    return torch.stack(bank)[:, None]


class FixedFeatures(nn.Module):
    """psi of Eq. 1 without pretrained weights: two "blocks" of fixed oriented derivative-of-Gaussian responses of
    each colour channel, block 1 at full resolution (sigma 1 px), block 2 at half resolution (sigma 1 px there).
    (B, 3, H, W) -> [(B, 12, H, W), (B, 12, H/2, W/2)]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bank", _dog_bank(1.0).repeat(3, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad = self.bank.shape[-1] // 2
        f1 = Fn.conv2d(Fn.pad(x, (pad,) * 4, mode="replicate"), self.bank, groups=3)
        x2 = Fn.avg_pool2d(x, 2)
        f2 = Fn.conv2d(Fn.pad(x2, (pad,) * 4, mode="replicate"), self.bank, groups=3)
        return [f1, f2]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over channels and masked pixels of ``x`` (T, C, H, W) with ``mask`` (T, H, W) (0 if empty)."""
    m = mask[:, None].to(x.dtype)
    return (x * m).sum() / (m.sum() * x.shape[1]).clamp_min(1.0)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """Discrete 4-neighbour Laplacian of (T, C, H, W) (replicate border)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=x.dtype)
    C = x.shape[1]
    return Fn.conv2d(Fn.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(C, 1, 3, 3).contiguous(), groups=C)


def nol_losses(out: dict[str, torch.Tensor], target: torch.Tensor, config: NolConfig,
               psi: FixedFeatures) -> dict[str, torch.Tensor]:
    """Eq. 1 and Eq. 2 for :class:`NolNet` outputs ``out`` (with ``X_phi``) and target images (T, 3, H, W).

    Both are averaged over M_D (``out["mask"]``). Returns ``l1``, ``feature``, ``smooth`` (weighted) and ``loss``.
    """
    check_shape(target, out["X_phi"].shape, "target")
    mask = out["mask"]
    l1 = config.lambda_i * _masked_mean((out["X_phi"] - target).abs(), mask)
    feat = out["X_phi"].new_zeros(())
    for fp, ft in zip(psi(out["X_phi"]), psi(target)):
        m = mask if fp.shape[-2:] == mask.shape[-2:] else \
            Fn.adaptive_max_pool2d(mask[:, None].float(), fp.shape[-2:])[:, 0] > 0
        feat = feat + config.lambda_f * _masked_mean((fp - ft).abs(), m)
    smooth = config.lambda_s * _masked_mean(laplacian(out["X_S"]).abs(), mask)
    return {"l1": l1, "feature": feat, "smooth": smooth, "loss": l1 + feat + smooth}


def save_nol(net: NolNet, path: str | Path, provenance: dict | None = None) -> None:
    """Write ``net``'s weights and config as tensors + plain values (``torch.load(weights_only=True)``-safe)."""
    torch.save({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(net.config).items()},
                "state_dict": net.state_dict(), "provenance": dict(provenance or {})}, path)


def load_nol(path: str | Path, device: str = "cpu") -> NolNet:
    """Load weights written by :func:`save_nol` / ``selfpose nol-train``."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"NOL weights {p} do not exist (make them with `selfpose nol-train --out DIR`)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused pickle), EOFError, RuntimeError (zip), ...
        raise ModelError(f"cannot load NOL weights {p} safely with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {one_line(str(exc), 160)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) \
            or not isinstance(state.get("state_dict"), dict):
        raise ModelError(f"cannot load NOL weights {p}: must hold a mapping with 'config' and 'state_dict'")
    for name, t in state["state_dict"].items():
        if not isinstance(t, torch.Tensor) or (t.is_floating_point() and not bool(torch.isfinite(t).all())):
            raise ModelError(f"cannot load NOL weights {p}: 'state_dict' entry {excerpt(name, 60)} is not a tensor "
                             "of finite values")
    try:
        cfg = NolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
        with torch.device("meta"):  # count first: absurd widths must not allocate
            n = sum(t.numel() for t in NolNet(cfg).parameters())
        if n > MAX_NOL_PARAMETERS:
            raise ModelError(f"cannot load NOL weights {p}: its config describes {n} parameters, more than the "
                             f"{MAX_NOL_PARAMETERS} selfpose loads")
        net = NolNet(cfg)
        net.load_state_dict(state["state_dict"])
    except ModelError:
        raise
    except Exception as exc:  # a config NolNet cannot be built from, weights that do not fit it
        raise ModelError(f"cannot load NOL weights {p}: {type(exc).__name__}: {one_line(str(exc), 160)}") from None
    return net.to(device).eval()


def depth_tolerance(diameter: float | torch.Tensor) -> float:
    """Self-occlusion tolerance of :func:`project_sources` for an object of ``diameter`` metres (5 %)."""
    return 0.05 * float(diameter)


def training_step(net: NolNet, sample: dict[str, torch.Tensor], psi: FixedFeatures,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Losses of one training set (a :class:`selfpose_core.data.nol_training_set.NolTrainingSets` item): the
    sources in a random order (the LSTM must not depend on it), the target view rendered and compared."""
    s = {k: v.to(device) for k, v in sample.items()}
    mesh = NolMesh(s["vertices"], s["faces"], s["normals"])
    order = torch.randperm(s["src_images"].shape[0])
    size = tuple(s["tgt_image"].shape[-2:])
    raster = rasterize_targets(mesh, s["tgt_T"][None, :3, :3], s["tgt_T"][None, :3, 3], s["tgt_K"][None], size)
    T = s["src_T"][order]
    out = net(mesh, s["src_images"][order], s["src_masks"][order], T[:, :3, :3], T[:, :3, 3], s["src_K"][order],
              raster, depth_tol=depth_tolerance(s["diameter"]))
    losses = nol_losses(out, s["tgt_image"][None], net.config, psi)
    with torch.no_grad():
        m = out["mask"][:, None].to(out["X_D"].dtype)
        losses["l1_weighted_rendering"] = ((out["X_D"] - s["tgt_image"][None]).abs() * m).sum() / \
            (3 * m.sum()).clamp_min(1.0)
        avg = net.integrate(*project_sources(mesh, net.encode(s["src_images"]), s["src_T"][:, :3, :3],
                                             s["src_T"][:, :3, 3], s["src_K"],
                                             render_source_depth(mesh, s["src_T"][:, :3, :3], s["src_T"][:, :3, 3],
                                                                 s["src_K"], size), s["src_masks"], raster,
                                             depth_tolerance(s["diameter"])), use_lstm=False)
        losses["l1_average_projection"] = ((avg["X_D"] - s["tgt_image"][None]).abs() * m).sum() / \
            (3 * m.sum()).clamp_min(1.0)
    return losses


def train_nol(out_dir: str | Path, *, config: NolConfig | None = None, data: NolTrainingConfig | None = None,
              trainer: TrainerConfig | None = None, workers: int = 1, device: str = "cpu",
              resume: bool = False) -> dict[str, float]:
    """Train the NOL network on procedural training sets and write ``out_dir/nol.pt`` (:func:`save_nol`).

    One optimiser step averages ``trainer.grad_accum`` sets (the paper accumulates 10); Adam(W) with the shared
    trainer's warm-up + cosine schedule (the paper: lr 1e-3, /10 after 20 of 35 epochs). Training state lives in
    ``out_dir/train`` (``resume`` continues from it). Returns the last logged losses, including the L1 error of the
    weighted rendering X_D and of the plain average projection on the training targets.
    """
    config = config or NolConfig()
    config.validate()
    data = data or NolTrainingConfig(crop_size=config.crop_size, n_sources=config.train_sources)
    if data.crop_size != config.crop_size or data.n_sources != config.train_sources:
        raise ConfigError(f"NOL training data (crop {data.crop_size}, {data.n_sources} sources) must match the network "
                          f"(crop {config.crop_size}, train_sources {config.train_sources})")
    trainer = trainer or TrainerConfig(steps=300, lr=1e-3, grad_accum=4, warmup_steps=20, checkpoint_every=50,
                                       log_every=10)
    out_dir = Path(out_dir)
    n_sets = trainer.steps * trainer.grad_accum
    sets = NolTrainingSets(n_sets, trainer.seed, data)
    net = NolNet(config).to(device)
    psi = FixedFeatures().to(device)

    start = time.monotonic()
    job = TrainingJob("nol_network", config, {"nol": net}, step_batches(sets, trainer.grad_accum, workers),
                      lambda batch, step: training_step(net, batch, psi, device),
                      {"sets": n_sets, "seed": trainer.seed, "training_data": asdict(data)})
    provenance: dict[str, Any] = {"command": "selfpose nol-train"}
    record = run_job(job, Trainer(job.modules, out_dir / "train", trainer, device=device, name="nol"), provenance,
                     resume=resume)
    provenance["seconds"] = round(time.monotonic() - start, 1)
    save_nol(net, out_dir / "nol.pt", provenance)
    log.info("NOL weights written to %s", out_dir / "nol.pt")
    return record.final_losses
