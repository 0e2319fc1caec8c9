"""6D rotation representation (Zhou et al. 2019): round trip, handedness, numpy == torch, gradients."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from selfpose_core.geometry.rotation6d import matrix_to_rotation_6d, rotation_6d_to_matrix


def test_round_trip_and_columns(rng):
    R = Rotation.random(200, random_state=rng).as_matrix()
    d6 = matrix_to_rotation_6d(R)
    np.testing.assert_allclose(d6[:, :3], R[:, :, 0])
    np.testing.assert_allclose(d6[:, 3:], R[:, :, 1])
    np.testing.assert_allclose(rotation_6d_to_matrix(d6), R, atol=1e-12)
    Rt = torch.tensor(R)
    np.testing.assert_allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(Rt)).numpy(), R, atol=1e-12)


def test_arbitrary_input_gives_proper_rotation_by_gram_schmidt(rng):
    d6 = rng.normal(size=(4, 50, 6))
    R = rotation_6d_to_matrix(d6)
    np.testing.assert_allclose(R.swapaxes(-1, -2) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)  # right-handed, never a reflection
    # first column is the normalised first vector; second lies in the plane of both input vectors
    a1, a2 = d6[..., :3], d6[..., 3:]
    np.testing.assert_allclose(R[..., :, 0], a1 / np.linalg.norm(a1, axis=-1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(np.einsum("...i,...i", R[..., :, 2], a2), 0.0, atol=1e-10)
    np.testing.assert_allclose(rotation_6d_to_matrix(torch.tensor(d6)).numpy(), R, atol=1e-12)


def test_gradients_are_finite():
    d6 = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,))
