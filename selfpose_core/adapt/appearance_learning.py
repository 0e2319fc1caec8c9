"""The objects' appearance model learned from the recording: colours under the consensus' visible masks, and the
colours at each object's surface points seen at its pseudo poses."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.data.recording import Recording
from selfpose_core.mesh.measures import sample_surface
from selfpose_core.models.appearance import AppearanceModel
from selfpose_core.models.surface_colours import SurfaceColours
from selfpose_core.types import Frame, ObjectModel

SURFACE_POINTS = 1000  # surface points per object that carry a colour

log = logging.getLogger(__name__)


def learn_appearance(recording: Sequence[Frame] | Recording, pseudo: PseudoLabels, objects: Sequence[ObjectModel],
                     min_confidence: float = 0.5, min_visible_fraction: float = 0.3) -> AppearanceModel:
    """One colour histogram per object from the recording frames' pixels under its pseudo visible mask, and the
    colours of :data:`SURFACE_POINTS` surface points of each of ``objects`` (the meshes, in the order of the
    pseudo labels) seen at its pseudo poses; only instances with ``confidence >= min_confidence`` and
    ``visib_fract >= min_visible_fraction`` are used (the border of a mostly hidden object is mostly its
    occluder)."""
    use = [p for p in pseudo.instances if p.mask is not None and p.confidence >= min_confidence
           and p.visib_fract >= min_visible_fraction]
    frames = sorted({p.frame for p in use})

    def samples():
        for i in frames:
            rgb = recording[i].rgb
            for p in use:
                if p.frame == i and p.mask.shape == rgb.shape[:2]:
                    yield rgb, p.mask, p.obj_index

    def views():
        for i in frames:
            f = recording[i]
            for p in use:
                if p.frame == i and p.mask.shape == f.rgb.shape[:2]:
                    yield f.rgb, f.depth, f.K.K, p.obj_index, p.T_cam_obj, p.mask

    surfaces = [sample_surface(m.vertices, m.faces, SURFACE_POINTS, np.random.default_rng(0)) for m in objects]
    model = AppearanceModel.fit(len(pseudo.object_names), samples())
    model.surface = SurfaceColours.fit(surfaces, views())
    unseen = [n for n, k in zip(pseudo.object_names, model.known) if not k]
    agreement = ", ".join(f"{n} {a:.2f}" for n, a in zip(pseudo.object_names, model.surface.agreement))
    log.info("appearance model from %d instances in %d frames%s; surface pattern agreement: %s", len(use),
             len(frames), f"; no colours for {', '.join(unseen)}" if unseen else "", agreement)
    return model
