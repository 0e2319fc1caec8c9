"""Trainer (checkpoint/resume, scalars), TensorBoard event files and model bundles."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml

from selfpose_core.errors import ModelError
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.models.scalar_log import ScalarLog, crc32c, read_scalars
from selfpose_core.models.trainer import Trainer, TrainerConfig


def test_crc32c_and_event_roundtrip(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283
    sl = ScalarLog(tmp_path)
    sl.add(3, {"a/loss": 1.5, "lr": 0.25})
    sl.add(7, {"a/loss": 0.5})
    sl.close()
    assert read_scalars(sl.path) == [(3, "a/loss", 1.5), (3, "lr", 0.25), (7, "a/loss", 0.5)]
    assert (tmp_path / "scalars.csv").read_text().splitlines()[1] == "3,a/loss,1.5"


def _batches(seed):
    def make(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(seed * 1000 + step)
            x = torch.randn(16, 2, generator=g)
            yield x, x @ torch.tensor([2.0, -1.0]) + 0.5
            step += 1
    return make


def _fit(out, steps, resume=False, stop_at=None):
    torch.manual_seed(1)
    model = torch.nn.Linear(2, 1)
    cfg = TrainerConfig(steps=steps, lr=0.3, warmup_steps=2, log_every=5, checkpoint_every=5, progress=False)
    tr = Trainer({"m": model}, out, cfg)

    def step(b, s):
        if s == stop_at:
            raise KeyboardInterrupt
        return {"loss": ((model(b[0]).squeeze(-1) - b[1]) ** 2).mean()}

    last = tr.fit(_batches(0), step, resume=resume)
    return model, last, tr


def test_trainer_learns_logs_and_resumes_identically(tmp_path):
    full, last, _ = _fit(tmp_path / "full", 20)
    assert last["loss"] < 1.0  # starts near 5.3
    steps = [s for s, tag, _ in read_scalars(next((tmp_path / "full/logs").glob("events.*")))
             if tag == "train/loss"]
    assert steps == [5, 10, 15, 20]
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "part", 20, stop_at=12)
    resumed, _, tr = _fit(tmp_path / "part", 20, resume=True)
    assert tr.step == 20
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ModelError, match="no checkpoint"):
        _fit(tmp_path / "none", 5, resume=True)


def _spec(kind="keypoint"):
    obj = BundleObject("mug", 3, 0.12, np.random.default_rng(0).normal(size=(9, 3)) * 0.05, np.zeros(3),
                       np.full(3, 0.06))
    return BundleSpec([obj], "objects.yaml",
                      PoseNetSpec(kind, 32, BackboneConfig((8, 8, 16), 2)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 80, 60), (320, 240), {"command": "test"})


@pytest.mark.parametrize("kind", ["keypoint", "correspondence"])
def test_bundle_roundtrip(tmp_path, kind):
    b = ModelBundle.create(_spec(kind))
    b.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.spec.pose_net.kind == kind and loaded.spec.objects[0].obj_id == 3
    assert np.allclose(loaded.spec.objects[0].keypoints, b.spec.objects[0].keypoints, atol=1e-6)
    assert loaded.objects_config_path() == (tmp_path / "m" / "objects.yaml").resolve()
    x = torch.rand(1, 3, 32, 32)
    b.pose_net.eval()
    with torch.inference_mode():
        assert torch.equal(b.pose_net(x, torch.tensor([0]))["mask_logits"],
                           loaded.pose_net(x, torch.tensor([0]))["mask_logits"])


def test_bundle_bad_inputs(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ModelBundle.load(tmp_path / "missing")
    path = ModelBundle.create(_spec()).save(tmp_path / "m")
    raw = yaml.safe_load((path / "bundle.yaml").read_text())
    (path / "bundle.yaml").write_text(yaml.safe_dump({**raw, "format_version": 99}))
    with pytest.raises(ModelError, match="format_version 99"):
        ModelBundle.load(path)
    del raw["pose_net"]["kind"]
    (path / "bundle.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError, match="pose_net.kind"):
        ModelBundle.load(path)
    raw["pose_net"]["kind"] = "keypoint"
    raw["pose_net"]["widths"] = [8, 16, 16]
    (path / "bundle.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        ModelBundle.load(path)
    raw["pose_net"]["widths"] = [8, 8, 16]
    (path / "bundle.yaml").write_text(yaml.safe_dump(raw))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"detector": Evil()}, path / "weights.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ModelError, match="weights_only"):
        ModelBundle.load(path)
    (path / "weights.pt").unlink()
    with pytest.raises(ModelError, match="no weights.pt"):
        ModelBundle.load(path)


def test_bundle_carries_the_appearance_model_and_refuses_a_broken_one(tmp_path):
    from selfpose_core.models.appearance import NUM_BINS, AppearanceModel

    b = ModelBundle.create(_spec())
    hist = np.zeros((1, NUM_BINS))
    hist[0, 3] = 1.0
    b.appearance = AppearanceModel(hist)
    path = b.save(tmp_path / "m")
    assert np.array_equal(ModelBundle.load(path).appearance.histograms, hist)
    assert ModelBundle.load(ModelBundle.create(_spec()).save(tmp_path / "plain")).appearance is None
    weights = torch.load(path / "weights.pt", weights_only=True)
    weights["appearance"] = torch.full((1, NUM_BINS), float("nan"))
    torch.save(weights, path / "weights.pt")
    with pytest.raises(ModelError, match="weights.pt: appearance model: .*non-finite"):
        ModelBundle.load(path)
    weights["appearance"] = torch.zeros(2, NUM_BINS)  # one row per object
    torch.save(weights, path / "weights.pt")
    with pytest.raises(ModelError, match="one row per object"):
        ModelBundle.load(path)
