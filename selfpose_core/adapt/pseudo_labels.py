"""Pseudo labels: what multiview consensus knows about the recording, for the stages after it.

Per object one world pose ``T_world_obj`` with a confidence; per frame the drift-corrected camera pose; per frame
and object the pseudo ``T_cam_obj``, its amodal box, its visible mask and a confidence. Saved as one ``.npz``
(masks bit-packed) so a resumed pipeline can reload them without re-running the consensus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfpose_core.errors import ShapeError
from selfpose_core.saved_state import fail, load_npz


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
        """Read a file written by :meth:`save`; every array is checked (kinds, shapes, ranges, finite poses of the
        instances, mask offsets) before use: ResumeError naming the file and the array otherwise."""
        path = Path(path)
        what = "pseudo labels"
        d = load_npz(path, what, {"object_names": ("U", 1), "T_world_obj": ("f", 3), "object_confidence": ("f", 1),
                                  "T_world_cam": ("f", 3), "frame_weight": ("f", 1), "frame": ("i", 1),
                                  "obj_index": ("i", 1), "T_cam_obj": ("f", 3), "box": ("f", 2),
                                  "confidence": ("f", 1), "visib_fract": ("f", 1), "has_mask": ("b", 1),
                                  "mask_shape": ("i", 2), "mask_bits": ("u8", 1), "mask_offsets": ("i", 1)})
        n_inst, n_frames, n_obj = len(d["frame"]), len(d["T_world_cam"]), len(d["object_names"])
        shapes = {"T_world_obj": (n_obj, 4, 4), "object_confidence": (n_obj,), "T_world_cam": (n_frames, 4, 4),
                  "frame_weight": (n_frames,), "obj_index": (n_inst,), "T_cam_obj": (n_inst, 4, 4),
                  "box": (n_inst, 4), "confidence": (n_inst,), "visib_fract": (n_inst,), "has_mask": (n_inst,),
                  "mask_shape": (n_inst, 2), "mask_offsets": (int(d["has_mask"].sum()) + 1,)}
        for key, shape in shapes.items():
            if d[key].shape != shape:
                raise fail(path, what, f"array '{key}'", f"has shape {d[key].shape}, expected {shape}")
        for key in ("T_cam_obj", "box", "confidence", "visib_fract"):
            if not np.isfinite(d[key]).all():
                raise fail(path, what, f"array '{key}'", "holds NaN/inf")
        if n_inst and not (0 <= d["frame"].min() and d["frame"].max() < n_frames):
            raise fail(path, what, "array 'frame'", f"indexes frames {d['frame'].min()}..{d['frame'].max()} of "
                                                    f"{n_frames}")
        if n_inst and not (0 <= d["obj_index"].min() and d["obj_index"].max() < n_obj):
            raise fail(path, what, "array 'obj_index'", f"indexes objects outside 0..{n_obj - 1}")
        offsets, bits = d["mask_offsets"], d["mask_bits"]
        if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != len(bits):
            raise fail(path, what, "array 'mask_offsets'", f"does not partition the {len(bits)} mask bytes")
        hw = d["mask_shape"].astype(np.int64)
        if (hw < 0).any() or (hw[:, 0] * hw[:, 1] > 1 << 26).any():
            raise fail(path, what, "array 'mask_shape'", "holds negative or absurd mask sizes")
        instances = []
        j = 0
        for i in range(n_inst):
            mask = None
            if d["has_mask"][i]:
                h, w = (int(x) for x in hw[i])
                a, b = int(offsets[j]), int(offsets[j + 1])
                if (b - a) * 8 < h * w:
                    raise fail(path, what, f"mask {j}", f"has {b - a} bytes, too few for {h}x{w}")
                mask = np.unpackbits(bits[a:b], count=h * w).reshape(h, w).astype(bool)
                j += 1
            instances.append(PseudoInstance(int(d["frame"][i]), int(d["obj_index"][i]), d["T_cam_obj"][i],
                                            d["box"][i], float(d["confidence"][i]), mask,
                                            float(d["visib_fract"][i])))
        return cls([str(s) for s in d["object_names"]], d["T_world_obj"], d["object_confidence"], d["T_world_cam"],
                   d["frame_weight"], instances)
