"""The evaluation report: ``report.html`` with the results table and PNG plots (matplotlib, Agg backend).

Plots: ``recall_curves.png`` (recall vs threshold in object diameters for ADD, ADD-S and AD{D|I}, one curve per
object and the mean over objects), ``per_object.png`` (bars of the main recalls per object), and one
``overlay_<scene>_<image>.png`` per given sample: the silhouette contour and 3D bounding box of every ground-truth
pose (green) and estimated pose (magenta) drawn on the image.
"""
from __future__ import annotations

import html
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selfpose_core.data.bop import BopSample
from selfpose_core.eval.evaluate import COLUMNS, EvalResult
from selfpose_core.geometry.projection import project
from selfpose_core.geometry.se3 import transform_points
from selfpose_core.types import ObjectModel, PoseEstimate

log = logging.getLogger(__name__)

GT_COLOR = (40, 200, 60)  # RGB
EST_COLOR = (230, 40, 230)
CURVE_THRESHOLDS = np.linspace(0.0, 0.5, 51)
CURVE_ERRORS = (("add", "ADD"), ("adi", "ADD-S"), ("ad_di", "AD{D|I}"))
BAR_COLUMNS = (("adds_recall", "ADD-S"), ("ad_di_recall", "AD{D|I}"), ("deg5_cm5", "5deg5cm"),
               ("ar_mssd", "AR_MSSD"), ("detection_rate", "detected"))
