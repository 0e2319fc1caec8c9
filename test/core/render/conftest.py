"""Small meshes and random camera views for the renderer tests."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from selfpose_core.render import RenderMesh


def _meshes() -> dict[str, trimesh.Trimesh]:
    return {
        "box": trimesh.creation.box(extents=(0.12, 0.07, 0.04)),
        "sphere": trimesh.creation.icosphere(subdivisions=3, radius=0.05),
        "torus": trimesh.creation.torus(major_radius=0.05, minor_radius=0.018, major_sections=24, minor_sections=12),
        "cylinder": trimesh.creation.cylinder(radius=0.03, height=0.15, sections=20),
    }


@pytest.fixture(scope="session")
def trimeshes() -> dict[str, trimesh.Trimesh]:
    """Closed test meshes (metres): a box, a sphere, a torus (concave, hole) and a capped cylinder."""
    return _meshes()


@pytest.fixture(scope="session")
def render_mesh() -> Callable[..., RenderMesh]:
    def make(name: str, dtype: torch.dtype = torch.float32) -> RenderMesh:
        m = _meshes()[name]
        return RenderMesh(torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.int64))
    return make


def make_K(width: int, height: int, f: float) -> np.ndarray:
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


@pytest.fixture
def random_views() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """views(n, width, height, f, seed, z_range) -> R (n, 3, 3), t (n, 3), K (n, 3, 3): uniform rotations, the
    object origin projected into the central 60 % of the image at a depth drawn uniformly from z_range."""
    def views(n: int, width: int = 320, height: int = 240, f: float = 300.0, seed: int = 0,
              z_range: tuple[float, float] = (0.3, 1.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        R = Rotation.random(n, random_state=rng).as_matrix()
        K = make_K(width, height, f)
        z = rng.uniform(*z_range, n)
        u = rng.uniform(0.2, 0.8, n) * width
        v = rng.uniform(0.2, 0.8, n) * height
        t = np.stack([(u - K[0, 2]) / f * z, (v - K[1, 2]) / f * z, z], -1)
        return R, t, np.repeat(K[None], n, 0)
    return views


@pytest.fixture
def one_thread():
    """Run a test single-threaded (small tensors: threads only add contention) and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (3, 3) of an axis-angle vector (3,) (Rodrigues), differentiable."""
    th = torch.sqrt((w * w).sum() + 1e-24)
    k = w / th
    zero = torch.zeros((), dtype=w.dtype)
    Kx = torch.stack([torch.stack([zero, -k[2], k[1]]), torch.stack([k[2], zero, -k[0]]),
                      torch.stack([-k[1], k[0], zero])])
    return torch.eye(3, dtype=w.dtype) + torch.sin(th) * Kx + (1 - torch.cos(th)) * (Kx @ Kx)


@pytest.fixture(scope="session")
def rodrigues() -> Callable[[torch.Tensor], torch.Tensor]:
    return so3_exp
