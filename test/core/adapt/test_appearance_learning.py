"""The appearance model learned from a recording's frames under the pseudo labels' visible masks."""
from __future__ import annotations

import numpy as np

from selfpose_core.adapt.appearance_learning import learn_appearance
from selfpose_core.adapt.pseudo_labels import PseudoInstance, PseudoLabels
from selfpose_core.data.sim import catalog
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(100.0, 100.0, 31.5, 23.5, 64, 48)


def test_colours_under_the_pseudo_masks_identify_each_object_and_weak_labels_are_skipped():
    frames, instances = [], []
    left, right = np.zeros((48, 64), bool), np.zeros((48, 64), bool)
    left[10:40, 5:30], right[10:40, 34:60] = True, True
    for i in range(4):
        rgb = np.full((48, 64, 3), 128, np.uint8)
        rgb[left], rgb[right] = (200, 30, 30), (30, 30, 200)  # object 0 red on the left, object 1 blue on the right
        frames.append(Frame(rgb, K))
        instances += [PseudoInstance(i, 0, np.eye(4), np.zeros(4), 0.9, left, 1.0),
                      PseudoInstance(i, 1, np.eye(4), np.zeros(4), 0.9, right, 1.0),
                      # wrong labels, but unconfident or mostly hidden: not learned from
                      PseudoInstance(i, 0, np.eye(4), np.zeros(4), 0.1, right, 1.0),
                      PseudoInstance(i, 1, np.eye(4), np.zeros(4), 0.9, left, 0.1)]
    pseudo = PseudoLabels(["red", "blue"], np.tile(np.eye(4), (2, 1, 1)), np.ones(2), np.tile(np.eye(4), (4, 1, 1)),
                          np.ones(4), instances)
    objects = [o.cad_model(i + 1) for i, o in enumerate(catalog.make_targets(["cereal_box", "mug"],
                                                                              np.random.default_rng(0)))]
    model = learn_appearance(frames, pseudo, objects)
    assert model.known.all()
    assert model.surface is not None and model.surface.points.shape[:1] == (2,)  # no pose in view: nothing seen
    assert not model.surface.known(0) and not model.surface.known(1)
    assert model.similarity(frames[0].rgb, left)[0] > 0.99 and model.similarity(frames[0].rgb, left)[1] < 0.05
    assert model.similarity(frames[0].rgb, right)[1] > 0.99 and model.similarity(frames[0].rgb, right)[0] < 0.05
