"""Colours at the objects' surface points, learned from views at known poses: a printed box is told from a
look-alike with the same colours elsewhere on it, whatever the exposure; a plain object gives no evidence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from selfpose_core.errors import ModelError
from selfpose_core.mesh.measures import sample_surface
from selfpose_core.models.surface_colours import SurfaceColours
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render
from selfpose_core.types import CameraIntrinsics

K = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240).K
BOX = trimesh.creation.box((0.12, 0.06, 0.2))
PALETTE = np.array([(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 200, 40), (160, 60, 180), (40, 190, 190)])


def _face_colours(order: list[int]) -> np.ndarray:
    """(F, 3) a colour per side of the box: side j (by its normal's axis and sign) gets PALETTE[order[j]]."""
    n = np.asarray(BOX.face_normals)
    side = np.argmax(np.abs(n), 1) * 2 + (n[np.arange(len(n)), np.argmax(np.abs(n), 1)] < 0)
    return PALETTE[np.asarray(order)[side]]


def _look_at(eye: np.ndarray) -> np.ndarray:
    """T_cam_obj of a camera at ``eye`` (object frame) looking at the object's centre, z up."""
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z], 1)  # world <- camera
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R.T, -R.T @ eye
    return T


def _view(face_colours: np.ndarray, T: np.ndarray, gains=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, depth, mask) of the box with ``face_colours`` at ``T_cam_obj`` on grey, the sides shaded by their angle
    to the camera, the image scaled by per-channel ``gains`` (another exposure and white balance)."""
    out = render(RenderMesh(torch.tensor(BOX.vertices), torch.tensor(BOX.faces)), torch.tensor(T[None, :3, :3]),
                 torch.tensor(T[None, :3, 3]), torch.tensor(K[None]), (240, 320), coords=False, attributes=False,
                 silhouette=False, visibility=False)
    face = out.face_ids[0].numpy()
    mask = face >= 0
    n_cam = np.asarray(BOX.face_normals) @ T[:3, :3].T
    shade = 0.4 + 0.6 * np.abs(n_cam[:, 2])
    rgb = np.full((240, 320, 3), 110.0)
    rgb[mask] = face_colours[face[mask]] * shade[face[mask], None]
    rgb = np.clip(rgb * np.asarray(gains), 0, 255).astype(np.uint8)
    return rgb, out.depth[0].numpy(), mask


def _fit(face_colours: np.ndarray) -> SurfaceColours:
    surface = sample_surface(BOX.vertices, BOX.faces, 800, np.random.default_rng(0))
    views = []
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        T = _look_at(np.array([0.5 * np.cos(a), 0.5 * np.sin(a), 0.3]))
        rgb, depth, mask = _view(face_colours, T)
        views.append((rgb, depth, K, 0, T, mask))
    return SurfaceColours.fit([surface], views)


def test_a_printed_box_is_told_from_its_look_alike_under_another_exposure():
    printed = _face_colours([0, 1, 2, 3, 4, 5])
    look_alike = _face_colours([2, 4, 0, 5, 3, 1])  # the same six colours on other sides
    model = _fit(printed)
    assert model.known(0) and model.agreement[0] > 0.8
    T = _look_at(np.array([0.35 * np.cos(0.4), 0.35 * np.sin(0.4), 0.4]))  # a view the drive did not have
    gains = (0.7, 0.9, 1.25)
    same = model.score(0, *_view(printed, T, gains)[:2], K, T[None])[0]
    other = model.score(0, *_view(look_alike, T, gains)[:2], K, T[None])[0]
    assert same > 0.85 and other < 0.5, (same, other)
    assert model.score(0, *_view(printed, T)[:2], K, np.stack([T, T]))[1] == pytest.approx(same, abs=0.02)
    factors = [model.pattern(0, *_view(c, T, gains)[:2], K, T[None])[0] for c in (printed, look_alike)]
    assert factors[0] == 1.0 and factors[1] < 0.95


def test_a_plain_object_gives_no_evidence_either_way():
    model = _fit(_face_colours([0] * 6))
    assert model.agreement[0] < 0.1
    T = _look_at(np.array([0.4, 0.1, 0.3]))
    for colours in (_face_colours([0] * 6), _face_colours([0, 1, 2, 3, 4, 5])):
        assert model.pattern(0, *_view(colours, T)[:2], K, T[None])[0] > 0.9


def test_an_object_never_seen_scores_one_and_bad_arrays_are_refused():
    surface = sample_surface(BOX.vertices, BOX.faces, 100, np.random.default_rng(0))
    model = SurfaceColours.fit([surface], [])
    assert not model.known(0) and model.pattern(0, np.zeros((240, 320, 3), np.uint8), None, K, np.eye(4)[None])[0] == 1
    args = [model.points, model.normals, model.colours, model.counts, model.agreement]
    with pytest.raises(ModelError, match="agreement"):
        SurfaceColours(*args[:4], np.array([1.5]))
    with pytest.raises(ModelError, match=r"\(O, M, 3\)"):
        SurfaceColours(args[0][:, :50], *args[1:])
