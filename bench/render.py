"""`selfpose bench render`: the renderer against Open3D ray casting on the same meshes and views, in one run.

Meshes: tori of 500, 2000 and 10000 faces (concave, 0.1 m across). Views: the same 64 seeded random poses at
0.3-1.5 m, rendered at 128x128 and 640x480. Figures (each the median of ``--repeat`` timed runs after a warm-up,
ours and Open3D interleaved so that machine load hits both alike):

- forward: ``render(..., silhouette=False)`` (mask + depth + object coordinates, no autograd) / Open3D
  ``cast_rays`` on precomputed rays already in an Open3D tensor (mask + depth from ``t_hit``, coordinates from the
  hit points); goal <= 1.5;
- forward + backward of a silhouette + depth loss w.r.t. (R, t) / the same Open3D forward; goal <= 5;
- peak memory (peak RSS growth) of forward + backward for 64 views at 128x128 of the 2000-face mesh; goal <= 1 GiB.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open3d as o3d
import torch
import trimesh
from scipy.spatial.transform import Rotation

from selfpose_core.render import RenderMesh, render
from selfpose_core.render.open3d_reference import Open3DRaycaster

FACES = {500: (25, 10), 2000: (50, 20), 10000: (100, 50)}  # torus (major, minor) sections: 2 * major * minor faces
SIZES = ((128, 128), (480, 640))


def _views(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-focal views: R (n, 3, 3), t (n, 3) and normalised image positions of the object centre."""
    rng = np.random.default_rng(seed)
    R = Rotation.random(n, random_state=rng).as_matrix()
    z = rng.uniform(0.3, 1.5, n)
    uv = rng.uniform(-0.25, 0.25, (n, 2))
    t = np.concatenate([uv * z[:, None], z[:, None]], -1)
    return R, t, uv


def _K(size: tuple[int, int], n: int) -> np.ndarray:
    H, W = size
    f = 0.9 * W  # a 0.1 m object at 0.3-1.5 m covers about 6-30 % of the width
    K = np.array([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])
    return np.repeat(K[None], n, 0)


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _mesh(n_faces: int) -> RenderMesh:
    major, minor = FACES[n_faces]
    tm = trimesh.creation.torus(major_radius=0.04, minor_radius=0.012, major_sections=major, minor_sections=minor)
    return RenderMesh(torch.tensor(tm.vertices, dtype=torch.float32), torch.tensor(tm.faces))


def _forward_backward(mesh: RenderMesh, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, size: tuple[int, int],
                      target_sil: torch.Tensor, target_depth: torch.Tensor) -> None:
    Rg, tg = R.clone().requires_grad_(True), t.clone().requires_grad_(True)
    out = render(mesh, Rg, tg, K, size, coords=False, visibility=False)
    loss = ((out.silhouette - target_sil) ** 2).mean() + (out.depth - target_depth).abs().mean()
    loss.backward()


def _peak_child(views: int, seed: int, threads: int) -> None:
    """Print the peak RSS growth (MiB) of one forward + backward; run in a fresh process by _peak_memory_mib."""
    torch.set_num_threads(threads)
    R_np, t_np, _ = _views(views, seed)
    R, t = torch.tensor(R_np, dtype=torch.float32), torch.tensor(t_np, dtype=torch.float32)
    K = torch.tensor(_K((128, 128), views), dtype=torch.float32)
    mesh = _mesh(2000)
    with torch.no_grad():
        target = render(mesh, R[:1], t[:1], K[:1], (128, 128))  # loads the rasteriser
    target_sil = torch.zeros(views, 128, 128)
    target_depth = torch.zeros(views, 128, 128)
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    del target
    _forward_backward(mesh, R, t, K, (128, 128), target_sil, target_depth)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss may still hold an earlier (import-time) peak: the difference is then an upper bound
    print((peak - rss) / 1024.0)


def _peak_memory_mib(views: int, seed: int) -> float | None:
    """Peak RSS growth of one forward + backward (128x128, 2000 faces) in a fresh process (Linux only)."""
    if not os.path.exists("/proc/self/status"):
        return None
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys; sys.path.insert(0, {root!r}); from bench.render import _peak_child; "
            f"_peak_child({views}, {seed}, {torch.get_num_threads()})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory child failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="selfpose bench render", description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for torch and for Open3D (0 = torch's default and all cores for Open3D)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    R_np, t_np, _ = _views(args.views, args.seed)
    R = torch.tensor(R_np, dtype=torch.float32)
    t = torch.tensor(t_np, dtype=torch.float32)
    print(f"{args.views} views, torch threads {torch.get_num_threads()}, Open3D threads "
          f"{args.threads or 'all'}, median of {args.repeat} runs")
    print(f"{'faces':>6} {'size':>8} | {'open3d fwd':>10} {'ours fwd':>9} {'ratio':>6} (goal <= 1.5) | "
          f"{'ours fwd+bwd':>12} {'ratio':>6} (goal <= 5)")
    worst_fwd = worst_bwd = 0.0
    peak = _peak_memory_mib(args.views, args.seed)
    for n_faces in FACES:
        mesh = _mesh(n_faces)
        caster = Open3DRaycaster(mesh.vertices.numpy(), mesh.faces.numpy())
        for size in SIZES:
            K_np = _K(size, args.views)
            K = torch.tensor(K_np, dtype=torch.float32)
            rays = o3d.core.Tensor(caster.rays(R_np, t_np, K_np, size))
            with torch.no_grad():
                target = render(mesh, R, t, K, size, coords=False, visibility=False)

            def ours_forward() -> None:
                with torch.no_grad():
                    render(mesh, R, t, K, size, silhouette=False, visibility=False)

            def ours_backward() -> None:
                _forward_backward(mesh, R, t, K, size, target.silhouette, target.depth)

            def open3d_forward() -> None:
                caster.cast(rays, nthreads=args.threads)

            for fn in (ours_forward, ours_backward, open3d_forward):  # warm-up
                fn()
            times: dict[str, list[float]] = {"o3d": [], "fwd": [], "bwd": []}
            for _ in range(args.repeat):
                times["o3d"].append(_time(open3d_forward))
                times["fwd"].append(_time(ours_forward))
                times["bwd"].append(_time(ours_backward))
            ref, fwd, bwd = (statistics.median(times[k]) for k in ("o3d", "fwd", "bwd"))
            worst_fwd, worst_bwd = max(worst_fwd, fwd / ref), max(worst_bwd, bwd / ref)
            print(f"{n_faces:>6} {size[1]:>4}x{size[0]:<3} | {1e3 * ref:>8.1f}ms {1e3 * fwd:>7.1f}ms {fwd / ref:>6.2f}"
                  f"{'':>14}| {1e3 * bwd:>10.1f}ms {bwd / ref:>6.2f}")
    print(f"worst ratio: forward {worst_fwd:.2f} (goal <= 1.5), forward+backward {worst_bwd:.2f} (goal <= 5)")
    if peak is None:
        print("peak memory: not measurable on this platform (needs Linux /proc/self/clear_refs)")
    else:
        print(f"peak memory, forward+backward, {args.views} views 128x128, 2000 faces: {peak:.0f} MiB (goal <= 1024)")
    return 0
