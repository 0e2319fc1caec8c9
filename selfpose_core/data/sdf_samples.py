"""Signed-distance samples of category instances, the training data of a DeepSDF shape prior (DeepSDF, Sec. 5).

Everything is in an instance's **normalised frame**: its NOCS frame divided by its NOCS scale (the diagonal of its
tight box, ``selfpose_core.mesh.categories``), so the box has diagonal 1 and the shape lies within 0.5 of the
origin, inside the unit sphere of SSC-6D's Eq. 4. Signed distances are in the same units (metres / scale).

Samples per instance, as DeepSDF: points on the surface moved by Gaussian noise of two widths (most samples, where
the zero level set is decided), plus points uniform in a cube around the shape. DeepSDF's noise variances 0.0025 and
0.00025 are for shapes in the unit sphere; ours are half that size, hence standard deviations 0.025 and 0.008.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from selfpose_core.data.sim.category_shapes import CategoryInstance
from selfpose_core.errors import ConfigError

INTERIOR_TOLERANCE = 1e-4  # metres: a part's surface point deeper than this inside the union is not on the surface


@dataclass(slots=True)
class SdfSampling:
    """How many samples of which kind each instance gets (normalised units)."""

    surface_points: int = 1500  # each gives one sample per noise width
    near_sigmas: tuple[float, float] = (0.025, 0.008)
    uniform_points: int = 1500  # more than DeepSDF: with fewer, stray surfaces appear away from the shape
    uniform_half_side: float = 0.6  # uniform samples in [-h, h]^3

    def validate(self, where: str = "sampling") -> None:
        for key in ("surface_points", "uniform_points"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        if len(self.near_sigmas) < 1 or not all(s > 0 for s in self.near_sigmas):
            raise ConfigError(f"{where}.near_sigmas must be positive numbers, got {self.near_sigmas!r}")
        if not 0.5 <= self.uniform_half_side <= 2.0:
            raise ConfigError(f"{where}.uniform_half_side must be in [0.5, 2], got {self.uniform_half_side!r}")

    @property
    def per_instance(self) -> int:
        return self.surface_points * len(self.near_sigmas) + self.uniform_points


def surface_points(inst: CategoryInstance, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` points (count, 3) uniform on the outer surface of ``inst``, normalised frame.

    Points of a part's surface that lie inside another part (a handle's end inside a mug's wall) are not on the
    surface of the solid and are dropped (their signed distance is below ``-INTERIOR_TOLERANCE``).
    """
    mesh = inst.trimesh()
    kept: list[np.ndarray] = []
    have = 0
    while have < count:
        pts, _ = trimesh.sample.sample_surface(mesh, 2 * (count - have) + 64, seed=rng)
        pts = pts[inst.sdf(pts) > -INTERIOR_TOLERANCE]
        kept.append(pts)
        have += len(pts)
    return (np.concatenate(kept)[:count] / inst.scale).astype(np.float32)


def sdf_samples(inst: CategoryInstance, config: SdfSampling, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points (M, 3) and their signed distances (M,) for ``inst`` in its normalised frame (float32), M =
    ``config.per_instance``: near-surface samples for each noise width, then the uniform ones."""
    config.validate()
    surf = surface_points(inst, config.surface_points, rng)
    near = [surf + rng.normal(0.0, s, surf.shape) for s in config.near_sigmas]
    h = config.uniform_half_side
    uniform = rng.uniform(-h, h, (config.uniform_points, 3))
    pts = np.concatenate(near + [uniform]).astype(np.float64)
    sdf = inst.sdf(pts * inst.scale) / inst.scale
    return pts.astype(np.float32), sdf.astype(np.float32)
