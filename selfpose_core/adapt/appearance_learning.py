"""The objects' appearance model learned from the recording: colours under the consensus' visible masks."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.data.recording import Recording
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.types import Frame

log = logging.getLogger(__name__)


def learn_appearance(recording: Sequence[Frame] | Recording, pseudo: PseudoLabels, min_confidence: float = 0.5,
                     min_visible_fraction: float = 0.3) -> AppearanceModel:
    """One colour histogram per object from the recording frames' pixels under its pseudo visible mask; only
    instances with ``confidence >= min_confidence`` and ``visib_fract >= min_visible_fraction`` are used (the
    border of a mostly hidden object is mostly its occluder)."""
    use = [p for p in pseudo.instances if p.mask is not None and p.confidence >= min_confidence
           and p.visib_fract >= min_visible_fraction]
    frames = sorted({p.frame for p in use})

    def samples():
        for i in frames:
            rgb = recording[i].rgb
            for p in use:
                if p.frame == i and p.mask.shape == rgb.shape[:2]:
                    yield rgb, p.mask, p.obj_index

    model = AppearanceModel.fit(len(pseudo.object_names), samples())
    unseen = [n for n, k in zip(pseudo.object_names, model.known) if not k]
    log.info("appearance model from %d instances in %d frames%s", len(use), len(frames),
             f"; no colours for {', '.join(unseen)}" if unseen else "")
    return model
