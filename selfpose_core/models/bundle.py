"""Model bundle: a directory with ``bundle.yaml`` (what the weights are) and ``weights.pt`` (tensors only).

bundle.yaml::

    format_version: 1
    objects_config: objects.yaml path (relative to the bundle directory, or absolute)
    objects: [{name, obj_id, diameter, keypoints: 9x3 (8 FPS + centre, metres), coord_centre: 3, coord_half_extent: 3}]
    pose_net: {kind: keypoint | correspondence, crop_size, widths, out_stride, num_keypoints}
    detector: {input_width, input_height, widths, out_stride, score_threshold}
    image_size: [width, height] of the frames the detector was trained for
    provenance: {command, created, stages, seed, ...}
    metrics: {...}

weights.pt holds ``{"detector": state_dict, "pose_net": state_dict}`` (+ ``"appearance"``: the objects' colour
histograms, (objects, bins), once an adaptation learned them from a recording, and ``"surface_colours"``: the
colours at the objects' surface points, see models/surface_colours.py) and is read with
``torch.load(weights_only=True)``: a bundle never executes code when loaded.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml

from selfpose_core.config_io import excerpt, load_yaml, one_line
from selfpose_core.errors import ConfigError, ModelError
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.correspondence_net import CorrespondenceNet, CorrespondenceNetConfig, coordinate_normaliser
from selfpose_core.models.detector import Detector, DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet, KeypointNetConfig
from selfpose_core.models.surface_colours import SurfaceColours
from selfpose_core.types import ObjectModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_PARAMETERS = 50_000_000  # detector + pose net; above: refused (200 MB of float32 weights; ours have ~1M)
MAX_LEVELS = 8  # backbone levels
MAX_WIDTH = 4096  # channels per backbone level
MAX_OBJECTS = 1000
MAX_WEIGHTS_BYTES = 4 * MAX_PARAMETERS + (64 << 20)
SURFACE_FIELDS = ("points", "normals", "colours", "counts", "agreement")  # SurfaceColours arrays, in its argument order
POSE_NET_KINDS = ("keypoint", "correspondence")
PoseNet = Union[KeypointNet, CorrespondenceNet]


@dataclass(slots=True)
class BundleObject:
    """What inference needs to know about one object (the mesh itself comes from the objects config)."""

    name: str
    obj_id: int
    diameter: float
    keypoints: np.ndarray  # (9, 3) metres, 8 FPS keypoints + centre
    coord_centre: np.ndarray  # (3,)
    coord_half_extent: np.ndarray  # (3,)

    @classmethod
    def from_model(cls, model: ObjectModel) -> BundleObject:
        centre, half = coordinate_normaliser(model.vertices)
        return cls(model.name, int(model.obj_id), float(model.diameter), np.asarray(model.keypoints, np.float64),
                   centre, half)

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, "obj_id": self.obj_id, "diameter": self.diameter,
                "keypoints": np.round(self.keypoints, 7).tolist(), "coord_centre": np.round(self.coord_centre, 7).tolist(),
                "coord_half_extent": np.round(self.coord_half_extent, 7).tolist()}


@dataclass(slots=True)
class PoseNetSpec:
    kind: str = "keypoint"
    crop_size: int = 64
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    num_keypoints: int = 9


@dataclass(slots=True)
class BundleSpec:
    objects: list[BundleObject]
    objects_config: str
    pose_net: PoseNetSpec = field(default_factory=PoseNetSpec)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    image_size: tuple[int, int] = (640, 480)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        d = self.detector
        p = self.pose_net
        return {
            "format_version": FORMAT_VERSION,
            "objects_config": self.objects_config,
            "objects": [o.to_yaml() for o in self.objects],
            "pose_net": {"kind": p.kind, "crop_size": p.crop_size, "widths": list(p.backbone.widths),
                         "out_stride": p.backbone.out_stride, "num_keypoints": p.num_keypoints},
            "detector": {"input_width": d.input_width, "input_height": d.input_height,
                         "widths": list(d.backbone.widths), "out_stride": d.backbone.out_stride,
                         "score_threshold": d.score_threshold},
            "image_size": list(self.image_size),
            "provenance": self.provenance,
            "metrics": self.metrics,
        }


def _get(d: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise ModelError(f"{path}: {where.rstrip('.') or 'the file'} must be a mapping, got {type(d).__name__}")
    if key not in d:
        raise ModelError(f"{path}: missing key {where}{key}")
    return d[key]


def _int(value: Any, key: str, path: Path, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (integral floats accepted), else ModelError naming ``key``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok or not lo <= value <= hi:
        raise ModelError(f"{path}: {key} must be an integer in {lo}..{hi}, got {excerpt(value)}")
    return int(value)


def _float(value: Any, key: str, path: Path, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi], else ModelError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ModelError(f"{path}: {key} must be a number in {lo:g}..{hi:g}, got {excerpt(value)}")
    return float(value)


def _array(value: Any, key: str, path: Path, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape`` (None: any length), else ModelError naming ``key``."""
    want = "x".join("N" if s is None else str(s) for s in shape)
    try:
        a = np.asarray(value, dtype=np.float64) if isinstance(value, list) and len(value) <= 4096 else None
    except (TypeError, ValueError, OverflowError):
        a = None
    if a is None or a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        got = f"shape {'x'.join(map(str, a.shape))}" if a is not None else excerpt(value)
        raise ModelError(f"{path}: {key} must be a {want} list of numbers, got {got}")
    if not np.isfinite(a).all():
        raise ModelError(f"{path}: {key} holds NaN/inf")
    return a


