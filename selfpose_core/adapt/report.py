"""report.html of an adaptation run: per stage its losses, details, held-out accuracy (with --eval-gt), consensus
error per object, plots and pose overlays on recording frames (no ground truth is needed for the overlays)."""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import yaml

from selfpose_core.adapt.stage import StageResult
from selfpose_core.data.crops import project_points
from selfpose_core.errors import SelfposeError
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.types import ObjectModel

if TYPE_CHECKING:
    from selfpose_core.adapt.config import AdaptConfig
    from selfpose_core.adapt.context import AdaptContext

log = logging.getLogger(__name__)

_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]
_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230)]


def draw_poses(rgb: np.ndarray, K: np.ndarray, objects: list[ObjectModel],
               poses: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """``rgb`` (H, W, 3) with the 3D bounding box of ``objects[k]`` drawn at each (k, T_cam_obj) of ``poses``."""
    img = rgb.copy()
    for k, T in poses:
        lo, hi = objects[k].bbox
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        if T[2, 3] <= 0:
            continue
        uv = project_points(K, T, corners)
        colour = _COLOURS[k % len(_COLOURS)]
        for a, b in _EDGES:
            cv2.line(img, tuple(int(v) for v in uv[a]), tuple(int(v) for v in uv[b]), colour, 2, cv2.LINE_AA)
        cv2.putText(img, objects[k].name, tuple(int(v) for v in uv.min(0)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    return img


def _overlays(ctx: AdaptContext, stage: str, bundle: ModelBundle, folder: Path, n: int = 3) -> list[Path]:
    """Estimates of ``bundle`` on ``n`` recording frames spread over the loop, beside the pseudo labels of the same
    frames when there are any."""
    rec = ctx.recording
    idx = np.linspace(0, len(rec) - 1, n + 2).round().astype(int)[1:-1]
    est = PoseEstimator(bundle.path or folder, ctx.device, objects_config=ctx.objects_config,
                        config=EstimatorConfig(return_masks=False), bundle=bundle)
    names = {m.name: k for k, m in enumerate(ctx.objects)}
    paths = []
    for i in idx:
        frame = rec[int(i)]
        poses = [(names[e.object_name], e.T_cam_obj) for e in est.estimate(frame) if e.object_name in names]
        img = draw_poses(frame.rgb, frame.K.K, ctx.objects, poses)
        if ctx.pseudo is not None:
            pseudo = [(p.obj_index, p.T_cam_obj) for p in ctx.pseudo.for_frame(int(i))]
            img = np.concatenate([img, draw_poses(frame.rgb, frame.K.K, ctx.objects, pseudo)], axis=1)
        p = folder / f"{stage}_frame{int(i):05d}.jpg"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        paths.append(p)
    return paths


def _table(rows: dict[str, dict[str, Any]], title: str) -> str:
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    if not cols:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for name, r in rows.items():
        cells = "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols)
        body += f"<tr><th>{html.escape(name)}</th>{cells}</tr>"
    return f"<h3>{html.escape(title)}</h3><table><tr><th></th>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def write_adapt_report(path: Path, config: AdaptConfig, results: dict[str, StageResult],
                       ctx: AdaptContext) -> Path:
    """Write ``path`` (report.html) and its images into ``path.parent / report_files``."""
    folder = path.parent / "report_files"
    folder.mkdir(parents=True, exist_ok=True)
    parts = ["<html><head><meta charset='utf-8'><title>selfpose adapt</title><style>body{font-family:sans-serif;"
             "margin:2em} table{border-collapse:collapse;margin:0.5em 0} td,th{border:1px solid #bbb;padding:3px 8px;"
             "text-align:right} img{max-width:100%;margin:4px 0}</style></head><body>",
             "<h1>selfpose adapt</h1>",
             f"<p>recording <code>{html.escape(str(ctx.recording.path))}</code>, {len(ctx.recording)} frames; "
             f"stages: {html.escape(', '.join(config.stages))}; config {html.escape(config.source)}</p>"]
    held = {k: r.metrics.get("mean", {}) for k, r in results.items() if r.metrics.get("mean")}
    if held:
        parts.append(_table(held, "Held-out accuracy after each stage (mean over objects)"))
    by_scene = {k: {f"scene {sc}": v for sc, v in r.metrics["ad_di_recall_by_scene"].items()}
                for k, r in results.items() if r.metrics.get("ad_di_recall_by_scene")}
    if by_scene:
        parts.append(_table(by_scene, "AD{D|I}@0.1d per held-out scene (trajectory)"))
    for name, r in results.items():
        if name == "pretrained":
            continue
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if r.losses:
            parts.append(_table({"final": r.losses}, "losses (last logging window)"))
        cons = r.metrics.get("consensus")
        if cons:
            parts.append(_table(cons, "consensus error per object (against --eval-gt)"))
        if r.metrics.get("cameras"):
            parts.append(_table({"drift-corrected cameras": r.metrics["cameras"]},
                                "camera pose error (against --eval-gt)"))
        per_obj = r.metrics.get("per_object")
        if per_obj:
            parts.append(_table(per_obj, "held-out accuracy per object"))
        parts.append(f"<pre>{html.escape(yaml.safe_dump(r.details, sort_keys=False, width=120))}</pre>")
        stage_bundle = ctx.work_dir / name / "bundle"
        if (stage_bundle / "bundle.yaml").is_file():
            try:
                imgs = _overlays(ctx, name, ModelBundle.load(stage_bundle, device=ctx.device), folder)
                parts.append("<p>pose overlays after this stage (left: estimates, right: pseudo labels)</p>")
                parts += [f"<img src='report_files/{p.name}' width='32%'>" for p in imgs]
            except (OSError, ValueError, RuntimeError, SelfposeError) as exc:
                log.warning("adapt report: no overlays for %s (%s)", name, exc)
        for key, p in r.artefacts.items():
            if Path(p).suffix.lower() in (".png", ".jpg") and Path(p).is_file():
                rel = Path(p).resolve().relative_to(path.parent.resolve()) if \
                    Path(p).resolve().is_relative_to(path.parent.resolve()) else Path(p).resolve()
                parts.append(f"<p>{html.escape(key)}</p><img src='{html.escape(str(rel))}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    log.info("wrote %s", path)
    return path
