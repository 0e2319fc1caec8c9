"""`selfpose bench mesh_budget`: peak memory and time of loading a 5-million-face mesh, in fresh processes.

The mesh is a ball of 0.1 m written as a binary PLY (float32 vertices, as scanners and BOP write them), every
vertex on the sphere: the worst case for the exact diameter (every vertex is on the convex hull and every pair of
antipodal vertices is a near-tie). Two loads, each in its own process so that its peak RSS is its own:

- ``estimate``: ``load_objects_config`` of an objects.yaml naming the mesh, as ``selfpose estimate``, ``adapt``
  and ``pretrain`` load objects: decimated to the face budget (``FACE_BUDGET``), diameter and keypoints of the
  full mesh; goal: peak RSS < 2 GiB;
- ``full``: ``load_object_model(max_faces=None)``, the full-resolution model (exact diameter, keypoints), for
  jobs that need every face; goal: peak RSS < 2 GiB.

Prints one line per load: faces in/out, seconds, peak RSS; exit status 1 when a goal is missed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GOAL_RSS_MB = 2048.0

_CHILD = r"""
import json, resource, sys, time
from selfpose_core.mesh.loading import load_object_model
from selfpose_core.mesh.objects_config import load_objects_config
mode, path, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
if mode == "estimate":
    (model,) = load_objects_config(path, max_faces=budget)
else:
    model = load_object_model(path, "ball", max_faces=None)
seconds = time.perf_counter() - t
print(json.dumps({"faces": len(model.faces), "diameter": model.diameter, "seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_ball(path: Path, faces: int, radius: float = 0.05) -> int:
    """Write a latitude-longitude ball of about ``faces`` triangles as a binary PLY; returns the face count."""
    n_lat = max(3, int(np.ceil((1 + np.sqrt(1 + faces)) / 2)))  # 4 n_lat (n_lat - 1) >= faces
    n_lon = 2 * n_lat
    theta = np.linspace(0.0, np.pi, n_lat + 1)[1:-1]  # interior rings
    phi = np.linspace(0.0, 2 * np.pi, n_lon, endpoint=False)
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    ring = np.stack([st * np.cos(phi), st * np.sin(phi), np.broadcast_to(ct, (len(theta), n_lon))], axis=-1)
    vertices = np.concatenate([[[0.0, 0.0, 1.0]], ring.reshape(-1, 3), [[0.0, 0.0, -1.0]]]) * radius
    idx = 1 + np.arange((n_lat - 1) * n_lon).reshape(n_lat - 1, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    body = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    south = len(vertices) - 1
    tris = np.concatenate([np.stack([np.zeros(n_lon, np.int64), idx[0], nxt[0]], -1), body,
                           np.stack([idx[-1], np.full(n_lon, south), nxt[-1]], -1)])
    vert = np.asarray(vertices, "<f4")
    face = np.empty(len(tris), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face["n"], face["idx"] = 3, tris
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vert)}\nproperty float x\n"
              f"property float y\nproperty float z\nelement face {len(face)}\n"
              "property list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vert.tobytes())
        f.write(face.tobytes())
    return len(face)


def _measure(mode: str, path: Path, budget: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(budget)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from selfpose_core.mesh.loading import FACE_BUDGET

    p = argparse.ArgumentParser(prog="selfpose bench mesh_budget", description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=5_000_000, help="faces of the ball (default 5000000)")
    p.add_argument("--budget", type=int, default=FACE_BUDGET, help=f"face budget (default {FACE_BUDGET})")
    p.add_argument("--only", choices=("estimate", "full"), help="run one of the two loads")
    args = p.parse_args(argv)
    status = 0
    with tempfile.TemporaryDirectory(prefix="selfpose-mesh-budget-") as tmp:
        mesh = Path(tmp) / "ball.ply"
        n = write_ball(mesh, args.faces)
        (Path(tmp) / "objects.yaml").write_text("objects:\n  - {name: ball, mesh: ball.ply, units: m}\n")
        print(f"mesh: ball of {n} faces, {mesh.stat().st_size / 2**20:.0f} MiB binary PLY; face budget "
              f"{args.budget}; goal: peak RSS < {GOAL_RSS_MB:.0f} MB", flush=True)
        for mode in ("estimate", "full"):
            if args.only and mode != args.only:
                continue
            r = _measure(mode, Path(tmp) / "objects.yaml" if mode == "estimate" else mesh, args.budget)
            if "error" in r:
                print(f"{mode:8s}: FAILED {r['error']}")
                status = 1
                continue
            ok = r["peak_rss_mb"] < GOAL_RSS_MB
            status |= 0 if ok else 1
            print(f"{mode:8s}: {n} -> {r['faces']} faces, diameter {r['diameter']:.6f} m, {r['seconds']:.1f} s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB ({'ok' if ok else 'ABOVE GOAL'})", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
