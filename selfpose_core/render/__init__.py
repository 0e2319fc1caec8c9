"""Batched differentiable mesh renderer (pure torch + a small compiled rasteriser) and image-warping helpers.

Public API (see docs/renderer.md): :class:`RenderMesh`, :func:`render` -> :class:`RenderOutput`,
:func:`rasterize`, and the warping helpers in :mod:`selfpose_core.render.warp`.
"""
from __future__ import annotations

from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.rasterizer import Fragments, available_backends, rasterize
from selfpose_core.render.renderer import RenderOutput, project_vertices, render
from selfpose_core.render.warp import project_points, unproject_depth, warp_image

__all__ = ["Fragments", "RenderMesh", "RenderOutput", "available_backends", "project_points", "project_vertices",
           "rasterize", "render", "unproject_depth", "warp_image"]
