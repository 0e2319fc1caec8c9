"""`selfpose inspect`: summary, coverage and contact sheet; one-line errors for bad bags."""
from __future__ import annotations

import numpy as np
import pytest

from selfpose_core.cli.inspect import view_angles
from selfpose_core.geometry.projection import optical_axes_center
from selfpose_core.cli.main import main
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.types import CameraIntrinsics, Frame

CENTER = np.array([0.3, -0.2, 0.75])


def _look_at(eye, target):
    """T_world_cam of an optical-frame camera at ``eye`` looking at ``target`` (world z up)."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = eye
    return T


def _circle(n=12, radius=1.5, height=0.6):
    az = np.linspace(0, 2 * np.pi, n, endpoint=False) + np.pi / n  # mid-sector, away from histogram edges
    eyes = CENTER + np.stack([radius * np.cos(az), radius * np.sin(az), np.full(n, height)], axis=1)
    return np.stack([_look_at(e, CENTER) for e in eyes]), az


def test_center_and_angles_of_a_circle():
    T, az = _circle()
    np.testing.assert_allclose(optical_axes_center(T), CENTER, atol=1e-9)
    a, e = view_angles(T, CENTER)
    np.testing.assert_allclose(np.mod(a, 2 * np.pi), az, atol=1e-9)
    np.testing.assert_allclose(e, np.arctan2(0.6, 1.5), atol=1e-9)


@pytest.fixture
def bag(tmp_path, rng):
    K = CameraIntrinsics(40.0, 40.0, 19.5, 14.5, 40, 30)
    T, _ = _circle()
    with RecordingWriter(tmp_path / "bag") as w:
        for i, Ti in enumerate(T):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), K=K,
                                stamp_ns=10**18 + i * 10**8, T_world_cam=Ti))
    return tmp_path / "bag"


def test_inspect_prints_summary_and_writes_png(bag, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["inspect", str(bag), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "/selfpose/color/image_raw" in text and "sensor_msgs/msg/Image" in text
    assert "frames: 12" in text and "rate 10.00 Hz" in text
    assert "camera poses (world <- camera): 12 of 12" in text
    assert "azimuth sectors covered: 12/12" in text
    assert "scene centre 0.300, -0.200, 0.750;" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_inspect_corrupt_bag_is_one_line_exit_2(bag, capsys):
    next(bag.glob("*.mcap")).write_bytes(b"garbage" * 100)
    assert main(["inspect", str(bag)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfpose inspect: error:") and str(bag) in err[0]


def test_inspect_bad_center_is_a_config_error(bag, capsys):
    assert main(["inspect", str(bag), "--center", "1,2"]) == 2
    assert "--center" in capsys.readouterr().err
