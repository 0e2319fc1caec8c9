"""`selfpose adapt --eval-gt` names its splits: the scored one (--eval-split) and the recording's own
(--eval-recording-split); a missing recording split is a warning that lists the splits there are."""
from __future__ import annotations

import logging

import numpy as np
import trimesh

from selfpose_core.adapt.config import AdaptConfig
from selfpose_core.eval.adaptation import make_evaluator
from selfpose_core.cli.main import build_parser
from selfpose_core.data.bop import BopWriter
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import CameraIntrinsics, Frame


def _bop(root, split):
    box = trimesh.creation.box(extents=(0.08, 0.05, 0.03))
    with BopWriter(root, split) as w:
        w.write_models([object_model_from_arrays("box", box.vertices, box.faces, obj_id=1)])
        T = np.eye(4)
        T[2, 3] = 0.5
        w.write_frame(1, 0, Frame(rgb=np.zeros((48, 64, 3), np.uint8), K=CameraIntrinsics(60, 60, 32, 24, 64, 48)),
                      [(1, T)])


def test_eval_split_options_are_parsed():
    args = build_parser("adapt").parse_args(["adapt", "--bag", "b", "--objects", "o", "--model", "m", "--out", "x",
                                             "--eval-gt", "g", "--eval-split", "val", "--eval-recording-split",
                                             "drive"])
    assert (args.eval_split, args.eval_recording_split) == ("val", "drive")
    args = build_parser("adapt").parse_args(["adapt", "--bag", "b", "--objects", "o", "--model", "m", "--out", "x"])
    assert (args.eval_split, args.eval_recording_split) == (None, "train_loop")


def test_missing_recording_split_is_a_warning_naming_the_splits(tmp_path, caplog):
    _bop(tmp_path, "val")
    config = AdaptConfig(stages=[])
    config.eval.split = "val"
    with caplog.at_level(logging.WARNING):
        make_evaluator(tmp_path, tmp_path / "objects.yaml", config)
    assert any("has no split train_loop (splits: val)" in r.getMessage() and "--eval-recording-split" in
               r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_evaluator(tmp_path, tmp_path / "objects.yaml", config, train_split="val")
    assert not [r for r in caplog.records if "has no split" in r.getMessage()]
