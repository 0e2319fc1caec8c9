"""The compiled z-buffer rasteriser: a small C function built once with the system C compiler and loaded by ctypes.

The C step is not differentiable and needs no torch headers, so it compiles in about a second with ``cc`` (no
ninja, no CUDA). The shared library is cached under ``$SELFPOSE_CACHE`` (default ``~/.cache/selfpose``) keyed by a
hash of the source and the compiler flags. If no compiler is found or the build fails, :func:`load` returns ``None``
and :mod:`selfpose_core.render.rasterizer` falls back to its pure-torch rasteriser (same outputs, slower).
Set ``SELFPOSE_RENDER_NATIVE=0`` to force the fallback.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# One job per (view, band of rows): each job owns its rows of the z-buffer, so no locking is needed.
# Coverage rule: a pixel centre (x, y) (integer coordinates) is inside a triangle when its three barycentrics are
# >= 0 (shared edges may be drawn twice; the depth test then picks one face). Depth is interpolated perspective-
# correctly (1/z is affine in screen space). Faces with a vertex nearer than ``near_z`` (or NaN) and faces whose
# screen area is below 1e-12 px^2 are skipped.
_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void sp_rasterize(const float* xy, const float* z, const int64_t* faces, int64_t faces_stride,
                  int64_t B, int64_t V, int64_t F, int64_t H, int64_t W, float near_z, int64_t n_bands,
                  int n_threads, int32_t* face_id, float* zbuf, float* bary)
{
    int64_t n_jobs = B * n_bands;
    int64_t job;
#ifdef _OPENMP
    #pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
#endif
    for (job = 0; job < n_jobs; ++job) {
        int64_t b = job / n_bands, band = job % n_bands;
        int64_t y_lo = H * band / n_bands, y_hi = H * (band + 1) / n_bands;
        const float* vxy = xy + b * V * 2;
        const float* vz = z + b * V;
        const int64_t* fc = faces + b * faces_stride;
        int32_t* fid = face_id + b * H * W;
        float* zb = zbuf + b * H * W;
        float* br = bary + b * H * W * 3;
        for (int64_t i = y_lo * W; i < y_hi * W; ++i) { fid[i] = -1; zb[i] = INFINITY; }
        for (int64_t f = 0; f < F; ++f) {
            int64_t i0 = fc[3 * f], i1 = fc[3 * f + 1], i2 = fc[3 * f + 2];
            double z0 = vz[i0], z1 = vz[i1], z2 = vz[i2];
            if (!(z0 >= near_z && z1 >= near_z && z2 >= near_z)) continue;
            double x0 = vxy[2 * i0], y0 = vxy[2 * i0 + 1];
            double x1 = vxy[2 * i1], y1 = vxy[2 * i1 + 1];
            double x2 = vxy[2 * i2], y2 = vxy[2 * i2 + 1];
            double ymin = fmin(y0, fmin(y1, y2)), ymax = fmax(y0, fmax(y1, y2));
            double ya = ceil(ymin), yb = floor(ymax);
            if (ya < (double)y_lo) ya = (double)y_lo;
            if (yb > (double)(y_hi - 1)) yb = (double)(y_hi - 1);
            if (!(ya <= yb)) continue;
            double xmin = fmax(ceil(fmin(x0, fmin(x1, x2))), 0.0);
            double xmax = fmin(floor(fmax(x0, fmax(x1, x2))), (double)(W - 1));
            if (!(xmin <= xmax)) continue;
            double area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0);
            if (!(fabs(area) > 1e-12)) continue;
            double ia = 1.0 / area;
            /* barycentric of vertex k at (px, py): A[k] * px + Bc[k] * py + C[k] */
            double A[3] = {(y1 - y2) * ia, (y2 - y0) * ia, (y0 - y1) * ia};
            double Bc[3] = {(x2 - x1) * ia, (x0 - x2) * ia, (x1 - x0) * ia};
            double C[3] = {(x1 * y2 - x2 * y1) * ia, (x2 * y0 - x0 * y2) * ia, (x0 * y1 - x1 * y0) * ia};
            double iz0 = 1.0 / z0, iz1 = 1.0 / z1, iz2 = 1.0 / z2;
            for (int64_t py = (int64_t)ya; py <= (int64_t)yb; ++py) {
                double c[3];
                double lo = xmin, hi = xmax;
                for (int k = 0; k < 3; ++k) {
                    c[k] = Bc[k] * (double)py + C[k];
                    /* span of this row where A*px + c >= 0, widened by one pixel; exact test below */
                    if (A[k] > 1e-300) { double s = floor(-c[k] / A[k]); if (s > lo) lo = s; }
                    else if (A[k] < -1e-300) { double s = ceil(-c[k] / A[k]); if (s < hi) hi = s; }
                    else if (c[k] < 0.0) { hi = lo - 1.0; }
                }
                if (lo < xmin) lo = xmin;
                if (hi > xmax) hi = xmax;
                int64_t row = py * W;
                for (int64_t px = (int64_t)lo; px <= (int64_t)hi; ++px) {
                    double w0 = A[0] * (double)px + c[0];
                    double w1 = A[1] * (double)px + c[1];
                    double w2 = A[2] * (double)px + c[2];
                    if (w0 < 0.0 || w1 < 0.0 || w2 < 0.0) continue;
                    double l0 = w0 * iz0, l1 = w1 * iz1, l2 = w2 * iz2;
                    double s = l0 + l1 + l2;
                    double d = 1.0 / s;
                    float df = (float)d;
                    int64_t p = row + px;
                    if (df < zb[p]) {  /* float compare: ties keep the lowest face id, like the torch backend */
                        zb[p] = df;
                        fid[p] = (int32_t)f;
                        br[3 * p] = (float)(l0 * d);
                        br[3 * p + 1] = (float)(l1 * d);
                        br[3 * p + 2] = (float)(l2 * d);
                    }
                }
            }
        }
        for (int64_t i = y_lo * W; i < y_hi * W; ++i) {
            if (fid[i] < 0) { zb[i] = 0.0f; br[3 * i] = 0.0f; br[3 * i + 1] = 0.0f; br[3 * i + 2] = 0.0f; }
        }
    }
}
"""

