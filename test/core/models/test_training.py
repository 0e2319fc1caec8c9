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


def test_bundle_carries_the_learned_surface_colours_and_refuses_broken_ones(tmp_path):
    from selfpose_core.models.appearance import NUM_BINS, AppearanceModel
    from selfpose_core.models.surface_colours import SurfaceColours

    rng = np.random.default_rng(0)
    surface = SurfaceColours(rng.normal(size=(1, 50, 3)), rng.normal(size=(1, 50, 3)), rng.normal(size=(1, 50, 3)),
                             rng.integers(0, 5, (1, 50)).astype(float), np.array([0.6]))
    b = ModelBundle.create(_spec())
    b.appearance = AppearanceModel(np.full((1, NUM_BINS), 1.0 / NUM_BINS), surface)
    path = b.save(tmp_path / "m")
    back = ModelBundle.load(path).appearance.surface
    for name in ("points", "normals", "colours", "counts", "agreement"):
        assert np.allclose(getattr(back, name), getattr(surface, name), atol=1e-6)
    weights = torch.load(path / "weights.pt", weights_only=True)
    del weights["surface_colours"]["agreement"]
    torch.save(weights, path / "weights.pt")
    with pytest.raises(ModelError, match="surface_colours"):
        ModelBundle.load(path)
    weights["surface_colours"]["agreement"] = torch.tensor([2.0])
    torch.save(weights, path / "weights.pt")
    with pytest.raises(ModelError, match="agreement outside"):
        ModelBundle.load(path)


# --------------------------------------------------------------------------------------------- #17: validation
def _edit_bundle(path, edit):
    raw = yaml.safe_load((path / "bundle.yaml").read_text())
    edit(raw)
    (path / "bundle.yaml").write_text(yaml.safe_dump(raw))


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["objects"][0].update(diameter=float("nan")), r"objects\[0\]\.diameter must be a number in .*got nan"),
    (lambda r: r["objects"][0]["keypoints"][2].__setitem__(1, float("inf")), r"objects\[0\]\.keypoints holds NaN/inf"),
    (lambda r: r.update(image_size="640x480"), r"image_size must be \[width, height\], got '640x480'"),
    (lambda r: r.update(image_size=[640, -1]), r"image_size\[1\] must be an integer in 1\.\.65535, got -1"),
    (lambda r: r["provenance"].update(stages="pretrain"), r"provenance\.stages must be a list of mappings"),
    (lambda r: r["provenance"].update(stages=[1, 2]), r"provenance\.stages must be a list of mappings"),
    (lambda r: r.update(provenance=[1]), r"provenance must be a mapping, got \[1\]"),
    (lambda r: r["pose_net"].update(crop_size=0), r"pose_net\.crop_size must be an integer in 16\.\.1024, got 0"),
    (lambda r: r["detector"].update(input_width=100000), r"detector\.input_width must be an integer in 16\.\.4096"),
    (lambda r: r["pose_net"].update(widths=[4096, 4096, 4096, 4096]),
     r"have \d+ parameters, more than the 50000000 selfpose loads \(\d+\.\d GiB of float32\)"),
    (lambda r: r["detector"].update(widths=[8] * 100), r"detector\.widths must be a list of 2\.\.8 channel counts"),
    (lambda r: r["objects"][0].update(obj_id=2 ** 31), r"objects\[0\]\.obj_id must be an integer in 1\.\.2147483647"),
    (lambda r: r["objects"][0].update(name="x" * 10 ** 6), r"objects\[0\]\.name must be a non-empty string, got 'x+"),
])
def test_bundle_values_are_validated_with_one_line_naming_the_key(tmp_path, edit, match):
    path = ModelBundle.create(_spec()).save(tmp_path / "m")
    _edit_bundle(path, edit)
    with pytest.raises(ModelError, match=match) as info:
        ModelBundle.load(path)
    assert str(path / "bundle.yaml") in str(info.value) and len(str(info.value)) < 400


