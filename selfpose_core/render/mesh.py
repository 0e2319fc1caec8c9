"""The mesh record the renderer draws: vertices, faces and optional per-vertex attributes, UVs and a texture."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from selfpose_core.errors import MeshError
from selfpose_core.geometry.shapes import check_shape
from selfpose_core.types import ObjectModel


@dataclass(slots=True)
class RenderMesh:
    """A triangle mesh in its object frame (metres), as torch tensors.

    ``vertices`` (V, 3) float; ``faces`` (F, 3) int64; ``attributes`` (V, C) float, any C (vertex colours in
    [0, 1], features, ...); ``uv`` (V, 2) in [0, 1] with v pointing up (OBJ/glTF as loaded by trimesh: v = 0 is the
    bottom row of the texture image); ``texture`` (Ht, Wt, Ct) float. Gradients may flow to ``vertices``,
    ``attributes`` and ``texture``. An empty mesh (V = 0 or F = 0) renders as background.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    attributes: torch.Tensor | None = None
    uv: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    _topology: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.vertices = torch.as_tensor(self.vertices)
        if not self.vertices.is_floating_point():
            self.vertices = self.vertices.float()
        if self.vertices.numel() == 0:
            self.vertices = self.vertices.reshape(0, 3)
        self.faces = torch.as_tensor(self.faces).long()
        if self.faces.numel() == 0:
            self.faces = self.faces.reshape(0, 3)
        check_shape(self.vertices, ("V", 3), "RenderMesh.vertices")
        check_shape(self.faces, ("F", 3), "RenderMesh.faces")
        V = self.vertices.shape[0]
        if self.faces.numel() and (int(self.faces.min()) < 0 or int(self.faces.max()) >= V):
            raise MeshError(f"RenderMesh.faces index vertices outside [0, {V}) (min {int(self.faces.min())}, "
                            f"max {int(self.faces.max())})")
        if self.attributes is not None:
            self.attributes = torch.as_tensor(self.attributes, dtype=self.vertices.dtype)
            check_shape(self.attributes, (V, "C"), "RenderMesh.attributes")
        if (self.uv is None) != (self.texture is None):
            raise MeshError("RenderMesh.uv and RenderMesh.texture must be given together")
        if self.uv is not None:
            self.uv = torch.as_tensor(self.uv, dtype=self.vertices.dtype)
            check_shape(self.uv, (V, 2), "RenderMesh.uv")
            self.texture = torch.as_tensor(self.texture, dtype=self.vertices.dtype)
            check_shape(self.texture, ("Ht", "Wt", "Ct"), "RenderMesh.texture")

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @classmethod
    def from_object_model(cls, model: ObjectModel, *, dtype: torch.dtype = torch.float32) -> RenderMesh:
        """Wrap an :class:`ObjectModel`: vertex colours become ``attributes`` in [0, 1]; uv + texture are kept."""
        attrs = None if model.vertex_colors is None else torch.as_tensor(
            np.asarray(model.vertex_colors, dtype=np.float64)[:, :3] / 255.0, dtype=dtype)
        uv = tex = None
        if model.uv is not None and model.texture is not None:
            uv = torch.as_tensor(np.asarray(model.uv, dtype=np.float64), dtype=dtype)
            tex = torch.as_tensor(np.asarray(model.texture, dtype=np.float64) / 255.0, dtype=dtype)
        return cls(torch.as_tensor(np.asarray(model.vertices, dtype=np.float64), dtype=dtype),
                   torch.as_tensor(np.asarray(model.faces, dtype=np.int64)), attrs, uv, tex)

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique undirected edges (E, 2) and their first two adjacent faces (E, 2) (-1 = open boundary)."""
        if self._topology is None:
            F = self.num_faces
            directed = self.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
            lo, hi = directed.amin(1), directed.amax(1)
            key = lo * max(self.num_vertices, 1) + hi
            order = torch.argsort(key, stable=True)
            key_sorted = key[order]
            uniq, counts = torch.unique_consecutive(key_sorted, return_counts=True)
            first = counts.cumsum(0) - counts
            face_of = torch.arange(F).repeat_interleave(3)[order]
            f0 = face_of[first]
            f1 = torch.where(counts > 1, face_of[(first + 1).clamp(max=max(len(order) - 1, 0))],
                             torch.full_like(f0, -1))
            V = max(self.num_vertices, 1)
            edges = torch.stack([torch.div(uniq, V, rounding_mode="floor"), uniq % V], -1)
            self._topology = (edges, torch.stack([f0, f1], -1))
        return self._topology


def batch_meshes(meshes: RenderMesh | Sequence[RenderMesh], batch: int) -> list[RenderMesh]:
    """Check that ``meshes`` is one mesh (shared by every view) or one per view; return it as a list."""
    if isinstance(meshes, RenderMesh):
        return [meshes]
    meshes = list(meshes)
    if len(meshes) not in (1, batch):
        raise MeshError(f"render needs one mesh or one per view ({batch}), got {len(meshes)} meshes")
    return meshes
