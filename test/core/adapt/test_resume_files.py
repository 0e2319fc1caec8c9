"""Files an interrupted adaptation left to resume from (work/state.yaml, pseudo labels, per-frame estimates,
segmentation labels) are checked on load: one ResumeError line naming the file and the key."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from selfpose_core.adapt.consensus import FrameEstimates
from selfpose_core.adapt.pipeline import read_state
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.adapt.weak_segmentation import SegmentationLabels
from selfpose_core.errors import ModelError, ResumeError

GOOD_STATE = {"done": ["multiview_consensus"],
              "results": {"multiview_consensus": {"losses": {"refine": 0.5}, "artefacts": {"drift": "d.png"},
                                                  "details": {}, "metrics": {}}}}


@pytest.mark.parametrize("text, match", [
    ("", r"state.yaml: the file is empty"),
    ("[1, 2]\n", r"state.yaml: the file must be a mapping \(done, results\), got \[1, 2\]"),
    ("done: multiview_consensus\n", r"state.yaml: key 'done' must be a list of stage names"),
    ("done: [teleport]\n", r"state.yaml: key 'done' names unknown stages \['teleport'\]"),
    ("done: []\nresults: {multiview_consensus: {losses: {refine: high}}}\n",
     r"key 'results.multiview_consensus.losses.refine' must be a number, got 'high'"),
    ("done: []\nresults: [1]\n", r"key 'results' must be a mapping of stage names"),
    ("done: []\ndone: []\n", r"state.yaml:2:1: not valid YAML: duplicate key 'done'"),
    ("done: [\n", r"state.yaml:2:1: not valid YAML"),
])
def test_state_yaml_is_checked(tmp_path, text, match):
    path = tmp_path / "state.yaml"
    path.write_text(text)
    with pytest.raises(ResumeError, match=match) as info:
        read_state(path)
    assert isinstance(info.value, ModelError) and "\n" not in str(info.value)


def test_good_state_round_trips(tmp_path):
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(GOOD_STATE))
    assert read_state(path) == GOOD_STATE


def _labels(tmp_path):
    T = np.eye(4)
    inst = [PseudoInstance(0, 1, T, np.array([1.0, 2.0, 9.0, 8.0]), 0.9, np.eye(6, 5, dtype=bool), 0.8)]
    return PseudoLabels(["a", "b"], np.stack([T, np.full((4, 4), np.nan)]), np.array([0.9, 0.0]), np.stack([T, T]),
                        np.array([1.0, 0.5]), inst).save(tmp_path / "pseudo_labels.npz")


def _rewrite(path, **changes):
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    with open(path, "wb") as f:
        np.savez(f, **d)


@pytest.mark.parametrize("change, match", [
    ({"frame": None}, r"pseudo labels .*: array 'frame' is missing"),
    ({"frame": np.array([5])}, r"array 'frame' indexes frames 5\.\.5 of 2"),
    ({"box": np.zeros((1, 3))}, r"array 'box' has shape \(1, 3\), expected \(1, 4\)"),
    ({"T_cam_obj": np.full((1, 4, 4), np.nan)}, r"array 'T_cam_obj' holds NaN/inf"),
    ({"mask_offsets": np.array([0, 10 ** 9])}, r"array 'mask_offsets' does not partition"),
    ({"object_names": np.array([1.5, 2.5])}, r"array 'object_names' must be 1-D of kind U"),
])
def test_pseudo_labels_are_checked(tmp_path, change, match):
    path = _labels(tmp_path)
    assert PseudoLabels.load(path).instances[0].mask.shape == (6, 5)
    _rewrite(path, **change)
    with pytest.raises(ResumeError, match=match):
        PseudoLabels.load(path)


@pytest.mark.parametrize("damage, match", [
    ("empty", r"is empty \(interrupted while written\?\); delete it to redo that step"),
    ("flip", r"cannot be read \("),
    ("pickle", r"cannot be read \(ValueError: Object arrays cannot be loaded when allow_pickle=False"),
])
def test_damaged_or_pickled_array_files_are_refused(tmp_path, damage, match):
    path = _labels(tmp_path)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 8  # in the compressed data of an array (zlib error before)
        path.write_bytes(bytes(data))
    else:
        with open(path, "wb") as f:
            np.savez(f, object_names=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ResumeError, match=match):
        PseudoLabels.load(path)


def test_estimates_and_segmentation_labels_are_checked(tmp_path):
    est = FrameEstimates(np.array([0, 1]), np.array([0, 0]), np.stack([np.eye(4)] * 2), np.array([0.5, 0.7]),
                         np.zeros((2, 4)), [None, np.ones((4, 3), bool)])
    est.save(tmp_path / "est.npz")
    assert FrameEstimates.load(tmp_path / "est.npz").masks[1].shape == (4, 3)
    _rewrite(tmp_path / "est.npz", has_mask=np.array([True, True]))
    with pytest.raises(ResumeError, match=r"per-frame estimates .*arrays 'bits', 'mask_shape'"):
        FrameEstimates.load(tmp_path / "est.npz")
    SegmentationLabels(np.zeros((2, 4)), np.zeros((2, 8, 8), np.float32), 0.7).save(tmp_path / "seg.npz")
    assert SegmentationLabels.load(tmp_path / "seg.npz").sigma == 0.7
    _rewrite(tmp_path / "seg.npz", sigma=np.float64(np.nan))
    with pytest.raises(ResumeError, match=r"segmentation labels .*array 'sigma' must be in \[0\.5, 1\], got nan"):
        SegmentationLabels.load(tmp_path / "seg.npz")
