"""Differentiable Perspective-n-Point for training (BPnP).

Forward: a batched Levenberg-Marquardt solve of the weighted reprojection error
``f(T; x) = 1/2 sum_i w_i |pi(K (R X_i + t)) - u_i|^2`` started from OpenCV EPnP on detached inputs (or a
given pose). Backward: the implicit function theorem at the optimum, where ``g = df/dT = 0``:
``dT/dx = -(d2f/dT2)^-1 d2f/dT dx`` (Chen, Parra, Cao, Chin, "End-to-End Learnable Geometric Vision by
Backpropagating PnP Optimization", CVPR 2020, eq. (15)), with exact second derivatives from autograd. Gradients
reach the 2D points, the 3D points, the weights (keypoint attention) and ``K``.

The pose is parametrised locally around the solution ``(R*, t*)`` as ``R = exp(d_omega) R*``, ``t = t* + d_t``,
so the backward pass never meets the singularities of a global rotation parametrisation. The gradient is that
of the local minimum the solver found; it is not defined where the minimum is degenerate (fewer than 4
points with non-zero weight, or all points on a line); there the Hessian is pseudo-inverted.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from selfpose_core.geometry.se3 import so3_exp, skew
from selfpose_core.geometry.shapes import check_min_points, check_shape

log = logging.getLogger(__name__)

_Z_MIN = 1e-9  # depth clamp (metres) keeping the residual finite for points behind the camera
_SMALL_PROBLEM = 1 << 16  # Jacobian entries up to which J^T W J is a broadcast sum instead of a batched matmul


def _residuals(R: torch.Tensor, t: torch.Tensor, X: torch.Tensor, u: torch.Tensor,
               K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera points P (B,N,3), homogeneous pixels q = K P (B,N,3) and residuals (B,N,2)."""
    P = X @ R.transpose(-1, -2) + t[:, None, :]
    q = P @ K.transpose(-1, -2)
    z = q[..., 2:3].clamp(min=_Z_MIN)
    return P, q, q[..., :2] / z - u