def _backbone(d: dict, where: str, path: Path) -> BackboneConfig:
    widths = _get(d, "widths", where, path)
    if not isinstance(widths, list) or not 2 <= len(widths) <= MAX_LEVELS:
        raise ModelError(f"{path}: {where}widths must be a list of 2..{MAX_LEVELS} channel counts, "
                         f"got {excerpt(widths)}")
    ws = tuple(_int(w, f"{where}widths[{i}]", path, 1, MAX_WIDTH) for i, w in enumerate(widths))
    cfg = BackboneConfig(ws, _int(_get(d, "out_stride", where, path), f"{where}out_stride", path, 1, 2 ** MAX_LEVELS))
    try:
        cfg.validate(f"{where}".rstrip("."))
    except ConfigError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return cfg


def parse_spec(raw: Any, path: Path) -> BundleSpec:
    """Validate a loaded bundle.yaml; errors name the file and the key.

    Every value is checked for type, range and finiteness (a NaN diameter or keypoint, ``image_size: "640x480"``,
    ``provenance.stages`` that is not a list of mappings are errors), and the two networks the spec describes
    must have at most :data:`MAX_PARAMETERS` parameters together (counted without allocating them).
    """
    version = _get(raw, "format_version", "", path)
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {excerpt(version)} is not supported (this selfpose reads version "
                         f"{FORMAT_VERSION}); re-create the bundle with this version")
    raw_objects = _get(raw, "objects", "", path)
    if not isinstance(raw_objects, list) or not raw_objects:
        raise ModelError(f"{path}: objects must be a non-empty list, got {excerpt(raw_objects)}")
    if len(raw_objects) > MAX_OBJECTS:
        raise ModelError(f"{path}: objects lists {len(raw_objects)} objects, more than {MAX_OBJECTS}")
    objects = []
    for i, o in enumerate(raw_objects):
        w = f"objects[{i}]."
        name = _get(o, "name", w, path)
        if not isinstance(name, str) or not name or len(name) > 128:
            raise ModelError(f"{path}: {w}name must be a non-empty string, got {excerpt(name)}")
        objects.append(BundleObject(
            name, _int(_get(o, "obj_id", w, path), f"{w}obj_id", path, 1, 2 ** 31 - 1),
            _float(_get(o, "diameter", w, path), f"{w}diameter", path, 1e-4, 100.0),
            _array(_get(o, "keypoints", w, path), f"{w}keypoints", path, (None, 3)),
            _array(_get(o, "coord_centre", w, path), f"{w}coord_centre", path, (3,)),
            _array(_get(o, "coord_half_extent", w, path), f"{w}coord_half_extent", path, (3,))))
        if not (objects[-1].coord_half_extent > 0).all():
            raise ModelError(f"{path}: {w}coord_half_extent must be positive, got "
                             f"{excerpt(objects[-1].coord_half_extent.tolist())}")
    for key, values in (("name", [o.name for o in objects]), ("obj_id", [o.obj_id for o in objects])):
        if len(set(values)) != len(values):
            raise ModelError(f"{path}: objects[].{key} values repeat: {excerpt(values)}")
    p = _get(raw, "pose_net", "", path)
    kind = _get(p, "kind", "pose_net.", path)
    if kind not in POSE_NET_KINDS:
        raise ModelError(f"{path}: pose_net.kind must be one of {POSE_NET_KINDS}, got {excerpt(kind)}")
    pose = PoseNetSpec(kind, _int(_get(p, "crop_size", "pose_net.", path), "pose_net.crop_size", path, 16, 1024),
                       _backbone(p, "pose_net.", path),
                       _int(p.get("num_keypoints", 9), "pose_net.num_keypoints", path, 1, 1024))
    if kind == "keypoint" and any(len(o.keypoints) != pose.num_keypoints for o in objects):
        raise ModelError(f"{path}: objects[].keypoints must have pose_net.num_keypoints = {pose.num_keypoints} rows")
    d = _get(raw, "detector", "", path)
    det = DetectorConfig(_backbone(d, "detector.", path),
                         _int(_get(d, "input_width", "detector.", path), "detector.input_width", path, 16, 4096),
                         _int(_get(d, "input_height", "detector.", path), "detector.input_height", path, 16, 4096),
                         _float(d.get("score_threshold", 0.3), "detector.score_threshold", path, 0.0, 1.0))
    size = _get(raw, "image_size", "", path)
    if not isinstance(size, list) or len(size) != 2:
        raise ModelError(f"{path}: image_size must be [width, height], got {excerpt(size)}")
    image_size = (_int(size[0], "image_size[0]", path, 1, 65535), _int(size[1], "image_size[1]", path, 1, 65535))
    objects_config = _get(raw, "objects_config", "", path)
    if not isinstance(objects_config, str) or not objects_config or len(objects_config) > 4096:
        raise ModelError(f"{path}: objects_config must be a file path, got {excerpt(objects_config)}")
    provenance, metrics = raw.get("provenance") or {}, raw.get("metrics") or {}
    for key, value in (("provenance", provenance), ("metrics", metrics)):
        if not isinstance(value, dict):
            raise ModelError(f"{path}: {key} must be a mapping, got {excerpt(value)}")
    stages = provenance.get("stages", [])
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise ModelError(f"{path}: provenance.stages must be a list of mappings (one per training stage), "
                         f"got {excerpt(stages)}")
    spec = BundleSpec(objects, objects_config, pose, det, image_size, dict(provenance), dict(metrics))
    n = count_parameters(spec)
    if n > MAX_PARAMETERS:
        raise ModelError(f"{path}: the networks described (pose_net.widths {list(pose.backbone.widths)}, "
                         f"detector.widths {list(det.backbone.widths)}) have {n} parameters, more than the "
                         f"{MAX_PARAMETERS} selfpose loads ({4 * n / 2**30:.1f} GiB of float32)")
    return spec