# Overlays are drawn on the image enlarged to at least this width (small test images stay readable).
OVERLAY_MIN_WIDTH = 480
_BOX_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(result: EvalResult, path: Path) -> Path:
    """Recall vs threshold (fraction of the diameter) for ADD, ADD-S and AD{D|I}: objects and mean over objects."""
    plt = _pyplot()
    ids = [o.obj_id for o in result.objects if o.name in result.per_object]
    fig, axes = plt.subplots(1, len(CURVE_ERRORS), figsize=(4.2 * len(CURVE_ERRORS), 3.6), sharey=True)
    for ax, (err, label) in zip(axes, CURVE_ERRORS):
        curves = []
        for obj in result.objects:
            if obj.obj_id in ids:
                c = result.recall(err, CURVE_THRESHOLDS, obj_id=obj.obj_id) * 100.0
                curves.append(c)
                ax.plot(CURVE_THRESHOLDS, c, lw=1.2, label=obj.name)
        if curves:
            ax.plot(CURVE_THRESHOLDS, np.mean(curves, axis=0), "k--", lw=2.0, label="mean")
        ax.axvline(0.1, color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{label} recall")
        ax.set_xlabel("threshold [object diameter]")
        ax.set_xlim(0, CURVE_THRESHOLDS[-1])
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall [%]")
    if ids:
        axes[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_object(result: EvalResult, path: Path) -> Path:
    """Grouped bars of the main recalls (percent) for every object and the mean."""
    plt = _pyplot()
    names = list(result.per_object) + ["mean"]
    rows = list(result.per_object.values()) + [result.mean]
    x = np.arange(len(names))
    width = 0.8 / len(BAR_COLUMNS)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2.0), 3.8))
    for k, (key, label) in enumerate(BAR_COLUMNS):
        vals = [100.0 * r.get(key, float("nan")) for r in rows]
        ax.bar(x + (k - (len(BAR_COLUMNS) - 1) / 2) * width, np.nan_to_num(vals), width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20 if len(names) > 6 else 0)
    ax.set_ylabel("[%]")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(BAR_COLUMNS), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_pose(img: np.ndarray, K: np.ndarray, obj: ObjectModel, T_cam_obj: np.ndarray, color: tuple[int, int, int],
               thickness: int) -> None:
    """Draw the silhouette contour and 3D bounding box of ``obj`` at ``T_cam_obj`` on ``img`` (H, W, 3) in place."""
    import cv2

    X = transform_points(np.asarray(T_cam_obj, dtype=np.float64), obj.vertices)
    if not np.all(X[:, 2] > 1e-3):
        return  # (partly) behind the camera: nothing sensible to draw
    uv = project(K, X)
    shift = 4  # sub-pixel precision of cv2 drawing
    pix = np.round(uv * (1 << shift)).astype(np.int32)
    mask = np.zeros(img.shape[:2], np.uint8)
    if len(obj.faces):
        cv2.fillPoly(mask, list(pix[obj.faces]), 255, lineType=cv2.LINE_8, shift=shift)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, color, thickness, lineType=cv2.LINE_AA)
    lo, hi = obj.bbox
    corners = np.array([[(hi if i >> 2 & 1 else lo)[0], (hi if i >> 1 & 1 else lo)[1], (hi if i & 1 else lo)[2]]
                        for i in range(8)])
    c = np.round(project(K, transform_points(np.asarray(T_cam_obj, dtype=np.float64), corners))
                 * (1 << shift)).astype(np.int64)
    for a, b in _BOX_EDGES:
        cv2.line(img, (int(c[a, 0]), int(c[a, 1])), (int(c[b, 0]), int(c[b, 1])), color, max(1, thickness // 2),
                 lineType=cv2.LINE_AA, shift=shift)


def draw_overlay(sample: BopSample, estimates: Sequence[PoseEstimate], objects: Sequence[ObjectModel],
                 min_width: int = OVERLAY_MIN_WIDTH) -> np.ndarray:
    """The sample's image (enlarged to at least ``min_width`` px, washed out) with GT poses in green and estimates
    in magenta.

    Returns: (H', W', 3) uint8 RGB. Estimates of objects not in ``objects`` are skipped.
    """
    import cv2

    scale = max(1, math.ceil(min_width / sample.frame.rgb.shape[1]))
    img = np.ascontiguousarray(cv2.resize(sample.frame.rgb, None, fx=scale, fy=scale,
                                          interpolation=cv2.INTER_NEAREST) if scale > 1 else sample.frame.rgb.copy())
    img = (0.5 * img + 0.25 * 255.0).astype(np.uint8)  # washed out so that the drawing stands out
    K = sample.frame.K.scaled(scale).K
    by_id = {o.obj_id: o for o in objects}
    by_name = {o.name: o for o in objects}
    thickness = max(2, img.shape[1] // 320)
    for g in sample.gt:
        if g.obj_id in by_id:
            _draw_pose(img, K, by_id[g.obj_id], g.T_cam_obj, GT_COLOR, thickness)
    for e in estimates:
        obj = by_name.get(e.object_name) or by_id.get(e.object_id)
        if obj is not None:
            _draw_pose(img, K, obj, e.T_cam_obj, EST_COLOR, thickness)
    return img


def _html_table(result: EvalResult) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _, _ in COLUMNS)
    rows = []
    for name, vals in list(result.per_object.items()) + [("mean", result.mean)]:
        cells = []
        for key, _, scale, fmt in COLUMNS:
            v = vals.get(key, float("nan"))
            cells.append(f"<td>{'-' if not math.isfinite(v) else fmt.format(v * scale)}</td>")
        tag = "b" if name == "mean" else "span"
        rows.append(f"<tr><td><{tag}>{html.escape(name)}</{tag}></td>{''.join(cells)}</tr>")
    return f"<table><tr><th>object</th>{head}</tr>\n" + "\n".join(rows) + "</table>"


def write_report(result: EvalResult, out_dir: str | os.PathLike,
                 samples_for_overlay: Sequence[tuple[BopSample, Sequence[PoseEstimate]]] = (),
                 objects: Sequence[ObjectModel] | None = None, title: str = "selfpose evaluation") -> Path:
    """Write ``report.html``, ``recall_curves.png``, ``per_object.png`` and one overlay PNG per (sample, its
    estimates) into ``out_dir``; returns the path of report.html. ``objects`` default to ``result.objects``."""
    import cv2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objects = result.objects if objects is None else objects
    figures = [plot_recall_curves(result, out / "recall_curves.png").name,
               plot_per_object(result, out / "per_object.png").name]
    overlays = []
    for sample, ests in samples_for_overlay:
        name = f"overlay_{sample.scene_id:06d}_{sample.im_id:06d}.png"
        img = draw_overlay(sample, ests, objects)
        if not cv2.imwrite(str(out / name), np.ascontiguousarray(img[:, :, ::-1])):
            log.warning("could not write overlay %s", out / name)
            continue
        overlays.append((name, sample.scene_id, sample.im_id))
    s = result.settings
    timing = (f", {result.time_per_image_s * 1000.0:.1f} ms per image" if result.time_per_image_s is not None else "")
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%;margin:4px}figure{display:inline-block;margin:4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{result.n_images} images{timing}. Recalls in percent; ADD / ADD-S / AD{{D|I}} correct below "
        f"{s.get('recall_threshold_diameters', 0.1):g} of the object diameter; targets are ground-truth instances "
        f"at least {100 * s.get('min_visib_fract', 0.1):g}% visible; a target without an estimate is a failure. "
        "re / te are means over detected targets (symmetry-aware).</p>",
        _html_table(result),
        "<h2>Recall curves and per-object recalls</h2>",
        *(f"<img src='{f}' alt='{f}'>" for f in figures),
    ]
    if overlays:
        parts.append("<h2>Pose overlays</h2><p>ground truth in green, estimates in magenta "
                     "(silhouette contour and 3D bounding box)</p>")
        parts += [f"<figure><img src='{n}' alt='{n}'><figcaption>scene {sc} image {im}</figcaption></figure>"
                  for n, sc, im in overlays]
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n")
    log.info("wrote evaluation report %s (%d figures, %d overlays)", path, len(figures), len(overlays))
    return path
