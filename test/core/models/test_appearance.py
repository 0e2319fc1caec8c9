"""Appearance model: colour histograms tell objects apart under lighting changes and travel in the bundle."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.errors import ModelError
from selfpose_core.models.appearance import NUM_BINS, AppearanceModel, bhattacharyya, colour_histogram


def _patch(rgb: tuple[int, int, int], rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    img = np.clip(rng.normal(np.array(rgb) * gain, 6.0, (40, 40, 3)), 0, 255).astype(np.uint8)
    return img


def test_histograms_are_normalised_and_empty_masks_give_zeros(rng):
    img = _patch((200, 30, 30), rng)
    h = colour_histogram(img, np.ones((40, 40), bool))
    assert h.shape == (NUM_BINS,) and abs(h.sum() - 1) < 1e-12
    assert not colour_histogram(img, np.zeros((40, 40), bool)).any()
    assert abs(bhattacharyya(h, h) - 1) < 1e-12


def test_objects_are_told_apart_under_darker_light(rng):
    colours = [(200, 40, 40), (40, 160, 60), (50, 70, 200), (240, 240, 235)]
    full = np.ones((40, 40), bool)
    model = AppearanceModel.fit(4, [(_patch(c, rng), full, k) for k, c in enumerate(colours) for _ in range(3)])
    assert model.known.all()
    for k, c in enumerate(colours):
        sim = model.similarity(_patch(c, rng, gain=0.7), full)  # 30 % less light than when learned
        assert int(np.argmax(sim)) == k and sim[k] > 0.5


def test_unseen_objects_and_bad_input(rng):
    model = AppearanceModel.fit(2, [(_patch((200, 40, 40), rng), np.ones((40, 40), bool), 0)])
    assert model.known.tolist() == [True, False]
    assert model.similarity(_patch((200, 40, 40), rng), np.ones((40, 40), bool))[1] == 0.0
    with pytest.raises(ModelError, match="object index 5"):
        AppearanceModel.fit(2, [(_patch((1, 2, 3), rng), np.ones((40, 40), bool), 5)])
    with pytest.raises(ModelError, match="histograms must be"):
        AppearanceModel(np.zeros((2, 3)))
    with pytest.raises(ModelError, match="non-finite"):
        AppearanceModel(np.full((2, NUM_BINS), np.nan))
