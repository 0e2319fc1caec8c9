"""The six object categories of NOCS (Wang et al., "Normalized Object Coordinate Space for Category-Level 6D Object
Pose and Size Estimation", CVPR'19) and their canonical frame, the convention SSC-6D and the NOCS evaluation use.

Canonical (NOCS) frame of a category instance, metres:
    y up (the axis the object stands along; the axis of revolution of bottle, bowl and can), origin at the centre
    of the tight axis-aligned bounding box, so the box is ``[-size / 2, size / 2]``. NOCS normalises a shape by the
    diagonal of that box: the NOCS scale is ``s = |size|`` and NOCS coordinates are ``p / s`` (NOCS adds 0.5 to put
    them in the unit cube). Front (this project's choice where NOCS fixes none we could check): +z. The mug's
    handle points along +x, the camera's lens along +z, the laptop's hinge runs along x at the back (-z) and it
    opens towards +z.
Symmetries: bottle, bowl and can look the same after any rotation about y; mug, camera and laptop have none (the
NOCS evaluation treats a mug whose handle is hidden as symmetric about y: ``selfpose_core.eval.nocs``).

The embedded scene's objects stand on z (docs/demo_scene.md); :data:`T_ZUP_NOCS` (a quarter turn about x) maps the
NOCS frame into that z-up frame: NOCS +y goes to +z (up), NOCS +z (front) to -y (the scene's front).
"""
from __future__ import annotations

import numpy as np

from selfpose_core.errors import ConfigError, ShapeError
from selfpose_core.types import Symmetry

CATEGORIES = ("bottle", "bowl", "camera", "can", "laptop", "mug")  # the NOCS order (class ids 1..6)
SYMMETRIC_CATEGORIES = frozenset({"bottle", "bowl", "can"})  # continuous symmetry about the up axis
UP_AXIS = np.array([0.0, 1.0, 0.0])
T_ZUP_NOCS = np.array([[1.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, -1.0, 0.0],
                       [0.0, 1.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])  # z-up object frame <- NOCS frame


def category_symmetry(category: str) -> Symmetry:
    """The symmetry of ``category`` in its NOCS frame: any rotation about y for bottle, bowl and can, else none."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
    if category in SYMMETRIC_CATEGORIES:
        return Symmetry(continuous=[(UP_AXIS.copy(), np.zeros(3))])
    return Symmetry()


def nocs_size(vertices: np.ndarray) -> np.ndarray:
    """(3,) extents of the tight axis-aligned box of ``vertices`` (N, 3) in their (NOCS) frame, in their units."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ShapeError(f"vertices must be (N, 3) with N >= 1, got {vertices.shape}")
    return vertices.max(axis=0) - vertices.min(axis=0)


def nocs_scale(vertices: np.ndarray) -> float:
    """The NOCS scale of a shape: the diagonal of its tight axis-aligned box in the NOCS frame."""
    return float(np.linalg.norm(nocs_size(vertices)))
