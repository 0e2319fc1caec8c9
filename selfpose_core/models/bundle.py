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
histograms, (objects, bins), once an adaptation learned them from a recording) and is read with
``torch.load(weights_only=True)``: a bundle never executes code when loaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml

from selfpose_core.errors import ModelError
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.correspondence_net import CorrespondenceNet, CorrespondenceNetConfig, coordinate_normaliser
from selfpose_core.models.detector import Detector, DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet, KeypointNetConfig
from selfpose_core.types import ObjectModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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
    if not isinstance(d, dict) or key not in d:
        raise ModelError(f"{path}: missing key {where}{key}")
    return d[key]


def parse_spec(raw: Any, path: Path) -> BundleSpec:
    """Validate a loaded bundle.yaml; errors name the file and the key."""
    version = _get(raw, "format_version", "", path)
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version} is not supported (this selfpose reads version "
                         f"{FORMAT_VERSION}); re-create the bundle with this version")
    try:
        objects = []
        for i, o in enumerate(_get(raw, "objects", "", path)):
            kp = np.asarray(_get(o, "keypoints", f"objects[{i}].", path), np.float64)
            if kp.ndim != 2 or kp.shape[1] != 3:
                raise ModelError(f"{path}: objects[{i}].keypoints must be a list of [x, y, z], got shape {kp.shape}")
            objects.append(BundleObject(str(_get(o, "name", f"objects[{i}].", path)),
                                        int(_get(o, "obj_id", f"objects[{i}].", path)),
                                        float(_get(o, "diameter", f"objects[{i}].", path)), kp,
                                        np.asarray(_get(o, "coord_centre", f"objects[{i}].", path), np.float64),
                                        np.asarray(_get(o, "coord_half_extent", f"objects[{i}].", path), np.float64)))
        if not objects:
            raise ModelError(f"{path}: objects is empty")
        p = _get(raw, "pose_net", "", path)
        kind = _get(p, "kind", "pose_net.", path)
        if kind not in POSE_NET_KINDS:
            raise ModelError(f"{path}: pose_net.kind must be one of {POSE_NET_KINDS}, got {kind!r}")
        pose = PoseNetSpec(kind, int(_get(p, "crop_size", "pose_net.", path)),
                           BackboneConfig(tuple(int(w) for w in _get(p, "widths", "pose_net.", path)),
                                          int(_get(p, "out_stride", "pose_net.", path))),
                           int(p.get("num_keypoints", 9)))
        d = _get(raw, "detector", "", path)
        det = DetectorConfig(BackboneConfig(tuple(int(w) for w in _get(d, "widths", "detector.", path)),
                                            int(_get(d, "out_stride", "detector.", path))),
                             int(_get(d, "input_width", "detector.", path)),
                             int(_get(d, "input_height", "detector.", path)),
                             float(d.get("score_threshold", 0.3)))
        size = _get(raw, "image_size", "", path)
        return BundleSpec(objects, str(_get(raw, "objects_config", "", path)), pose, det,
                          (int(size[0]), int(size[1])), dict(raw.get("provenance") or {}),
                          dict(raw.get("metrics") or {}))
    except (TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"{path}: malformed value: {exc}") from exc


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
        torch.save(weights, path / "weights.pt.tmp")
        (path / "weights.pt.tmp").replace(path / "weights.pt")
        (path / "bundle.yaml").write_text(yaml.safe_dump(self.spec.to_yaml(), sort_keys=False), encoding="utf-8")
        self.path = path
        log.info("wrote model bundle %s", path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
        """Read a bundle directory; ModelError names the file and what is wrong."""
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"model bundle {path} does not exist or is not a directory")
        spec_path, weights_path = path / "bundle.yaml", path / "weights.pt"
        for p in (spec_path, weights_path):
            if not p.is_file():
                raise ModelError(f"model bundle {path} has no {p.name}")
        try:
            raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ModelError(f"{spec_path}: not valid YAML: {exc}") from exc
        spec = parse_spec(raw, spec_path)
        try:
            weights = torch.load(weights_path, map_location=device, weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe/corrupt files
            raise ModelError(f"{weights_path}: cannot be loaded safely with torch.load(weights_only=True) "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        bundle = cls.create(spec)
        bundle.path = path
        for key, module in (("detector", bundle.detector), ("pose_net", bundle.pose_net)):
            if not isinstance(weights, dict) or key not in weights:
                raise ModelError(f"{weights_path}: no '{key}' weights")
            try:
                module.load_state_dict(weights[key])
            except RuntimeError as exc:
                raise ModelError(f"{weights_path}: '{key}' weights do not fit the architecture in {spec_path} "
                                 f"({str(exc).splitlines()[0]} ...)") from exc
            module.to(device).eval()
        if "appearance" in weights:
            hist = weights["appearance"]
            if not isinstance(hist, torch.Tensor) or tuple(hist.shape[:1]) != (len(spec.objects),):
                raise ModelError(f"{weights_path}: 'appearance' must be a tensor with one row per object "
                                 f"({len(spec.objects)}), got {getattr(hist, 'shape', type(hist).__name__)}")
            try:
                bundle.appearance = AppearanceModel(hist.double().cpu().numpy())
            except ModelError as exc:
                raise ModelError(f"{weights_path}: {exc}") from exc
        return bundle
