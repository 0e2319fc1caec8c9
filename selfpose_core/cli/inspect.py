"""`selfpose inspect BAG`: what a recording holds, how well its camera poses cover the scene, and a contact sheet.

Pose coverage is measured around the scene centre: the point the cameras' optical axes pass closest to (least
squares), or ``--center x,y,z``. Azimuth is measured about the world z axis (REP-103: z up), elevation above the
world xy plane, both from the centre to the camera.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from selfpose_core.cli.recording_options import add_topic_options, topics_from_args
from selfpose_core.data.recording import Recording
from selfpose_core.geometry.projection import optical_axes_center
from selfpose_core.errors import ConfigError, OutputError


def view_angles(T_world_cam: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth (N,) in (-pi, pi] about world z and elevation (N,) in [-pi/2, pi/2] of each camera seen from
    ``center`` (3,)."""
    v = np.asarray(T_world_cam, dtype=np.float64)[:, :3, 3] - np.asarray(center, dtype=np.float64)
    return np.arctan2(v[:, 1], v[:, 0]), np.arctan2(v[:, 2], np.hypot(v[:, 0], v[:, 1]))


def coverage_table(azimuth: np.ndarray, elevation: np.ndarray, az_bins: int = 12) -> list[str]:
    """Text lines: frame counts per azimuth sector and per 10-degree elevation band."""
    edges = np.linspace(-180.0, 180.0, az_bins + 1)
    counts, _ = np.histogram(np.degrees(azimuth), bins=edges)
    lines = ["azimuth sector (deg)  frames"]
    lines += [f"  [{lo:6.0f}, {hi:6.0f})  {n:6d}" for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    el = np.degrees(elevation)
    ebins = np.arange(10 * math.floor(el.min() / 10), 10 * math.floor(el.max() / 10) + 11, 10.0)
    ecounts, _ = np.histogram(el, bins=ebins)
    lines.append("elevation band (deg)  frames")
    lines += [f"  [{lo:6.0f}, {hi:6.0f})  {n:6d}" for lo, hi, n in zip(ebins[:-1], ebins[1:], ecounts)]
    filled = int((counts > 0).sum())
    lines.append(f"azimuth sectors covered: {filled}/{az_bins}; elevation {el.min():.1f} to {el.max():.1f} deg")
    return lines


def contact_sheet(rec: Recording, n_thumbs: int = 24, thumb_width: int = 200, cols: int = 6) -> np.ndarray:
    """RGB uint8 grid of ``n_thumbs`` evenly spaced frames, each labelled with its index and stamp."""
    idx = np.unique(np.linspace(0, len(rec) - 1, min(n_thumbs, len(rec))).round().astype(int))
    thumbs = []
    for i in idx:
        f = rec[int(i)]
        h, w = f.rgb.shape[:2]
        th = max(1, round(h * thumb_width / w))
        img = cv2.resize(f.rgb, (thumb_width, th), interpolation=cv2.INTER_AREA)
        label = np.full((18, thumb_width, 3), 255, np.uint8)
        cv2.putText(label, f"#{i}  t={f.stamp:.3f}s", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
        thumbs.append(np.concatenate([label, img], axis=0))
    th = max(t.shape[0] for t in thumbs)
    thumbs = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in thumbs]
    cols = min(cols, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    blank = np.full_like(thumbs[0], 255)
    thumbs += [blank] * (rows * cols - len(thumbs))
    pad = [np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in thumbs]
    return np.concatenate([np.concatenate(pad[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def write_sheet_png(path: Path, sheet: np.ndarray, azimuth: np.ndarray | None, elevation: np.ndarray | None,
                    title: str) -> None:
    """Save the contact sheet next to an azimuth/elevation coverage plot as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = sheet.shape[:2]
    fig = Figure(figsize=(w / 100 + 5.5, max(h / 100, 5.0) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, 2, width_ratios=[w / 100, 5.0])
    ax = fig.add_subplot(gs[0])
    ax.imshow(sheet)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    pax = fig.add_subplot(gs[1], projection="polar")
    if azimuth is not None and len(azimuth):
        sc = pax.scatter(azimuth, np.degrees(elevation), c=np.arange(len(azimuth)), cmap="viridis", s=12)
        fig.colorbar(sc, ax=pax, shrink=0.6, label="frame")
        lo = min(0.0, float(np.degrees(elevation).min()) - 5)
        pax.set_ylim(lo, 90)
    pax.set_title("camera azimuth (angle) / elevation deg (radius)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a recording: topics, frames, rate, pose coverage, contact sheet")
    p.add_argument("bag", type=Path, help="rosbag2 directory (MCAP or sqlite3)")
    p.add_argument("--out", type=Path, help="write a contact sheet + coverage plot PNG here")
    p.add_argument("--center", help="scene centre x,y,z in the world frame (default: where the optical axes meet)")
    p.add_argument("--thumbs", type=int, default=24, help="thumbnails on the contact sheet")
    add_topic_options(p)
    p.set_defaults(func=run)


def _parse_center(text: str) -> np.ndarray:
    try:
        c = np.array([float(x) for x in text.split(",")])
    except ValueError:
        c = np.zeros(0)
    if c.shape != (3,):
        raise ConfigError(f"--center must be three comma-separated numbers x,y,z, got {text!r}")
    return c


def run(args: argparse.Namespace) -> int:
    center = _parse_center(args.center) if args.center else None
    if args.thumbs < 1:
        raise ConfigError(f"--thumbs must be >= 1, got {args.thumbs}")
    with Recording(args.bag, topics_from_args(args), require_pose=False) as rec:
        s = rec.summary()
        print(f"recording {s.path}")
        width = max(len(t) for t in s.topics)
        for topic, (typ, count) in sorted(s.topics.items()):
            print(f"  {topic:<{width}}  {typ:<32} {count:7d}")
        print(f"frames: {s.frames}  image {s.image_size[0]}x{s.image_size[1]}  depth: {'yes' if s.has_depth else 'no'}"
              f"  duration {s.duration_s:.2f} s  rate {s.rate_hz:.2f} Hz")
        poses = rec.poses
        ok = np.isfinite(poses).all(axis=(1, 2))
        print(f"camera poses ({s.world_frame} <- {s.camera_frame or 'image frame'}): {int(ok.sum())} of {s.frames} "
              "frames")
        az = el = None
        if ok.any():
            if center is None:
                center = optical_axes_center(poses[ok])
            az, el = view_angles(poses[ok], center)
            dist = np.linalg.norm(poses[ok, :3, 3] - center, axis=1)
            print(f"scene centre {center[0]:.3f}, {center[1]:.3f}, {center[2]:.3f}; camera distance "
                  f"{dist.min():.2f}-{dist.max():.2f} m")
            for line in coverage_table(az, el):
                print(line)
        if args.out:
            sheet = contact_sheet(rec, n_thumbs=args.thumbs)
            try:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                write_sheet_png(args.out, sheet, az, el, f"{s.path}: {s.frames} frames, {s.rate_hz:.1f} Hz")
            except (OSError, ValueError) as exc:  # ValueError: matplotlib knows no such image format
                raise OutputError(f"--out {args.out}: cannot write the contact sheet: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from exc
            print(f"wrote {args.out}")
    return 0