_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("SELFPOSE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "selfpose")
    return Path(root) / "render"


def _compile(out: Path) -> bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        log.warning("no C compiler found: the renderer uses its pure-torch rasteriser (slower)")
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "raster.c"
        src.write_text(_SOURCE)
        lib = Path(tmp) / out.name
        for extra in (["-fopenmp"], []):
            proc = subprocess.run([cc, *_FLAGS, *extra, str(src), "-o", str(lib), "-lm"],
                                  capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                os.replace(lib, out)  # atomic: concurrent builders never see a half-written library
                return True
        log.warning("building the C rasteriser with %s failed, using the pure-torch rasteriser:\n%s", cc,
                    proc.stderr[-2000:])
    return False


def load() -> ctypes.CDLL | None:
    """The compiled rasteriser library (built on first use), or ``None`` when unavailable or disabled."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("SELFPOSE_RENDER_NATIVE", "1") == "0":
        return None
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"sp_raster_{key}.so"
    try:
        if not path.exists() and not _compile(path):
            return None
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.warning("cannot load the C rasteriser %s (%s): using the pure-torch rasteriser", path, exc)
        return None
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.sp_rasterize.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, f32, i64, ctypes.c_int, ptr, ptr, ptr]
    lib.sp_rasterize.restype = None
    _lib = lib
    return lib


def rasterize_native(lib: ctypes.CDLL, xy: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, height: int,
                     width: int, near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the C rasteriser. ``xy`` (B, V, 2) float32, ``z`` (B, V) float32, ``faces`` (B or 1, F, 3) int64.

    Returns face ids (B, H, W) int32 (-1 = background), depth (B, H, W) float32 (0 = background) and perspective-
    correct barycentrics (B, H, W, 3) float32. Inputs must be contiguous CPU tensors.
    """
    B, V = z.shape
    F = faces.shape[1]
    threads = max(1, torch.get_num_threads())
    n_bands = max(1, min(height, -(-2 * threads // max(B, 1))))
    face_id = torch.empty((B, height, width), dtype=torch.int32)
    zbuf = torch.empty((B, height, width), dtype=torch.float32)
    bary = torch.empty((B, height, width, 3), dtype=torch.float32)
    stride = 0 if faces.shape[0] == 1 else F * 3
    lib.sp_rasterize(xy.data_ptr(), z.data_ptr(), faces.data_ptr(), stride, B, V, F, height, width, float(near),
                     n_bands, threads, face_id.data_ptr(), zbuf.data_ptr(), bary.data_ptr())
    return face_id, zbuf, bary
