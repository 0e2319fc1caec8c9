"""Pre-training configuration and a tiny end-to-end run through the CLI (bundle written, loadable, resumable)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from selfpose_core.cli.main import main
from selfpose_core.errors import ConfigError
from selfpose_core.estimate.estimator import PoseEstimator
from selfpose_core.models.pretrain import load_pretrain_config
from selfpose_core.models.scalar_log import read_scalars
from selfpose_core.types import CameraIntrinsics, Frame


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_config_defaults_overrides_and_errors(tmp_path):
    cfg = load_pretrain_config(None, {"trainer.steps": 7, "synthetic.size_px": [10, 20]})
    assert cfg.trainer.steps == 7 and cfg.trainer.lr == 2e-3 and cfg.synthetic.size_px == (10.0, 20.0)
    repo_cfg = load_pretrain_config("config/pretrain.yaml")
    assert repo_cfg.trainer.steps == load_pretrain_config().trainer.steps
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pretrain": {"trainer": {"stepz": 3}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: pretrain.trainer: unknown key 'stepz'"):
        load_pretrain_config(bad)
    with pytest.raises(ConfigError, match="pose_net"):
        load_pretrain_config(None, {"pose_net": "transformer"})
    with pytest.raises(ConfigError, match=r"crop_batch must be a number \(int\), got .many."):
        load_pretrain_config(None, {"crop_batch": "many"})


@pytest.mark.parametrize("kind", ["keypoint", "correspondence"])
def test_pretrain_cli_writes_a_working_bundle(objects_dir, tmp_path, kind):
    out = tmp_path / "model"
    tiny = ["--set", "pose_backbone={widths: [8, 8, 16], out_stride: 4}", "--set", "crop_batch=4",
            "--set", "scene_batch=2", "--set", "detector.backbone={widths: [8, 8, 16], out_stride: 4}",
            "--set", "trainer.log_every=1", "--set", "trainer.checkpoint_every=1", "--set", "trainer.warmup_steps=1",
            "--set", "offset_warmup_steps=1"]
    args = ["pretrain", "--objects", str(objects_dir / "objects.yaml"), "--out", str(out), "--pose-net", kind,
            "--steps", "2", "--workers", "0", "--no-progress", "--camera", "500,500,159.5,119.5,320,240"] + tiny
    assert main(args) == 0
    assert main(args[:args.index("2")] + ["3"] + args[args.index("2") + 1:] + ["--resume"]) == 0
    tags = [t for f in (out / "train" / "logs").glob("events.*") for t in read_scalars(f)]
    steps = sorted({s for s, tag, _ in tags if tag == "pretrain/loss"})
    assert steps == [1, 2, 3]
    spec = yaml.safe_load((out / "bundle.yaml").read_text())
    assert spec["pose_net"]["kind"] == kind and spec["image_size"] == [320, 240]
    assert [o["name"] for o in spec["objects"]] == ["obj0", "obj1"]
    est = PoseEstimator(out)
    K = CameraIntrinsics(500.0, 500.0, 159.5, 119.5, 320, 240)
    poses = est.estimate(Frame(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8), K))
    assert isinstance(poses, list)
    assert main(["pretrain", "--objects", str(tmp_path / "missing.yaml"), "--out", str(out)]) == 2
