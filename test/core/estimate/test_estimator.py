"""PoseEstimator end to end with oracle networks (so that crop geometry, intrinsics and PnP are what is tested),
depth refinement, and bad input: missing/incompatible bundles, objects missing from objects.yaml, empty images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from selfpose_core.data.crops import ObjectGeometry, render_targets
from selfpose_core.errors import ConfigError, ModelError
from selfpose_core.estimate.depth_refine import DepthRefiner
from selfpose_core.estimate.dual_scale_views import DualScaleViews
from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
from selfpose_core.mesh.loading import object_model_from_arrays, save_mesh
from selfpose_core.mesh.objects_config import load_objects_config, write_objects_config
from selfpose_core.models.backbones import BackboneConfig
from selfpose_core.models.bundle import BundleObject, BundleSpec, ModelBundle, PoseNetSpec
from selfpose_core.models.correspondence_net import CorrespondenceNet
from selfpose_core.models.detector import SIZE_UNIT, Detector, DetectorConfig
from selfpose_core.models.keypoint_net import KeypointNet
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
LO, SPAN = 40.0, 200.0  # colour code: rgb = LO + SPAN * (normalised object coordinate + 1) / 2


@pytest.fixture(scope="module")
def objects_dir(tmp_path_factory):
    """An asymmetric box with a cut corner (obj0) and a capsule (obj1), meshes + objects.yaml."""
    d = tmp_path_factory.mktemp("objects")
    box = trimesh.creation.box((0.08, 0.05, 0.12))
    v = np.asarray(box.vertices).copy()
    v[np.argmax(v.sum(axis=1))] *= 0.4
    entries = []
    for i, (verts, faces) in enumerate([(v, box.faces), (lambda c: (c.vertices, c.faces))(
            trimesh.creation.capsule(0.06, 0.025, count=[8, 8]))]):
        m = object_model_from_arrays(f"obj{i}", np.asarray(verts), np.asarray(faces), obj_id=i + 1)
        save_mesh(m, d / f"obj{i}.ply")
        entries.append({"name": f"obj{i}", "mesh": str(d / f"obj{i}.ply"), "obj_id": i + 1})
    write_objects_config(d / "objects.yaml", entries)
    return d


@pytest.fixture(scope="module")
def objects(objects_dir):
    return load_objects_config(objects_dir / "objects.yaml")


class OracleDetector(Detector):
    """Finds the coloured pixels of the (single, class 0) object and reports their box with the score
    sigmoid(``peak_logit``)."""

    peak_logit = 10.0

    def forward(self, image):
        b, _, h, w = image.shape
        s = self.stride
        fg = image.sum(1) > 0.05
        hs, ws = -(-h // s), -(-w // s)
        heat = torch.full((b, self.num_objects, hs, ws), -10.0)
        offset = torch.zeros(b, self.num_objects, 2, hs, ws)
        log_size = torch.zeros(b, self.num_objects, 2, hs, ws)
        for i in range(b):
            ys, xs = torch.nonzero(fg[i], as_tuple=True)
            if len(xs) == 0:
                continue
            x0, x1, y0, y1 = xs.min().item(), xs.max().item() + 1, ys.min().item(), ys.max().item() + 1
            cx, cy = (x0 + x1) / 2 / s, (y0 + y1) / 2 / s
            heat[i, 0, int(cy), int(cx)] = self.peak_logit
            offset[i, 0, 0], offset[i, 0, 1] = cx - int(cx), cy - int(cy)
            log_size[i, 0, 0] = float(np.log((x1 - x0) / SIZE_UNIT))
            log_size[i, 0, 1] = float(np.log((y1 - y0) / SIZE_UNIT))
        return {"heatmap": heat, "offset": offset, "log_size": log_size,
                "mask_logits": torch.zeros(b, self.num_objects, hs, ws)}


class OracleCorrespondences(CorrespondenceNet):
    """Reads the object coordinates from the colour code of the crop. With ``corrupt_every`` = n, every n-th cell
    of the object (by row + column) gets coordinates moved by 0.6 half-extents in x and y (outliers); ``counts``
    keeps (object cells, corrupted cells) of the last crop."""

    corrupt_every = 0
    counts = (0, 0)

    def forward(self, image, obj_index):
        s = self.config.backbone.out_stride
        inside = -F.max_pool2d(-(image.sum(1, keepdim=True) > 0.05).float(), s)[:, 0]  # whole cell on the object
        coords = ((F.avg_pool2d(image, s) * 255.0 - LO) / SPAN * 2 - 1).clamp(-1, 1)
        if self.corrupt_every:
            h = coords.shape[-1]
            rows, cols = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
            bad = ((rows + cols) % self.corrupt_every == 0) & (inside[-1] > 0)
            coords[-1, :2, bad] += 0.6
            self.counts = (int((inside[-1] > 0).sum()), int(bad.sum()))
        return {"coords": coords, "mask_logits": inside * 20 - 10, "error": torch.zeros_like(inside)}


class OracleKeypoints(KeypointNet):
    """Every cell votes for the true keypoints of the known pose ``T`` seen with the full-frame intrinsics ``K``.

    Where the crop lies in the frame is not taken from the estimator: it is fitted to the crop itself, from the
    colour-coded object coordinates of its interior pixels (their projection by ``K`` and ``T`` against their crop
    pixel), so the estimator's crop arithmetic and intrinsics are what the test checks. Mask logits are
    ``mask_logit`` on cells fully on the object, -10 elsewhere.
    """

    def __init__(self, num_objects, config, objects, mask_logit=10.0):
        super().__init__(num_objects, config)
        self.objects, self.mask_logit = objects, mask_logit
        self.K, self.T = None, None

    def _project(self, X):
        x = X @ self.T[:3, :3].T + self.T[:3, 3]
        uvw = x @ self.K.K.T
        return uvw[:, :2] / uvw[:, 2:]

    def forward(self, image, obj_index):
        b, _, S, _ = image.shape
        s = self.config.backbone.out_stride
        on = image.sum(1, keepdim=True) > 0.05
        inside = -F.max_pool2d(-on.float(), s)[:, 0]
        interior = (-F.max_pool2d(-on.float(), 3, 1, 1)[:, 0] > 0).numpy()  # no pixel blended with the background
        votes = torch.zeros(b, 9, 2, S // s, S // s, dtype=torch.float64)
        for i in range(b):
            geom = ObjectGeometry.from_model(self.objects[int(obj_index[i])])
            ys, xs = np.nonzero(interior[i])
            code = image[i].permute(1, 2, 0).double().numpy()[ys, xs] * 255.0
            uv = self._project(((code - LO) / SPAN * 2 - 1) * geom.coord_half_extent + geom.coord_centre)
            ax, bx = np.polyfit(uv[:, 0], xs, 1)
            ay, by = np.polyfit(uv[:, 1], ys, 1)
            kp = self._project(self.objects[int(obj_index[i])].keypoints)
            votes[i] = torch.as_tensor(np.stack([ax * kp[:, 0] + bx, ay * kp[:, 1] + by], 1))[..., None, None]
        return {"mask_logits": torch.where(inside > 0, self.mask_logit, -10.0), "votes": votes.float(),
                "attention": torch.zeros(b, 9, S // s, S // s)}


def _render_frame(obj, geom, T, cam):
    r = render_targets(geom, cam.K, T, (cam.height, cam.width))
    norm = (r["coords"] - geom.coord_centre) / geom.coord_half_extent
    rgb = np.where(r["mask"][..., None] > 0, LO + SPAN * (norm + 1) / 2, 0.0)
    return Frame(np.round(rgb).astype(np.uint8), cam, depth=r["depth"].astype(np.float32))


def _bundle(objects, objects_dir, path, objects_config="../objects.yaml", kind="correspondence"):
    spec = BundleSpec([BundleObject.from_model(m) for m in objects], objects_config,
                      PoseNetSpec(kind, 64, BackboneConfig((8, 8, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 160, 120, 0.3), (640, 480))
    return ModelBundle.create(spec).save(objects_dir / path)


def _oracle_estimator(bundle_path, **cfg):
    est = PoseEstimator(bundle_path, config=EstimatorConfig(**cfg))
    n = len(est.spec.objects)
    est.detector = OracleDetector(n, est.spec.detector).eval()
    est.pose_net = OracleCorrespondences(n, est.pose_net.config).eval()
    return est


def _errors(T_est, T_gt):
    cos = (np.trace(T_est[:3, :3].T @ T_gt[:3, :3]) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1))), np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _pose():
    T = np.eye(4)
    a = 0.7
    T[:3, :3] = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.5), -np.sin(0.5)], [0, np.sin(0.5), np.cos(0.5)]])
    T[:3, 3] = [0.05, -0.03, 0.6]
    return T


def test_estimate_recovers_the_pose_at_any_frame_size(objects, objects_dir):
    path = _bundle(objects, objects_dir, "m_oracle")
    est = _oracle_estimator(path, refine_depth=False)
    geom = ObjectGeometry.from_model(objects[0])
    T = _pose()
    results = []
    for cam in (K, K.scaled(2.0), K.scaled(0.5)):
        out = est.estimate(_render_frame(objects[0], geom, T, cam))
        assert len(out) == 1 and out[0].object_name == "obj0" and out[0].object_id == 1
        re_deg, te_m = _errors(out[0].T_cam_obj, T)
        assert re_deg < 2.0 and te_m < 0.006, (cam.width, re_deg, te_m)
        assert out[0].mask.shape == (cam.height, cam.width) and out[0].mask.sum() > 0
        assert 0 < out[0].score <= 1 and out[0].inliers > 10
        results.append(out[0].T_cam_obj)
    assert _errors(results[0], results[1])[1] < 0.006
    # with depth (rendered, exact) the ICP refinement keeps or improves the pose
    refined = _oracle_estimator(path, refine_depth=True).estimate(_render_frame(objects[0], geom, T, K))
    re_deg, te_m = _errors(refined[0].T_cam_obj, T)
    assert re_deg < 2.0 and te_m < 0.003


def test_keypoint_network_path_returns_the_true_pose_and_the_score_product(objects, objects_dir):
    """Oracle detector + keypoint network through the real PoseEstimator: the true pose back to 1e-3 m / 0.1 deg
    at any frame size, with and without depth refinement; score = detector score x PnP quality x mask confidence
    (quality 1 here: all 9 keypoints are exact)."""
    est = PoseEstimator(_bundle(objects, objects_dir, "m_kp", kind="keypoint"),
                        config=EstimatorConfig(refine_depth=False))
    n = len(est.spec.objects)
    est.detector = OracleDetector(n, est.spec.detector).eval()
    est.detector.peak_logit = 0.4
    est.pose_net = OracleKeypoints(n, est.pose_net.config, objects, mask_logit=1.5).eval()
    geom = ObjectGeometry.from_model(objects[0])
    T = _pose()
    for cam in (K, K.scaled(2.0), K.scaled(0.5)):
        est.pose_net.K, est.pose_net.T = cam, T
        for refine in (False, True):
            est.config.refine_depth = refine
            frame = _render_frame(objects[0], geom, T, cam)
            out = est.estimate(frame)
            assert len(out) == 1 and out[0].object_name == "obj0" and out[0].inliers == 9
            re_deg, te_m = _errors(out[0].T_cam_obj, T)
            # ICP on the rendered depth is not exact: it may turn the exact PnP pose by a few tenths of a degree
            assert te_m < 1e-3 and re_deg < (1.0 if refine else 0.1), (cam.width, refine, re_deg, te_m)
            assert out[0].score == pytest.approx(_sigmoid(0.4) * 1.0 * _sigmoid(1.5), rel=1e-5)


def test_score_counts_the_pnp_inlier_share(objects, objects_dir):
    """Correspondence path with a known share of outlier cells: RANSAC rejects exactly those, the pose stays exact
    and the score is detector score x inlier share x mask confidence."""
    est = _oracle_estimator(_bundle(objects, objects_dir, "m_outliers"), refine_depth=False, pnp_iterations=200)
    est.detector.peak_logit = 0.8
    est.pose_net.corrupt_every = 3
    T = _pose()
    out = est.estimate(_render_frame(objects[0], ObjectGeometry.from_model(objects[0]), T, K))
    cells, bad = est.pose_net.counts
    assert 0 < bad < cells and out[0].inliers == cells - bad
    re_deg, te_m = _errors(out[0].T_cam_obj, T)
    assert re_deg < 2.0 and te_m < 6e-3  # cell-averaged coordinates: not exact (as in the test above)
    assert out[0].score == pytest.approx(_sigmoid(0.8) * (cells - bad) / cells * _sigmoid(10.0), rel=1e-5)


def test_empty_image_gives_no_estimates(objects, objects_dir):
    est = _oracle_estimator(_bundle(objects, objects_dir, "m_empty"))
    assert est.estimate(Frame(np.zeros((480, 640, 3), np.uint8), K)) == []


def test_depth_refinement_corrects_a_perturbed_pose(objects):
    geom = ObjectGeometry.from_model(objects[0])
    T = _pose()
    r = render_targets(geom, K.K, T, (480, 640))
    T0 = T.copy()
    T0[:3, 3] += [0.008, -0.005, 0.02]
    a = np.radians(4.0)
    T0[:3, :3] = T0[:3, :3] @ np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    refined, fitness = DepthRefiner(objects[0]).refine(T0, r["depth"], K.K, r["mask"] > 0)
    assert fitness > 0.5
    re0, te0 = _errors(T0, T)
    re1, te1 = _errors(refined, T)
    assert te1 < 0.3 * te0 and te1 < 0.005 and re1 < re0
    same, fit = DepthRefiner(objects[0]).refine(T0, np.zeros((480, 640), np.float32), K.K, r["mask"] > 0)
    assert fit == 0.0 and np.array_equal(same, T0)


def test_bad_bundles_and_objects(objects, objects_dir, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        PoseEstimator(tmp_path / "nothing")
    path = _bundle(objects, objects_dir, "m_bad")
    only_second = write_objects_config(tmp_path / "objects.yaml", [
        {"name": "obj1", "mesh": str(objects_dir / "obj1.ply"), "obj_id": 2}])
    with pytest.raises(ModelError, match="'obj0'.*missing from"):
        PoseEstimator(path, objects_config=only_second)
    wrong_id = write_objects_config(tmp_path / "ids.yaml", [
        {"name": "obj0", "mesh": str(objects_dir / "obj0.ply"), "obj_id": 7},
        {"name": "obj1", "mesh": str(objects_dir / "obj1.ply"), "obj_id": 2}])
    with pytest.raises(ModelError, match="obj_id is 7"):
        PoseEstimator(path, objects_config=wrong_id)
    moved = _bundle(objects, objects_dir, "m_moved", objects_config="gone/objects.yaml")
    with pytest.raises(ModelError, match="objects config .* does not exist"):
        PoseEstimator(moved)
    torch.save({"detector": {}, "pose_net": {}}, path / "weights.pt")
    with pytest.raises(ModelError, match="do not fit"):
        PoseEstimator(path)


def test_dual_scale_ensemble_for_bundles_adapted_by_dual_scale(objects, objects_dir, monkeypatch):
    import selfpose_core.estimate.estimator as estimator_module

    spec = BundleSpec([BundleObject.from_model(m) for m in objects], "../objects.yaml",
                      PoseNetSpec("correspondence", 64, BackboneConfig((8, 8, 16), 4)),
                      DetectorConfig(BackboneConfig((8, 8, 16), 4), 160, 120, 0.3), (640, 480))
    spec.provenance["stages"] = [{"stage": "dual_scale", "config": {"context_fraction": 0.4,
                                                                    "normalized_padding": 1.2}}]
    path = ModelBundle.create(spec).save(objects_dir / "m_dual")
    calls = []
    real = estimator_module.dual_scale_estimate
    monkeypatch.setattr(estimator_module, "dual_scale_estimate", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    est = _oracle_estimator(path, refine_depth=False)
    assert est.dual_scale == DualScaleViews(0.4, 1.2)
    geom = ObjectGeometry.from_model(objects[0])
    T = _pose()
    out = est.estimate(_render_frame(objects[0], geom, T, K))
    assert len(calls) == 1 and calls[0]["context_fraction"] == 0.4 and calls[0]["padding"] == 1.2
    re_deg, te_m = _errors(out[0].T_cam_obj, T)
    assert re_deg < 2.0 and te_m < 0.006 and out[0].inliers > 10  # both views' correspondences, one PnP
    assert _oracle_estimator(path, dual_scale="off").dual_scale is None
    plain = _bundle(objects, objects_dir, "m_plain")
    assert _oracle_estimator(plain).dual_scale is None
    assert _oracle_estimator(plain, dual_scale="on").dual_scale == DualScaleViews()
    with pytest.raises(ConfigError, match="dual_scale"):
        _oracle_estimator(plain, dual_scale="maybe")
    spec.provenance["stages"] = [{"stage": "dual_scale", "config": {"context_fraction": 0.4}}]
    broken = ModelBundle.create(spec).save(objects_dir / "m_dual_broken")
    with pytest.raises(ModelError, match=r"m_dual_broken/bundle.yaml: .*config.normalized_padding"):
        _oracle_estimator(broken)


def test_depth_refinement_does_not_depend_on_what_it_refined_before(objects):
    geom = ObjectGeometry.from_model(objects[0])
    r = render_targets(geom, K.K, _pose(), (480, 640))
    depth, mask = r["depth"], r["mask"] > 0
    assert mask.sum() > 1500  # more points than the refiner keeps: it subsamples
    T0 = _pose()
    T0[:3, 3] += [0.008, -0.005, 0.02]
    refiner = DepthRefiner(objects[0])
    first = refiner.refine(T0, depth, K.K, mask)[0]
    refiner.refine(T0, depth[:, ::-1].copy(), K.K, mask[:, ::-1].copy())  # something else in between
    assert np.array_equal(first, refiner.refine(T0, depth, K.K, mask)[0])


def test_with_depth_and_no_table_the_learned_pose_is_kept_and_scored_by_verification(objects, objects_dir):
    path = _bundle(objects, objects_dir, "m_fallback")
    geom = ObjectGeometry.from_model(objects[0])
    frame = _render_frame(objects[0], geom, _pose(), K)  # the object alone: no support plane in the depth
    learned = _oracle_estimator(path, depth_search=False).estimate(frame)
    searched = _oracle_estimator(path).estimate(frame)
    assert len(learned) == len(searched) == 1
    assert np.array_equal(searched[0].T_cam_obj, learned[0].T_cam_obj)
    assert 0.5 * learned[0].score < searched[0].score <= learned[0].score  # x verification score (exact depth)
    rgb_only = _oracle_estimator(path, use_depth=False)
    assert rgb_only.search is None
    no_depth = rgb_only.estimate(Frame(frame.rgb, K))
    assert np.array_equal(rgb_only.estimate(frame)[0].T_cam_obj, no_depth[0].T_cam_obj)
