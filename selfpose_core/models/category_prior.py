"""A category's shape prior (SSC-6D, seed 003, Sec. 3.1): a trained DeepSDF decoder, the latents of its training
instances, and what inference does with them -- fit the latent of a new instance to points on its surface (Eq. 4-6)
and extract its mesh by marching cubes.

A prior is a directory::

    prior.yaml   format_version, category, latent_size, decoder (architecture), frame, training, provenance, metrics
    weights.pt   {"decoder": state dict, "latents": (instances, latent_size) float32}, torch.load(weights_only=True)

Shapes live in the normalised frame of ``selfpose_core.data.sdf_samples`` (NOCS frame / NOCS scale: box diagonal 1,
inside the unit sphere); SSC-6D's Eq. 5 takes camera points there with the predicted ``R, t, s``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
import yaml

from selfpose_core.config_io import dataclass_from_mapping, excerpt, load_yaml, one_line, yaml_safe
from selfpose_core.errors import ConfigError, ModelError, ShapeError
from selfpose_core.mesh.categories import CATEGORIES
from selfpose_core.models.sdf_decoder import SdfDecoder, SdfDecoderConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAME = "NOCS frame / NOCS scale (tight box centred, diagonal 1)"
MAX_WEIGHTS_BYTES = 256 << 20
MAX_INSTANCES = 1_000_000
MAX_PARAMETERS = 20_000_000  # a decoder described by prior.yaml larger than this is refused before it is built
MIN_FIT_POINTS = 16


@dataclass(slots=True)
class CategoryPrior:
    """A trained prior in memory: the decoder (eval mode) and the latents of the instances it was trained on."""

    category: str
    decoder: SdfDecoder
    latents: torch.Tensor  # (instances, latent_size)
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_size(self) -> int:
        return self.decoder.config.latent_size

    @property
    def mean_latent(self) -> torch.Tensor:
        """(latent_size,) mean of the training latents: the category's average shape, where fitting starts."""
        return self.latents.mean(0)

    def save(self, path: str | Path) -> Path:
        """Write prior.yaml and weights.pt into directory ``path`` (weights first, each via a temporary file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights = {"decoder": {k: v.detach().cpu() for k, v in self.decoder.state_dict().items()},
                   "latents": self.latents.detach().cpu().float()}
        torch.save(weights, path / "weights.pt.tmp")
        (path / "weights.pt.tmp").replace(path / "weights.pt")
        spec = {"format_version": FORMAT_VERSION, "category": self.category, "latent_size": self.latent_size,
                "decoder": asdict(self.decoder.config), "frame": FRAME, "training": yaml_safe(self.training),
                "provenance": yaml_safe(self.provenance), "metrics": yaml_safe(self.metrics)}
        (path / "prior.yaml.tmp").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        (path / "prior.yaml.tmp").replace(path / "prior.yaml")
        log.info("wrote %s shape prior %s", self.category, path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CategoryPrior:
        """Read a prior directory; any problem is one ModelError line naming the file and the key."""
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"category prior {path} does not exist or is not a directory")
        spec_path, weights_path = path / "prior.yaml", path / "weights.pt"
        for p in (spec_path, weights_path):
            if not p.is_file():
                raise ModelError(f"category prior {path} has no {p.name} (write one with `selfpose category-prior`)")
        raw = load_yaml(spec_path, "category prior file", ModelError)
        if not isinstance(raw, dict):
            raise ModelError(f"{spec_path}: must hold a mapping, got {excerpt(raw)}")
        for key in ("format_version", "category", "latent_size", "decoder"):
            if key not in raw:
                raise ModelError(f"{spec_path}: missing key {key}")
        if raw["format_version"] != FORMAT_VERSION:
            raise ModelError(f"{spec_path}: format_version {excerpt(raw['format_version'])} is not supported (this "
                             f"selfpose reads version {FORMAT_VERSION}); train the prior again")
        if raw["category"] not in CATEGORIES:
            raise ModelError(f"{spec_path}: category must be one of {', '.join(CATEGORIES)}, got "
                             f"{excerpt(raw['category'])}")
        try:
            config = dataclass_from_mapping(SdfDecoderConfig(), raw["decoder"], "decoder")
            config.validate("decoder")
        except ConfigError as exc:
            raise ModelError(f"{spec_path}: {exc}") from None
        if raw["latent_size"] != config.latent_size:
            raise ModelError(f"{spec_path}: latent_size {excerpt(raw['latent_size'])} differs from "
                             f"decoder.latent_size {config.latent_size}")
        extra = {}
        for key in ("training", "provenance", "metrics"):
            extra[key] = raw.get(key) or {}
            if not isinstance(extra[key], dict):
                raise ModelError(f"{spec_path}: {key} must be a mapping, got {excerpt(extra[key])}")
        with torch.device("meta"):  # counted without allocating
            n = sum(p.numel() for p in SdfDecoder(config).parameters())
        if n > MAX_PARAMETERS:
            raise ModelError(f"{spec_path}: the decoder described (width {config.width}, {config.layers} layers) has "
                             f"{n} parameters, more than the {MAX_PARAMETERS} selfpose loads")
        decoder = SdfDecoder(config)
        latents = _load_weights(weights_path, decoder)
        return cls(raw["category"], decoder.to(device).eval(), latents.to(device), **extra)


def _load_weights(weights_path: Path, decoder: SdfDecoder) -> torch.Tensor:
    """Load weights.pt into ``decoder``; returns the training latents (ModelError naming file and key)."""
    size = weights_path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"{weights_path}: {size} bytes, more than the {MAX_WEIGHTS_BYTES} a prior may have")
    try:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused pickle), EOFError, RuntimeError (truncated zip), ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{weights_path}: cannot be loaded safely with torch.load(weights_only=True) "
                         f"({type(exc).__name__}: {one_line(first)})") from None
    if not isinstance(weights, dict):
        raise ModelError(f"{weights_path}: must hold a mapping {{decoder, latents}}, got {type(weights).__name__}")
    state, latents = weights.get("decoder"), weights.get("latents")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{weights_path}: no 'decoder' weights (a mapping of tensor names to tensors)")
    k = decoder.config.latent_size
    if not isinstance(latents, torch.Tensor) or latents.ndim != 2 or latents.shape[1] != k \
            or not 1 <= latents.shape[0] <= MAX_INSTANCES or not latents.is_floating_point():
        raise ModelError(f"{weights_path}: 'latents' must be a float tensor (instances, {k}), got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    for name, tensor in [*state.items(), ("latents", latents)]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{weights_path}: tensor {excerpt(name)} holds NaN/inf values (a diverged training?)")
    try:
        decoder.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{weights_path}: 'decoder' weights do not fit the architecture in prior.yaml "
                         f"({one_line(first)} ...)") from None
    return latents.float()


@dataclass(slots=True)
class LatentFitConfig:
    """Inference-time latent optimisation (SSC-6D Eq. 4 + Eq. 6 with the weights of Eq. 7; DeepSDF Sec. 6.2)."""

    steps: int = 300
    lr: float = 0.01  # Adam; divided by 10 for the last quarter of the steps
    beta: float = 1.0  # Eq. 6: L_reg = exp(beta |v|) - 1
    reg_weight: float = 0.01  # lambda_reg of Eq. 7 (lambda_sdf = 1)
    max_points: int = 2048  # a larger cloud is subsampled once

    def validate(self, where: str = "latent_fit") -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"{where}.steps must be an integer >= 1, got {self.steps!r}")
        if not self.lr > 0 or not self.beta > 0 or not self.reg_weight >= 0:
            raise ConfigError(f"{where}: lr and beta must be > 0, reg_weight >= 0; got {self.lr}, {self.beta}, "
                              f"{self.reg_weight}")
        if self.max_points < MIN_FIT_POINTS:
            raise ConfigError(f"{where}.max_points must be >= {MIN_FIT_POINTS}, got {self.max_points}")


@dataclass(slots=True)
class FittedLatent:
    latent: torch.Tensor  # (latent_size,)
    sdf_loss: float  # Eq. 4 at the end: mean |F(p; v)| over the points inside the unit sphere (normalised units)
    reg_loss: float  # Eq. 6 at the end


def sdf_alignment_loss(decoder: SdfDecoder, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """SSC-6D Eq. 4: mean over ``points`` (*, P, 3) of ``|F(p; v)|`` for the points inside the unit sphere (the
    others count as 0), per leading index (*,). ``latent``: (*, K)."""
    inside = (points.norm(dim=-1) < 1.0).to(points.dtype)
    return (decoder(points, latent).abs() * inside).mean(-1)


def latent_regulariser(latent: torch.Tensor, beta: float) -> torch.Tensor:
    """SSC-6D Eq. 6: ``exp(beta |v|) - 1`` per latent (*,) of ``latent`` (*, K)."""
    return torch.expm1(beta * latent.norm(dim=-1))


def fit_latent(prior: CategoryPrior, points: np.ndarray | torch.Tensor, config: LatentFitConfig | None = None,
               rng: np.random.Generator | None = None) -> FittedLatent:
    """The latent of the shape whose surface passes through ``points`` (N, 3), given in the prior's normalised
    frame (SSC-6D Eq. 5 maps camera points there). Starts from the mean latent and minimises Eq. 4 + lambda Eq. 6
    with Adam; the decoder stays frozen. Points may cover one side only (a depth view). ``rng`` picks the subset
    when there are more than ``config.max_points``. Too few points inside the unit sphere: ShapeError.
    """
    config = config or LatentFitConfig()
    config.validate()
    pts = torch.as_tensor(np.asarray(points, dtype=np.float32) if not torch.is_tensor(points) else points,
                          dtype=torch.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ShapeError(f"points must be (N, 3), got {tuple(pts.shape)}")
    pts = pts[torch.isfinite(pts).all(1) & (pts.norm(dim=1) < 1.0)]
    if len(pts) < MIN_FIT_POINTS:
        raise ShapeError(f"fitting a {prior.category} latent needs at least {MIN_FIT_POINTS} finite points inside "
                         f"the unit sphere of the normalised frame, got {len(pts)}")
    if len(pts) > config.max_points:
        rng = rng or np.random.default_rng(0)
        pts = pts[torch.from_numpy(rng.choice(len(pts), config.max_points, replace=False))]
    device = prior.latents.device
    pts = pts.to(device)
    latent = prior.mean_latent.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=config.lr)
    decoder = prior.decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    try:
        for step in range(config.steps):
            if step == (3 * config.steps) // 4:
                for group in opt.param_groups:
                    group["lr"] = config.lr / 10
            opt.zero_grad(set_to_none=True)
            loss = (sdf_alignment_loss(decoder, pts, latent)
                    + config.reg_weight * latent_regulariser(latent, config.beta))
            loss.backward()
            opt.step()
        with torch.no_grad():
            l_sdf = float(sdf_alignment_loss(decoder, pts, latent))
            l_reg = float(latent_regulariser(latent, config.beta))
    finally:
        for p in decoder.parameters():
            p.requires_grad_(True)
    return FittedLatent(latent.detach(), l_sdf, l_reg)


def reconstruct_mesh(prior: CategoryPrior, latent: torch.Tensor, resolution: int = 64,
                     half_side: float = 0.6) -> trimesh.Trimesh:
    """The zero level set of ``F(.; latent)`` as a mesh in the normalised frame: the decoder sampled on a
    ``resolution``^3 grid over ``[-half_side, half_side]^3``, then marching cubes (Open3D's flying edges). A latent
    whose SDF has no zero crossing in the grid: ModelError."""
    import open3d as o3d

    if not 8 <= resolution <= 512:
        raise ConfigError(f"resolution must be in 8..512, got {resolution}")
    if latent.shape != (prior.latent_size,) or not bool(torch.isfinite(latent).all()):
        raise ShapeError(f"latent must be a finite ({prior.latent_size},) tensor, got {tuple(latent.shape)}")
    device = prior.latents.device
    latent = latent.to(device)
    axis = torch.linspace(-half_side, half_side, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = []
    with torch.no_grad():
        for chunk in grid.to(device).split(65536):
            values.append(prior.decoder(chunk.unsqueeze(0), latent.unsqueeze(0)).squeeze(0).cpu())
    volume = torch.cat(values).reshape(resolution, resolution, resolution).numpy()
    if not (volume.min() < 0 < volume.max()):
        raise ModelError(f"the {prior.category} latent decodes to no surface inside the grid (SDF from "
                         f"{volume.min():.3f} to {volume.max():.3f})")
    # Open3D puts voxel [i, j, k] at (k, j, i): transpose so that vertex coordinates are our (x, y, z) indices
    mesh = o3d.t.geometry.TriangleMesh.create_isosurfaces(o3d.core.Tensor(volume.transpose(2, 1, 0).copy()), [0.0])
    vertices = mesh.vertex.positions.numpy().astype(np.float64) * (2 * half_side / (resolution - 1)) - half_side
    faces = mesh.triangle.indices.numpy()[:, ::-1]  # negative inside: flip to outward winding
    return trimesh.Trimesh(vertices, faces, process=True)