def test_bundle_yaml_limits_and_nan_weights(tmp_path):
    path = ModelBundle.create(_spec()).save(tmp_path / "m")
    text = (path / "bundle.yaml").read_text()
    (path / "bundle.yaml").write_text(text + "format_version: 1\n")
    with pytest.raises(ModelError, match=r"bundle.yaml:\d+:1: not valid YAML: duplicate key 'format_version'"):
        ModelBundle.load(path)
    (path / "bundle.yaml").write_text(text)
    weights = torch.load(path / "weights.pt", weights_only=True)
    name = next(k for k, v in weights["pose_net"].items() if v.is_floating_point())
    weights["pose_net"][name][0] = float("nan")
    torch.save(weights, path / "weights.pt")
    with pytest.raises(ModelError, match=rf"weights.pt: 'pose_net' tensor '{name}' holds NaN/inf values"):
        ModelBundle.load(path)
    torch.save([1, 2], path / "weights.pt")
    with pytest.raises(ModelError, match=r"weights.pt: must hold a mapping of state dicts, got list"):
        ModelBundle.load(path)


def test_absurd_widths_are_refused_without_allocating(tmp_path):
    path = ModelBundle.create(_spec()).save(tmp_path / "m")
    _edit_bundle(path, lambda r: r["pose_net"].update(widths=[4096] * 8, out_stride=2))  # about 1.4 TB before
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelError, match="parameters, more than the 50000000"):
        ModelBundle.load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # kB


def test_unavailable_device_is_named(tmp_path, monkeypatch):
    path = ModelBundle.create(_spec()).save(tmp_path / "m")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match=r"device cuda asked for, but CUDA is not available on this machine"):
        ModelBundle.load(path, device="cuda")
    with pytest.raises(ModelError, match=r"device 'gpu0' is not a torch device"):
        ModelBundle.load(path, device="gpu0")


def _checkpointed(tmp_path, steps=20):
    torch.manual_seed(1)
    tr = Trainer({"m": torch.nn.Linear(2, 1)}, tmp_path / "run", TrainerConfig(steps=steps, progress=False))
    tr.step = 10
    tr.save_checkpoint()
    return tr


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("state, match", [
    (b"", r"checkpoint.pt: the file is empty"),
    ([1, 2], r"checkpoint.pt: it must hold a mapping \(step, modules, optimizer, \.\.\.\), got list"),
    ("drop-step", r"checkpoint.pt: key 'step' is missing"),
    ("step=ten", r"checkpoint.pt: key 'step' must be an integer, got 'ten'"),
    ("step=1.5", r"checkpoint.pt: key 'step' must be an integer, got 1\.5"),
    ("step=1000000000", r"checkpoint.pt: key 'step' is 1000000000, outside 0\.\.20"),
    ("step=-1", r"checkpoint.pt: key 'step' is -1, outside 0\.\.20"),
    ("nan", r"checkpoint.pt: key 'modules.m.weight' holds NaN/inf values"),
    ("evil", r"checkpoint.pt: it cannot be loaded safely with torch.load\(weights_only=True\) \(UnpicklingError"),
])
def test_resume_refuses_bad_checkpoints_with_one_line(tmp_path, state, match):
    tr = _checkpointed(tmp_path)
    path = tr.checkpoint_path
    if isinstance(state, bytes):
        path.write_bytes(state)
    elif isinstance(state, list):
        torch.save(state, path)
    else:
        saved = torch.load(path, weights_only=True)
        if state == "drop-step":
            del saved["step"]
        elif state.startswith("step="):
            v = state[5:]
            saved["step"] = int(v) if v.lstrip("-").isdigit() else (float(v) if "." in v else v)
        elif state == "nan":
            saved["modules"]["m"]["weight"][:] = float("nan")
        else:
            saved["optimizer"] = _Evil()
        torch.save(saved, path)
    fresh = Trainer({"m": torch.nn.Linear(2, 1)}, tmp_path / "run", TrainerConfig(steps=20, progress=False))
    before = fresh.modules["m"].weight.detach().clone()
    with pytest.raises(ModelError, match=match) as info:
        fresh.load_checkpoint()
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert torch.equal(fresh.modules["m"].weight, before) and fresh.step == 0
