"""The simulation end to end: determinism per seed, the output layout, and reading it back."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import yaml

from selfpose_core.cli import simulate as simulate_cli
from selfpose_core.data.sim.generate import SimConfig, Simulator, simulate
from selfpose_core.errors import ConfigError

TINY = dict(width=160, height=120, fx=142.5, fy=142.5, frames=4, test_frames=2)


def _frame_bytes(seed: int, **kw) -> list[bytes]:
    sim = Simulator(SimConfig(seed=seed, **{**TINY, **kw}))
    out = []
    for traj in (sim.trajectories[0], sim.trajectories[2]):
        v = sim.render_view(traj, 1)
        out += [v.frame.rgb.tobytes(), v.frame.depth.tobytes(), v.frame.T_world_cam.tobytes(),
                np.stack(v.masks_visib).tobytes()]
    return out


def test_same_seed_same_bytes_different_seed_different():
    a, b, c = _frame_bytes(7), _frame_bytes(7), _frame_bytes(8)
    assert a == b
    assert all(x != y for x, y in zip(a[:3], c[:3]))


def test_frames_do_not_depend_on_the_number_of_frames():
    sim_a = Simulator(SimConfig(seed=1, **TINY))
    sim_b = Simulator(SimConfig(seed=1, **{**TINY, "test_frames": 3}))
    assert np.array_equal(sim_a.trajectories[0].T_world_cam, sim_b.trajectories[0].T_world_cam)
    va, vb = sim_a.render_view(sim_a.trajectories[0], 2), sim_b.render_view(sim_b.trajectories[0], 2)
    assert np.array_equal(va.frame.rgb, vb.frame.rgb)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "scene"
    cfg = SimConfig(seed=0, objects=["tin_can", "mug", "bowl"], **TINY)
    summary = simulate(out, cfg, progress=False)
    return out, cfg, summary


def test_output_layout(tiny_dataset):
    out, cfg, summary = tiny_dataset
    for name in ("objects.yaml", "models/tin_can.ply", "models/bowl.ply", "recording/metadata.yaml",
                 "test_recordings/test_low/metadata.yaml", "test_recordings/test_high/metadata.yaml",
                 "bop/models/models_info.json", "bop/train_loop/000001/scene_gt.json",
                 "bop/test/000003/scene_gt.json", "scene.yaml"):
        assert (out / name).exists(), name
    scene = yaml.safe_load((out / "scene.yaml").read_text())
    assert scene["seed"] == 0 and [o["name"] for o in scene["objects"]] == ["tin_can", "mug", "bowl"]
    train = scene["trajectories"][0]
    assert train["name"] == "train_loop" and 38.0 <= train["elevation_deg"][0] <= train["elevation_deg"][1] <= 41.0
    assert train["odometry_drift_final"]["translation_m"] > 0
    assert summary["trajectories"][1]["bop"] == {"split": "test", "scene_id": 1}


def test_objects_config_loads_untextured_closed_models(tiny_dataset):
    from selfpose_core.mesh.objects_config import load_objects_config

    out, _, _ = tiny_dataset
    models = load_objects_config(out / "objects.yaml")
    assert [m.name for m in models] == ["tin_can", "mug", "bowl"] and [m.obj_id for m in models] == [1, 2, 3]
    assert all(m.texture is None and m.vertex_colors is None for m in models)
    assert models[2].symmetry.continuous and not models[1].symmetry.is_symmetric
    assert 0.1 < models[0].diameter < 0.14  # metres


def test_recording_reads_back_with_drifting_poses(tiny_dataset):
    from selfpose_core.data.bop import BopDataset
    from selfpose_core.data.recording import Recording

    out, cfg, _ = tiny_dataset
    with Recording(out / "recording") as rec:
        frames = list(rec)
    assert len(frames) == cfg.frames
    assert frames[0].rgb.shape == (120, 160, 3) and frames[0].depth.shape == (120, 160)
    bop = BopDataset(out / "bop", "train_loop")
    samples = list(bop.samples(1))
    assert len(samples) == cfg.frames
    for f, s in zip(frames, samples):
        assert f.stamp_ns == s.frame.stamp_ns
        assert np.array_equal(f.rgb, s.frame.rgb)  # same real-domain image in both copies
        assert np.allclose(f.depth, s.frame.depth, atol=1e-6)
    # the recording holds odometry, BOP the true camera poses: equal at the start, apart at the end
    assert np.allclose(frames[0].T_world_cam, samples[0].frame.T_world_cam, atol=1e-6)
    assert not np.allclose(frames[-1].T_world_cam[:3, 3], samples[-1].frame.T_world_cam[:3, 3], atol=1e-4)
    gt = samples[0].gt
    assert {g.obj_id for g in gt} <= {1, 2, 3} and all(0.0 <= g.visib_fract <= 1.0 for g in gt)


def test_bop_test_split_has_true_poses_matching_test_recordings(tiny_dataset):
    from selfpose_core.data.bop import BopDataset
    from selfpose_core.data.recording import Recording

    out, cfg, _ = tiny_dataset
    bop = BopDataset(out / "bop", "test")
    assert sorted(bop.scene_ids) == [1, 2, 3]
    with Recording(out / "test_recordings" / "test_mid") as rec:
        frames = list(rec)
    samples = list(bop.samples(2))
    assert len(frames) == len(samples) == cfg.test_frames
    for f, s in zip(frames, samples):
        assert np.allclose(f.T_world_cam, s.frame.T_world_cam, atol=1e-6)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    simulate_cli.register(sub)
    args = parser.parse_args(["simulate"] + argv)
    return args.func(args)


def test_cli_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        _run_cli(["--out", str(tmp_path), "--frames", "1", "--test-frames", "0"])
    assert (tmp_path / "keep.txt").exists()


def test_cli_options_and_preview(tmp_path):
    png = tmp_path / "p.png"
    assert _run_cli(["--preview", str(png), "--width", "80", "--height", "60", "--objects", "2", "--frames", "2"]) == 0
    import cv2

    img = cv2.imread(str(png))
    assert img.shape == (60, 2 * 80 + 8, 3)
    with pytest.raises(ConfigError, match="teapot"):
        _run_cli(["--out", str(tmp_path / "x"), "--objects", "mug,teapot"])
    with pytest.raises(ConfigError, match="--out"):
        _run_cli([])


def test_jpeg_recording_without_depth(tmp_path):
    from selfpose_core.data.bop import BopDataset
    from selfpose_core.data.recording import Recording

    cfg = SimConfig(seed=2, objects=["cereal_box"], width=80, height=60, fx=71.25, fy=71.25, frames=2,
                    test_frames=0, depth=False, image_format="jpeg")
    summary = simulate(tmp_path / "s", cfg, progress=False)
    assert [t["name"] for t in summary["trajectories"]] == ["train_loop"]
    with Recording(tmp_path / "s" / "recording") as rec:
        frames = list(rec)
    assert len(frames) == 2 and frames[0].depth is None and frames[0].rgb.shape == (60, 80, 3)
    sample = next(iter(BopDataset(tmp_path / "s" / "bop", "train_loop").samples(1)))
    assert sample.frame.depth is None
    # JPEG in the bag is lossy with respect to the (lossless PNG) BOP copy, but close
    assert np.abs(frames[0].rgb.astype(int) - sample.frame.rgb.astype(int)).mean() < 8


def test_relative_output_directory_gives_a_loadable_objects_config(tmp_path, monkeypatch):
    from selfpose_core.mesh.objects_config import load_objects_config

    monkeypatch.chdir(tmp_path)
    cfg = SimConfig(seed=3, objects=["mug"], width=80, height=60, fx=71.25, fy=71.25, frames=1, test_frames=0)
    simulate("runs/sim", cfg, progress=False)
    assert yaml.safe_load((tmp_path / "runs/sim/objects.yaml").read_text())["objects"][0]["mesh"] == "models/mug.ply"
    monkeypatch.chdir(tmp_path / "runs")  # the config is read relative to its own folder, from anywhere
    assert [m.name for m in load_objects_config("sim/objects.yaml")] == ["mug"]


def test_cli_difficulty(tmp_path, capsys):
    from selfpose_core.data.sim.camera_effects import REALSENSE_DEPTH

    with pytest.raises(SystemExit):
        _run_cli(["--out", str(tmp_path / "x"), "--difficulty", "extreme"])
    assert "argument --difficulty: invalid choice: 'extreme' (choose from" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    simulate_cli.register(parser.add_subparsers())
    config = simulate_cli.config_from_args(parser.parse_args(["simulate", "--difficulty", "hard"]))
    assert config.difficulty == "hard" and config.depth_effects == REALSENSE_DEPTH