def count_parameters(spec: BundleSpec) -> int:
    """Parameters of the detector and pose network ``spec`` describes, counted on torch's meta device (nothing
    is allocated, whatever the widths)."""
    with torch.device("meta"):
        return sum(p.numel() for net in (build_detector(spec), build_pose_net(spec)) for p in net.parameters())


def build_pose_net(spec: BundleSpec) -> PoseNet:
    """A freshly initialised pose network as the spec describes it."""
    p = spec.pose_net
    if p.kind == "keypoint":
        return KeypointNet(len(spec.objects), KeypointNetConfig(p.backbone, p.num_keypoints, p.crop_size))
    return CorrespondenceNet(len(spec.objects), CorrespondenceNetConfig(p.backbone, p.crop_size))


def build_detector(spec: BundleSpec) -> Detector:
    return Detector(len(spec.objects), spec.detector)


@dataclass(slots=True)
class ModelBundle:
    """A bundle in memory: its spec, the two networks (on ``device``) and, after adaptation, the appearance model."""

    spec: BundleSpec
    detector: Detector
    pose_net: PoseNet
    path: Path | None = None
    appearance: AppearanceModel | None = None

    @classmethod
    def create(cls, spec: BundleSpec) -> ModelBundle:
        return cls(spec, build_detector(spec), build_pose_net(spec))

    def objects_config_path(self) -> Path:
        """The objects config the bundle refers to (relative paths are relative to the bundle directory)."""
        p = Path(self.spec.objects_config)
        return p if p.is_absolute() or self.path is None else (self.path / p).resolve()

    def save(self, path: str | Path) -> Path:
        """Write bundle.yaml and weights.pt into directory ``path`` (created; existing files are replaced)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        weights: dict[str, Any] = {"detector": {k: v.cpu() for k, v in self.detector.state_dict().items()},
                                   "pose_net": {k: v.cpu() for k, v in self.pose_net.state_dict().items()}}
        if self.appearance is not None:
            weights["appearance"] = torch.from_numpy(self.appearance.histograms.astype(np.float32))
            if self.appearance.surface is not None:
                sc = self.appearance.surface
                weights["surface_colours"] = {name: torch.from_numpy(getattr(sc, name).astype(np.float32))
                                              for name in SURFACE_FIELDS}
        torch.save(weights, path / "weights.pt.tmp")
        (path / "weights.pt.tmp").replace(path / "weights.pt")
        (path / "bundle.yaml").write_text(yaml.safe_dump(self.spec.to_yaml(), sort_keys=False), encoding="utf-8")
        self.path = path
        log.info("wrote model bundle %s", path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
        """Read a bundle directory; ModelError names the file and what is wrong (one line).

        bundle.yaml is validated by :func:`parse_spec`; weights.pt is read with ``weights_only=True`` (no code
        runs), must be at most :data:`MAX_WEIGHTS_BYTES`, hold a state dict per network that fits the spec, and
        only finite values.
        """
        path = Path(path)
        dev = _device(device)
        if not path.is_dir():
            raise ModelError(f"model bundle {path} does not exist or is not a directory")
        spec_path, weights_path = path / "bundle.yaml", path / "weights.pt"
        for p in (spec_path, weights_path):
            if not p.is_file():
                raise ModelError(f"model bundle {path} has no {p.name}")
        spec = parse_spec(load_yaml(spec_path, "bundle file", ModelError), spec_path)
        size = weights_path.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise ModelError(f"{weights_path}: {size} bytes, more than the {MAX_WEIGHTS_BYTES} a bundle of at most "
                             f"{MAX_PARAMETERS} parameters needs")
        try:
            weights = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe/corrupt files
            raise ModelError(f"{weights_path}: cannot be loaded safely with torch.load(weights_only=True) "
                             f"({type(exc).__name__}: {one_line(str(exc).splitlines()[0] if str(exc) else '')})"
                             ) from None
        if not isinstance(weights, dict):
            raise ModelError(f"{weights_path}: must hold a mapping of state dicts, got {type(weights).__name__}")
        bundle = cls.create(spec)
        bundle.path = path
        for key, module in (("detector", bundle.detector), ("pose_net", bundle.pose_net)):
            state = weights.get(key)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ModelError(f"{weights_path}: no '{key}' weights (a mapping of tensor names to tensors)")
            for name, tensor in state.items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise ModelError(f"{weights_path}: '{key}' tensor {excerpt(name)} holds NaN/inf values "
                                     "(a diverged training run?)")
            try:
                module.load_state_dict(state)
            except (RuntimeError, TypeError, ValueError, KeyError) as exc:
                raise ModelError(f"{weights_path}: '{key}' weights do not fit the architecture in {spec_path} "
                                 f"({one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)} ...)"
                                 ) from None
            module.to(dev).eval()
        if "appearance" in weights:
            hist = weights["appearance"]
            if not isinstance(hist, torch.Tensor) or hist.ndim != 2 or tuple(hist.shape[:1]) != (len(spec.objects),):
                raise ModelError(f"{weights_path}: 'appearance' must be a tensor with one row per object "
                                 f"({len(spec.objects)}), got {getattr(hist, 'shape', type(hist).__name__)}")
            surface = weights.get("surface_colours")
            if surface is not None and (not isinstance(surface, dict) or set(surface) != set(SURFACE_FIELDS)
                                        or not all(isinstance(v, torch.Tensor) for v in surface.values())):
                raise ModelError(f"{weights_path}: 'surface_colours' must map {', '.join(SURFACE_FIELDS)} to tensors")
            try:
                bundle.appearance = AppearanceModel(hist.double().cpu().numpy(), None if surface is None else
                                                    SurfaceColours(*(surface[n].double().numpy()
                                                                     for n in SURFACE_FIELDS)))
            except ModelError as exc:
                raise ModelError(f"{weights_path}: {exc}") from exc
        return bundle


def _device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine, else ModelError saying why."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"device {excerpt(device)} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {dev} asked for, but CUDA is not available on this machine "
                             "(no GPU or a CPU-only torch); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {dev} asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {dev} asked for, but MPS is not available on this machine; use --device cpu")
    return dev
