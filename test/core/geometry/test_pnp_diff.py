"""Differentiable PnP: forward equals OpenCV's EPnP+LM solution, implicit gradients pass gradcheck."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.pnp import solve_pnp
from selfpose_core.geometry.pnp_diff import solve_pnp_differentiable
from selfpose_core.geometry.projection import project
from selfpose_core.geometry.se3 import make_T, rotation_angle, transform_points

K = np.array([[600.0, 0.0, 320.0], [0.0, 610.0, 240.0], [0.0, 0.0, 1.0]])


def problems(rng: np.random.Generator, B: int, N: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T = np.stack([make_T(Rotation.random(random_state=rng).as_matrix(),
                         np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(0.6, 1.5)]))
                  for _ in range(B)])
    X = rng.uniform(-0.1, 0.1, (B, N, 3))
    uv = project(K, transform_points(T, X)) + rng.normal(scale=noise, size=(B, N, 2))
    return T, X, uv


def test_forward_equals_opencv(rng):
    T, X, uv = problems(rng, 6, 12, noise=1.0)
    R, t = solve_pnp_differentiable(torch.tensor(X), torch.tensor(uv), torch.tensor(K))
    for b in range(6):
        ref = solve_pnp(X[b], uv[b], K).T_cam_obj
        assert rotation_angle(R[b].numpy(), ref[:3, :3]) < 1e-6
        assert np.abs(t[b].numpy() - ref[:3, 3]).max() < 1e-6
    # noiseless: the true pose
    T, X, uv = problems(rng, 3, 8, noise=0.0)
    R, t = solve_pnp_differentiable(torch.tensor(X), torch.tensor(uv), torch.tensor(K))
    assert rotation_angle(R.numpy(), T[:, :3, :3]).max() < 1e-9
    assert np.abs(t.numpy() - T[:, :3, 3]).max() < 1e-9


def test_weights_init_shared_points_float32_and_unbatched(rng):
    T, X, uv = problems(rng, 2, 10, noise=0.5)
    uv[:, 0] += 80.0  # a gross outlier, switched off by its weight
    w = np.ones((2, 10))
    w[:, 0] = 0.0
    R, t = solve_pnp_differentiable(torch.tensor(X), torch.tensor(uv), torch.tensor(K), torch.tensor(w))
    for b in range(2):
        ref = solve_pnp(X[b, 1:], uv[b, 1:], K).T_cam_obj
        assert rotation_angle(R[b].numpy(), ref[:3, :3]) < 1e-6
    # a given start pose converges to the same optimum
    R2, t2 = solve_pnp_differentiable(torch.tensor(X), torch.tensor(uv), torch.tensor(K), torch.tensor(w),
                                      init=torch.tensor(T))
    np.testing.assert_allclose(R2.numpy(), R.numpy(), atol=1e-9)
    np.testing.assert_allclose(t2.numpy(), t.numpy(), atol=1e-9)
    # shared object points (N, 3), float32 in -> float32 out, unbatched
    Xs = np.broadcast_to(X[0], X.shape)
    uv_s = project(K, transform_points(T, Xs))
    R3, t3 = solve_pnp_differentiable(torch.tensor(X[0], dtype=torch.float32),
                                      torch.tensor(uv_s, dtype=torch.float32), torch.tensor(K, dtype=torch.float32))
    assert R3.dtype == torch.float32 and R3.shape == (2, 3, 3)
    np.testing.assert_allclose(t3.numpy(), T[:, :3, 3], atol=1e-4)
    R4, t4 = solve_pnp_differentiable(torch.tensor(X[0]), torch.tensor(uv_s[0]), torch.tensor(K))
    assert R4.shape == (3, 3) and t4.shape == (3,)


def test_gradcheck_all_inputs(rng):
    _, X, uv = problems(rng, 2, 6, noise=1.0)
    w = rng.uniform(0.5, 1.5, (2, 6))
    inputs = tuple(torch.tensor(a, requires_grad=True) for a in (X, uv, K, w))

    def fn(pts3d, pts2d, cam, weights):
        return solve_pnp_differentiable(pts3d, pts2d, cam, weights, tol=1e-12)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_training_2d_points_through_pnp_reaches_the_target_pose(rng):
    """The implicit gradient is usable for training: Adam on the 2D points drives the PnP pose to a target."""
    T, X, uv = problems(rng, 2, 8, noise=0.0)
    T = torch.tensor(T)
    pts2d = torch.tensor(uv + rng.normal(scale=5.0, size=uv.shape), requires_grad=True)
    opt = torch.optim.Adam([pts2d], lr=1.0)
    losses = []
    for _ in range(12):
        R, t = solve_pnp_differentiable(torch.tensor(X), pts2d, torch.tensor(K))
        loss = ((t - T[:, :3, 3]) ** 2).sum() + 0.01 * ((R - T[:, :3, :3]) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_input_errors():
    X, uv = torch.zeros(2, 3, 3), torch.zeros(2, 3, 2)
    with pytest.raises(ShapeError, match="at least 4"):
        solve_pnp_differentiable(X, uv, torch.eye(3))
    with pytest.raises(ShapeError, match="pts3d"):
        solve_pnp_differentiable(torch.zeros(2, 5, 3), torch.zeros(2, 6, 2), torch.eye(3))
    with pytest.raises(ShapeError, match="weights"):
        solve_pnp_differentiable(torch.zeros(6, 3), torch.zeros(2, 6, 2), torch.eye(3), torch.ones(2, 5))


@pytest.mark.slow
def test_gradcheck_all_inputs_full_jacobian(rng):
    _, X, uv = problems(rng, 2, 6, noise=1.0)
    w = rng.uniform(0.5, 1.5, (2, 6))
    inputs = tuple(torch.tensor(a, requires_grad=True) for a in (X, uv, K, w))

    def fn(pts3d, pts2d, cam, weights):
        return solve_pnp_differentiable(pts3d, pts2d, cam, weights, tol=1e-12)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4)