def _initial_poses(X: torch.Tensor, u: torch.Tensor, K: torch.Tensor,
                   w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """EPnP (OpenCV) per problem on the points with non-zero weight; SQPnP if EPnP fails."""
    B = u.shape[0]
    Xn, un, Kn, wn = (a.detach().cpu().double().numpy() for a in (X, u, K, w))
    R0, t0 = np.tile(np.eye(3), (B, 1, 1)), np.tile(np.array([0.0, 0.0, 1.0]), (B, 1))
    for b in range(B):
        keep = wn[b] > 0
        if keep.sum() < 4:
            keep[:] = True
        obj, img = np.ascontiguousarray(Xn[b][keep]), np.ascontiguousarray(un[b][keep])
        ok, rvec, tvec = cv2.solvePnP(obj, img, Kn[b], None, flags=cv2.SOLVEPNP_EPNP)
        if not ok or not np.all(np.isfinite(tvec)):
            ok, rvec, tvec = cv2.solvePnP(obj, img, Kn[b], None, flags=cv2.SOLVEPNP_SQPNP)
        if ok:
            R0[b] = cv2.Rodrigues(rvec)[0]
            t0[b] = tvec.reshape(3)
        else:
            log.warning("differentiable PnP: OpenCV found no initial pose for problem %d of the batch", b)
    return torch.from_numpy(R0), torch.from_numpy(t0)


def _normal_equations(R: torch.Tensor, t: torch.Tensor, X: torch.Tensor, u: torch.Tensor, K: torch.Tensor,
                      w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gauss-Newton ``H = J^T W J`` (B,6,6), ``g = J^T W r`` (B,6) and cost ``r^T W r`` (B,) at ``(R, t)``.

    ``J`` is the analytic Jacobian of the residuals w.r.t. the local update ``(d_t, d_omega)``.
    """
    P, q, r = _residuals(R, t, X, u, K)
    z = q[..., 2].clamp(min=_Z_MIN)
    dr_dq = torch.zeros(*q.shape[:-1], 2, 3, dtype=u.dtype)
    dr_dq[..., 0, 0] = 1.0 / z
    dr_dq[..., 1, 1] = 1.0 / z
    dr_dq[..., :, 2] = -q[..., :2] / (z * z)[..., None]
    dP = torch.cat([torch.eye(3, dtype=u.dtype).expand(*P.shape[:-1], 3, 3), -skew(P - t[:, None, :])], -1)
    B = u.shape[0]
    J = (dr_dq @ K[:, None] @ dP).reshape(B, -1, 6)  # (B, 2N, 6)
    Jw = J * w.repeat_interleave(2, dim=1)[..., None]
    if J.numel() <= _SMALL_PROBLEM:  # tiny batched GEMMs pay more for thread dispatch than they compute
        H = (Jw[..., :, None] * J[..., None, :]).sum(-3)
    else:
        H = Jw.transpose(-1, -2) @ J
    g = (Jw * r.reshape(B, -1, 1)).sum(-2)
    return H, g, (w * (r * r).sum(-1)).sum(-1)


def _levenberg_marquardt(X: torch.Tensor, u: torch.Tensor, K: torch.Tensor, w: torch.Tensor, R: torch.Tensor,
                         t: torch.Tensor, max_iterations: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched LM on the weighted reprojection error with analytic Jacobians (no autograd); float64 in and out.

    Ends with two undamped Gauss-Newton steps: near the optimum the cost no longer resolves the remaining
    improvement in float64, while the gradient still does (the implicit backward needs g = 0 accurately).
    """
    B = u.shape[0]
    lam = torch.full((B,), 1e-3, dtype=u.dtype)
    eye6 = torch.eye(6, dtype=u.dtype)
    active = torch.ones(B, dtype=torch.bool)
    state = (R, t, *_normal_equations(R, t, X, u, K, w))
    for it in range(max_iterations + 2):
        polish = it >= max_iterations
        if not polish and not bool(active.any()):
            continue
        R, t, H, g, cost = state
        diag = torch.diagonal(H, dim1=-2, dim2=-1)
        damping = torch.zeros_like(lam) if polish else lam
        A = H + damping[:, None, None] * torch.diag_embed(diag) + 1e-12 * diag.amax(-1)[:, None, None] * eye6
        sol, info = torch.linalg.solve_ex(A, g[..., None])
        usable = (info == 0) & torch.isfinite(sol[..., 0]).all(-1) & (active | polish)
        step = torch.where(usable[:, None], -sol[..., 0], torch.zeros_like(g))  # singular (e.g. all weights 0): stay
        R_new, t_new = so3_exp(step[:, 3:]) @ R, t + step[:, :3]
        new = (R_new, t_new, *_normal_equations(R_new, t_new, X, u, K, w))
        better = torch.isfinite(new[4]) & (new[4] <= cost * (1.0 + (1e-9 if polish else 0.0)))
        state = tuple(torch.where(better.reshape(-1, *([1] * (a.ndim - 1))), b, a) for a, b in zip(state, new))
        if not polish:
            lam = torch.where(better, (lam * 0.1).clamp(min=1e-12), (lam * 10.0).clamp(max=1e12))
            stalled = (new[4] - cost).abs() <= 1e-12 * cost  # at float64 resolution of the cost
            active = active & (step.abs().amax(-1) >= tol) & (lam < 1e12) & ~stalled
    return state[0], state[1]


def _objective(d: torch.Tensor, R: torch.Tensor, t: torch.Tensor, X: torch.Tensor, u: torch.Tensor,
               K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-problem cost (B,) at the local perturbation ``d`` (B, 6) = (d_t, d_omega) of ``(R, t)``."""
    B = u.shape[0]
    _, _, r = _residuals(so3_exp(d[:, 3:]) @ R, t + d[:, :3], X.expand(B, *X.shape[-2:]), u,
                         K.expand(B, 3, 3))
    return 0.5 * (w * (r * r).sum(-1)).sum(-1)


class _ImplicitPnP(torch.autograd.Function):
    """Identity-at-zero perturbation ``d`` (B, 6) whose backward carries the implicit-function gradient."""

    @staticmethod
    def forward(ctx, R, t, X, u, K, w):
        ctx.save_for_backward(R, t, X, u, K, w)
        return torch.zeros(u.shape[0], 6, dtype=u.dtype, device=u.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_d):
        R, t, X, u, K, w = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        dtype = torch.float64
        leaves = [a.detach().to(dtype).requires_grad_(n) for a, n in zip((X, u, K, w), needs)]
        with torch.enable_grad():
            d = torch.zeros(u.shape[0], 6, dtype=dtype, device=u.device, requires_grad=True)
            f = _objective(d, R.to(dtype), t.to(dtype), *leaves)
            (g,) = torch.autograd.grad(f.sum(), d, create_graph=True)
            rows = torch.eye(6, dtype=dtype, device=u.device)[:, None, :].expand(6, u.shape[0], 6)
            H = torch.autograd.grad(g, d, grad_outputs=rows, is_grads_batched=True, retain_graph=True)[0]
            H = H.transpose(0, 1)  # (B, 6, 6): H[b, i, j] = d g[b, i] / d d[b, j]
            v = grad_d.to(dtype)[..., None]
            sol, info = torch.linalg.solve_ex(H, v)
            bad = info != 0
            if bool(bad.any()):
                sol[bad] = torch.linalg.pinv(H[bad], hermitian=True) @ v[bad]
            wanted = [leaf for leaf, n in zip(leaves, needs) if n]
            grads = iter(torch.autograd.grad(g, wanted, grad_outputs=-sol[..., 0], allow_unused=True))
        out = [None, None]
        for a, n in zip((X, u, K, w), needs):
            grad = next(grads) if n else None
            out.append(None if grad is None else grad.to(a.dtype))
        return tuple(out)


def solve_pnp_differentiable(pts3d: torch.Tensor, pts2d: torch.Tensor, K: torch.Tensor,
                             weights: torch.Tensor | None = None, *, init: torch.Tensor | None = None,
                             max_iterations: int = 50, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose ``(R (B, 3, 3), t (B, 3))`` (``T_cam_obj``) minimising the weighted reprojection error, differentiably.

    Args:
        pts3d: object points ``(B, N, 3)`` or shared ``(N, 3)``; N >= 4.
        pts2d: their pixels ``(B, N, 2)`` (undistorted; unbatched ``(N, 2)`` gives unbatched outputs).
        K: camera matrices ``(B, 3, 3)`` or shared ``(3, 3)``.
        weights: per-point non-negative weights ``(B, N)`` (e.g. keypoint attention), default 1.
        init: start poses ``(B, 4, 4)``; default OpenCV EPnP on the detached inputs (points with weight > 0).
        max_iterations, tol: LM stops when every step's largest component is below ``tol``.

    The solve runs in float64 whatever the input dtype; outputs take the dtype of ``pts2d``. No outlier
    rejection: give outliers zero weight (or use :func:`selfpose_core.geometry.pnp.solve_pnp_ransac` first).
    """
    unbatched = pts2d.ndim == 2
    if unbatched:
        pts2d = pts2d[None]
        weights = None if weights is None else weights[None]
        init = None if init is None else init[None]
    check_shape(pts2d, ("B", "N", 2), "pts2d")
    B, N = pts2d.shape[:2]
    check_min_points(N, 4, "pts2d")
    if pts3d.ndim == 2:
        check_shape(pts3d, (N, 3), "pts3d")
    else:
        check_shape(pts3d, (B, N, 3), "pts3d")
    if K.ndim == 2:
        check_shape(K, (3, 3), "K")
    else:
        check_shape(K, (B, 3, 3), "K")
    if weights is None:
        weights = torch.ones(B, N, dtype=pts2d.dtype, device=pts2d.device)
    check_shape(weights, (B, N), "weights")

    with torch.no_grad():
        X64 = pts3d.detach().cpu().double().expand(B, N, 3)
        u64 = pts2d.detach().cpu().double()
        K64 = K.detach().cpu().double().expand(B, 3, 3)
        w64 = weights.detach().cpu().double()
        if init is None:
            R0, t0 = _initial_poses(X64, u64, K64, w64)
        else:
            check_shape(init, (B, 4, 4), "init")
            init64 = init.detach().cpu().double()
            R0, t0 = init64[:, :3, :3], init64[:, :3, 3]
        R_opt, t_opt = _levenberg_marquardt(X64, u64, K64, w64, R0, t0, max_iterations, tol)

    dtype, device = pts2d.dtype, pts2d.device
    R_opt, t_opt = R_opt.to(dtype=dtype, device=device), t_opt.to(dtype=dtype, device=device)
    d = _ImplicitPnP.apply(R_opt, t_opt, pts3d, pts2d, K, weights)
    R = so3_exp(d[:, 3:]) @ R_opt
    t = t_opt + d[:, :3]
    if unbatched:
        return R[0], t[0]
    return R, t
