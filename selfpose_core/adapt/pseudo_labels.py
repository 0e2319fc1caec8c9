"""Pseudo labels: what multiview consensus knows about the recording, for the stages after it.

Per object one world pose ``T_world_obj`` with a confidence; per frame the drift-corrected camera pose; per frame
and object the pseudo ``T_cam_obj``, its amodal box, its visible mask and a confidence. Saved as one ``.npz``
(masks bit-packed) so a resumed pipeline can reload them without re-running the consensus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfpose_core.errors import ConfigError, ShapeError


@dataclass(slots=True)
class PseudoInstance:
    """One object in one recording frame."""

    frame: int  # index into the Recording
    obj_index: int  # index into ctx.objects
    T_cam_obj: np.ndarray  # (4, 4)
    box: np.ndarray  # (4,) amodal box (x0, y0, x1, y1), pixel edges
    confidence: float  # in [0, 1]
    mask: np.ndarray | None = None  # (H, W) bool visible part, None when not rendered
    visib_fract: float = 1.0  # visible pixels / silhouette pixels


@dataclass(slots=True)
class PseudoLabels:
    """Output of :class:`selfpose_core.adapt.consensus.MultiviewConsensus`.

    ``T_world_obj``: (O, 4, 4), NaN for an object no frame agreed on; ``object_confidence``: (O,) in [0, 1];
    ``T_world_cam``: (N, 4, 4) drift-corrected camera poses of the N recording frames; ``frame_weight``: (N,) in
    [0, 1], how well frame i agrees with the consensus (0 = rejected); ``instances``: the per-frame labels.
    """

    object_names: list[str]
    T_world_obj: np.ndarray
    object_confidence: np.ndarray
    T_world_cam: np.ndarray
    frame_weight: np.ndarray
    instances: list[PseudoInstance] = field(default_factory=list)

    def __post_init__(self) -> None:
        o, n = len(self.object_names), len(self.T_world_cam)
        if self.T_world_obj.shape != (o, 4, 4) or self.object_confidence.shape != (o,):
            raise ShapeError(f"PseudoLabels: T_world_obj {self.T_world_obj.shape} / object_confidence "
                             f"{self.object_confidence.shape} do not match {o} objects")
        if self.T_world_cam.shape != (n, 4, 4) or self.frame_weight.shape != (n,):
            raise ShapeError(f"PseudoLabels: T_world_cam {self.T_world_cam.shape} / frame_weight "
                             f"{self.frame_weight.shape} must be (N, 4, 4) / (N,)")

    @property
    def num_frames(self) -> int:
        return len(self.T_world_cam)

    def for_frame(self, frame: int) -> list[PseudoInstance]:
        """The instances of recording frame ``frame``."""
        return [p for p in self.instances if p.frame == frame]

    def confident(self, min_confidence: float) -> list[PseudoInstance]:
        """Instances with ``confidence >= min_confidence``."""
        return [p for p in self.instances if p.confidence >= min_confidence]

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (.npz, atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        inst = self.instances
        has_mask = np.array([p.mask is not None for p in inst], bool)
        shapes = np.array([p.mask.shape if p.mask is not None else (0, 0) for p in inst], np.int64).reshape(-1, 2)
        bits = [np.packbits(p.mask.reshape(-1)) for p in inst if p.mask is not None]
        offsets = np.cumsum([0] + [len(b) for b in bits]).astype(np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp, object_names=np.array(self.object_names, dtype=str), T_world_obj=self.T_world_obj,
            object_confidence=self.object_confidence, T_world_cam=self.T_world_cam, frame_weight=self.frame_weight,
            frame=np.array([p.frame for p in inst], np.int64),
            obj_index=np.array([p.obj_index for p in inst], np.int64),
            T_cam_obj=np.array([p.T_cam_obj for p in inst], np.float64).reshape(-1, 4, 4),
            box=np.array([p.box for p in inst], np.float64).reshape(-1, 4),
            confidence=np.array([p.confidence for p in inst], np.float64),
            visib_fract=np.array([p.visib_fract for p in inst], np.float64), has_mask=has_mask, mask_shape=shapes,
            mask_bits=np.concatenate(bits) if bits else np.zeros(0, np.uint8), mask_offsets=offsets)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PseudoLabels:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"pseudo labels {path} do not exist")
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        instances = []
        j = 0
        for i in range(len(d["frame"])):
            mask = None
            if d["has_mask"][i]:
                h, w = d["mask_shape"][i]
                a, b = d["mask_offsets"][j], d["mask_offsets"][j + 1]
                mask = np.unpackbits(d["mask_bits"][a:b], count=int(h * w)).reshape(h, w).astype(bool)
                j += 1
            instances.append(PseudoInstance(int(d["frame"][i]), int(d["obj_index"][i]), d["T_cam_obj"][i],
                                            d["box"][i], float(d["confidence"][i]), mask,
                                            float(d["visib_fract"][i])))
        return cls([str(s) for s in d["object_names"]], d["T_world_obj"], d["object_confidence"], d["T_world_cam"],
                   d["frame_weight"], instances)
