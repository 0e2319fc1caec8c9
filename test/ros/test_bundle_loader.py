"""A bundle loaded in a child process (`BundleLoader`) serves exactly as one loaded in the node's process; the
child's failures (a broken bundle, a bundle failing on the trial frame) come back as one-line `ModelError`s and the
slot keeps the old model; a load in progress ends when the node closes."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from selfpose_core.data.sim import catalog
from selfpose_core.errors import ModelError
from selfpose_core.estimate.publishing import publish_config_for_bundle
from selfpose_core.estimate.stream import load_estimator
from selfpose_core.geometry.se3 import invert
from selfpose_core.mesh.loading import save_mesh
from selfpose_core.mesh.objects_config import load_objects_config, write_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.detector import DetectorConfig
from selfpose_core.render.mesh import RenderMesh
from selfpose_core.render.renderer import render
from selfpose_core.types import CameraIntrinsics, Frame
from selfpose_ros.bundle_loader import BundleLoader
from selfpose_ros.model_reload import ModelSlot, Serving

K = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """(bundle path with random weights, a rendered RGB-D frame of its two objects standing on a table)."""
    folder = tmp_path_factory.mktemp("bundle")
    models = [o.cad_model(i + 1) for i, o in enumerate(catalog.make_targets(["mug", "cereal_box"],
                                                                            np.random.default_rng(3)))]
    entries = []
    for m in models:
        save_mesh(m, folder / f"{m.name}.ply")
        entries.append({"name": m.name, "mesh": str(folder / f"{m.name}.ply"), "obj_id": m.obj_id})
    write_objects_config(folder / "objects.yaml", entries)
    spec = BundleSpec([BundleObject.from_model(m) for m in load_objects_config(folder / "objects.yaml")],
                      "../objects.yaml", PoseNetSpec("correspondence", 64, BackboneConfig((8, 8, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 160, 120, 0.3), (K.width, K.height))
    torch.manual_seed(0)
    bundle = ModelBundle.create(spec).save(folder / "bundle")

    table = (np.array([[-0.6, -0.6, 0], [0.6, -0.6, 0], [0.6, 0.6, 0], [-0.6, 0.6, 0.0]]), np.array([[0, 1, 2], [0, 2, 3]]))
    parts = [table] + [(m.vertices + [x, 0.0, -m.vertices[:, 2].min()], m.faces) for m, x in zip(models, (-0.1, 0.1))]
    verts = np.concatenate([v for v, _ in parts])
    faces = np.concatenate([f + sum(len(v) for v, _ in parts[:i]) for i, (_, f) in enumerate(parts)])
    eye, z = np.array([0.0, -0.7, 0.5]), None
    z = -eye / np.linalg.norm(eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    T_world_cam = np.eye(4)
    T_world_cam[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    T_world_cam[:3, 3] = eye
    T = invert(T_world_cam)
    out = render(RenderMesh(torch.tensor(verts), torch.tensor(faces)), torch.tensor(T[None, :3, :3]),
                 torch.tensor(T[None, :3, 3]), torch.tensor(K.K[None]), (K.height, K.width),
                 coords=False, attributes=False, silhouette=False, visibility=False)
    face = out.face_ids[0].numpy()
    rgb = np.where((face >= 2)[..., None], np.uint8(200), np.uint8(90)).astype(np.uint8).repeat(3, axis=2)
    depth = np.where(face >= 0, out.depth[0].numpy(), 0.0).astype(np.float32)
    return str(bundle), Frame(rgb=rgb, K=K, depth=depth, T_world_cam=T_world_cam, stamp_ns=7, frame_id="cam")


@pytest.mark.slow  # 10 s: a child process imports torch, loads and tries the bundle
def test_a_bundle_loaded_in_a_child_estimates_as_one_loaded_here(scene):
    bundle, frame = scene
    here = load_estimator(bundle).estimate(frame)
    loader = BundleLoader()
    child = loader(bundle, trial_frame=frame, publish_options={"markers": False, "tf_prefix": "t/"})
    assert loader.children == 1 and loader._proc is None  # the child has ended
    config = publish_config_for_bundle(bundle, markers=False, tf_prefix="t/")
    got = child.publish_config
    assert (got.markers, got.tf_prefix, got.mesh_resources) == (False, "t/", config.mesh_resources)
    assert got.mesh_resources and set(got.object_sizes) == set(config.object_sizes)
    for name, size in config.object_sizes.items():
        np.testing.assert_array_equal(got.object_sizes[name], size)
    there = child.estimator.estimate(frame)
    assert here, "the scene should give estimates (poses from the depth)"
    assert [(e.object_name, e.object_id) for e in there] == [(e.object_name, e.object_id) for e in here]
    for a, b in zip(there, here):
        np.testing.assert_allclose(a.T_cam_obj, b.T_cam_obj, atol=1e-9)
        assert a.score == pytest.approx(b.score)


def test_a_broken_bundle_is_one_line_model_error(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.yaml").write_text("format_version: 1\nobjects: [\n")
    loader = BundleLoader()
    with pytest.raises(ModelError) as err:
        loader(str(broken))
    assert str(broken) in str(err.value) and "\n" not in str(err.value) and "Traceback" not in str(err.value)


@pytest.mark.slow  # 10 s: the child loads the bundle, then fails on the frame
def test_a_bundle_failing_on_the_trial_frame_is_refused_and_the_old_model_serves_on(scene):
    bundle, _ = scene
    loader = BundleLoader()
    errors = []  # a bundle that loads but cannot estimate the trial frame (here: no Frame at all) is refused
    slot = ModelSlot(Serving("old", "old estimator", None),
                     lambda p: Serving(p, loader(p, trial_frame="no frame"), None), on_done=lambda p, e: errors.append(e))
    assert slot.request(bundle) == "" and slot.wait(120)
    assert slot.current.path == "old" and slot.swaps == 0
    assert errors[0].startswith(f"model {bundle} loads but fails on the newest frame: AttributeError")


def test_close_ends_a_load_in_progress(tmp_path):
    bundle = str(tmp_path)
    loader = BundleLoader()
    result = []

    def load():
        try:
            result.append(loader(bundle))
        except ModelError as exc:
            result.append(exc)

    thread = threading.Thread(target=load)
    thread.start()
    end = time.monotonic() + 10
    while loader._proc is None and time.monotonic() < end:
        time.sleep(0.01)
    pid = loader._proc.pid
    loader.close()
    thread.join(30)
    assert isinstance(result[0], ModelError) and "ended with -9" in str(result[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (reaped by communicate)
    with pytest.raises(ModelError, match="shutting down"):
        loader(bundle)
