from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from selfpose_core.data.bop import BopDataset, BopWriter, models_info_entry, symmetry_from_models_info
from selfpose_core.errors import DatasetError
from selfpose_core.mesh.loading import object_model_from_arrays
from selfpose_core.types import CameraIntrinsics, Frame, Symmetry

W, H = 64, 48
K = CameraIntrinsics(80.0, 82.0, 31.5, 23.5, W, H)


def _pose(rng: np.random.Generator, z: float = 0.5) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    T[:3, 3] = rng.uniform(-0.05, 0.05, 3) + [0, 0, z]
    return T


def _objects(rng: np.random.Generator):
    box = trimesh.creation.box((0.06, 0.08, 0.1))
    uv = rng.uniform(size=(len(box.vertices), 2))
    tex = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    flip = np.diag([-1.0, -1, 1, 1])
    flip[:3, 3] = [0.001, 0.002, 0.0]
    a = object_model_from_arrays("box", box.vertices, box.faces, uv=uv, texture=tex, obj_id=1, category="box",
                                 symmetry=Symmetry(discrete=flip[None]))
    can = trimesh.creation.cylinder(radius=0.03, height=0.1, sections=24)
    b = object_model_from_arrays("can", can.vertices, can.faces, obj_id=3,
                                 symmetry=Symmetry(continuous=[(np.array([0, 0, 1.0]), np.array([0, 0, 0.01]))]))
    return [a, b]


def _frame(rng: np.random.Generator, im: int) -> Frame:
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 2.0, (H, W)).astype(np.float32)
    depth[0, :5] = 0.0
    depth[1, :5] = np.nan
    return Frame(rgb=rgb, K=K, stamp_ns=1_700_000_000_000_000_000 + im, depth=depth, T_world_cam=_pose(rng, 1.0),
                 index=im)


def _masks(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    full = [rng.uniform(size=(H, W)) < 0.3 for _ in range(n)]
    visib = [f & (rng.uniform(size=(H, W)) < 0.5) for f in full]
    return visib, full


def test_round_trip_writer_to_reader(tmp_path, rng):
    objects = _objects(rng)
    frames, gts, masks = {}, {}, {}
    with BopWriter(tmp_path, "test", depth_scale=0.1) as writer:
        writer.write_models(objects)
        for scene_id, im_id in [(1, 0), (1, 1), (2, 5)]:
            frame = _frame(rng, im_id)
            gt = [(1, _pose(rng)), (3, _pose(rng))]
            visib, full = _masks(rng, 2)
            writer.write_frame(scene_id, im_id, frame, gt, masks_visib=visib, masks=full)
            frames[scene_id, im_id], gts[scene_id, im_id], masks[scene_id, im_id] = frame, gt, (visib, full)

    ds = BopDataset(tmp_path, "test")
    assert ds.scene_ids == [1, 2] and ds.image_ids(1) == [0, 1] and len(ds) == 3
    samples = list(ds.samples())
    assert [(s.scene_id, s.im_id) for s in samples] == [(1, 0), (1, 1), (2, 5)]
    for s in samples:
        ref = frames[s.scene_id, s.im_id]
        f = s.frame
        np.testing.assert_array_equal(f.rgb, ref.rgb)
        assert f.K == K and f.stamp_ns == ref.stamp_ns and f.index == s.im_id
        np.testing.assert_allclose(f.T_world_cam, ref.T_world_cam, atol=1e-9)
        valid = np.isfinite(ref.depth) & (ref.depth > 0)
        assert np.abs(f.depth[valid] - ref.depth[valid]).max() <= 0.05e-3 + 1e-7  # half a 0.1 mm step
        assert (f.depth[~valid] == 0).all()
        visib, full = masks[s.scene_id, s.im_id]
        for i, g in enumerate(s.gt):
            obj_id, T = gts[s.scene_id, s.im_id][i]
            assert g.obj_id == obj_id and g.gt_idx == i
            np.testing.assert_allclose(g.T_cam_obj, T, atol=1e-9)
            np.testing.assert_array_equal(g.mask_visib, visib[i])
            assert g.visib_fract == pytest.approx(visib[i].sum() / full[i].sum())
            ys, xs = np.nonzero(visib[i])
            assert g.bbox_visib.tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            ys, xs = np.nonzero(full[i])
            assert g.bbox_obj.tolist()[:2] == [xs.min(), ys.min()]

    info = json.loads((tmp_path / "test" / "000001" / "scene_gt_info.json").read_text())["0"][0]
    assert set(info) == {"bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib", "visib_fract"}
    assert info["px_count_all"] == int(masks[1, 0][1][0].sum())
    assert cv2.imread(str(tmp_path / "test" / "000001" / "mask" / "000000_000001.png"), cv2.IMREAD_UNCHANGED).dtype \
        == np.uint8

    by_id = {o.obj_id: o for o in ds.objects}
    for ref in objects:
        got = by_id[ref.obj_id]
        assert (got.name, got.category) == (ref.name, ref.category)
        assert got.diameter == pytest.approx(ref.diameter, rel=1e-6)
        np.testing.assert_allclose(got.vertices, ref.vertices, atol=1e-7)
        np.testing.assert_allclose(got.symmetry.discrete, ref.symmetry.discrete, atol=1e-12)
        assert len(got.symmetry.continuous) == len(ref.symmetry.continuous)
        for (a, o), (ra, ro) in zip(got.symmetry.continuous, ref.symmetry.continuous):
            np.testing.assert_allclose(a, ra)
            np.testing.assert_allclose(o, ro, atol=1e-12)
    np.testing.assert_array_equal(by_id[1].texture, objects[0].texture)
    np.testing.assert_allclose(by_id[1].uv, objects[0].uv, atol=1e-6)
    assert ds.models_info[1]["diameter"] == pytest.approx(objects[0].diameter * 1000.0)


def test_models_info_symmetries_in_millimetres():
    info = {"diameter": 100.0, "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 20.0, 0, 0, 0, 1]],
            "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 5.0]}]}
    sym = symmetry_from_models_info(info)
    assert sym.discrete.shape == (1, 4, 4) and sym.discrete[0, 2, 3] == pytest.approx(0.02)
    np.testing.assert_allclose(sym.continuous[0][1], [0, 0, 0.005])
    assert not symmetry_from_models_info({"diameter": 1.0}).is_symmetric
    with pytest.raises(DatasetError, match="models_info.json.*symmetries"):
        symmetry_from_models_info({"symmetries_discrete": [[1, 2, 3]]})
    box = trimesh.creation.box((0.02, 0.04, 0.06))
    entry = models_info_entry(object_model_from_arrays("b", box.vertices, box.faces))
    assert entry["size_x"] == pytest.approx(20.0) and entry["min_z"] == pytest.approx(-30.0)
    assert "symmetries_discrete" not in entry


def test_jpg_writer_and_appending_to_a_scene(tmp_path, rng):
    with BopWriter(tmp_path, "train", image_format="jpg") as w:
        w.write_frame(1, 0, _frame(rng, 0), [])
    with BopWriter(tmp_path, "train", image_format="jpg") as w:
        ref = _frame(rng, 1)
        yy, xx = np.mgrid[0:H, 0:W]
        ref.rgb = np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], axis=-1).astype(np.uint8)  # JPEG-friendly
        w.write_frame(1, 1, ref, [(2, _pose(rng))])
        with pytest.raises(DatasetError, match="already holds image 0"):
            w.write_frame(1, 0, _frame(rng, 0), [])
    ds = BopDataset(tmp_path, "train")
    assert ds.image_ids(1) == [0, 1]
    s = ds.sample(1, 1)
    assert (tmp_path / "train" / "000001" / "rgb" / "000001.jpg").is_file()
    assert np.abs(s.frame.rgb.astype(int) - ref.rgb).max() < 12  # lossy, but the same image
    assert s.gt[0].visib_fract == -1.0 and s.gt[0].mask_visib is None  # written without masks


def test_boxes_without_visible_masks(tmp_path, rng):
    objects = _objects(rng)
    T = np.eye(4)
    T[:3, 3] = [0, 0, 0.6]
    with BopWriter(tmp_path) as w:
        w.write_models(objects)
        w.write_frame(0, 0, _frame(rng, 0), [(1, T)])
        full = np.zeros((H, W), bool)
        full[10:20, 30:41] = True
        w.write_frame(0, 1, _frame(rng, 1), [(3, T)], masks=[full])
    ds = BopDataset(tmp_path)
    g = ds.sample(0, 0).gt[0]
    x, y, bw, bh = g.bbox_obj
    assert abs(x + bw / 2 - K.cx) < 2 and abs(y + bh / 2 - K.cy) < 2 and 5 < bw < W
    g = ds.sample(0, 1).gt[0]  # full mask only: the visible part is unknown
    assert g.bbox_obj.tolist() == [30, 10, 11, 10] and g.visib_fract == -1.0 and g.mask_visib is None


def _real_style_scene(root: Path, rng: np.random.Generator) -> Path:
    """A scene like ITODD/T-LESS ones: gray 16-bit image, .tif depth, no ground truth, no camera pose."""
    d = root / "test" / "000003"
    (d / "gray").mkdir(parents=True)
    (d / "depth").mkdir()
    gray = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    cv2.imwrite(str(d / "gray" / "000007.tif"), gray)
    cv2.imwrite(str(d / "depth" / "000007.tif"), np.full((H, W), 1500, np.uint16))
    (d / "scene_camera.json").write_text(json.dumps({"7": {"cam_K": K.K.reshape(-1).tolist(), "depth_scale": 0.1}}))
    return d


def test_reads_gray_tif_scene_without_ground_truth(tmp_path, rng):
    _real_style_scene(tmp_path, rng)
    s = BopDataset(tmp_path, "test").sample(3, 7)
    assert s.frame.rgb.shape == (H, W, 3) and s.frame.rgb.dtype == np.uint8
    assert (s.frame.rgb[..., 0] == s.frame.rgb[..., 2]).all()
    np.testing.assert_allclose(s.frame.depth, 0.15, atol=1e-7)
    assert s.gt == [] and s.frame.T_world_cam is None


def test_missing_and_malformed_files_raise_dataset_error(tmp_path, rng):
    with pytest.raises(DatasetError, match="split folder .*nosplit"):
        BopDataset(tmp_path, "nosplit")
    d = _real_style_scene(tmp_path, rng)
    ds = BopDataset(tmp_path, "test")
    with pytest.raises(DatasetError, match="models_info.json does not exist"):
        ds.objects
    with pytest.raises(DatasetError, match="scene_camera.json has no image 8"):
        ds.sample(3, 8)
    (d / "scene_gt.json").write_text('{"7": [{"cam_R_m2c": [1, 0, 0]')
    with pytest.raises(DatasetError, match="scene_gt.json is not valid JSON"):
        BopDataset(tmp_path, "test").sample(3, 7)
    (d / "scene_gt.json").write_text('{"7": [{"cam_R_m2c": [1, 0, 0, 0, 1, 0, 0, 0, 1], "obj_id": 1}]}')
    with pytest.raises(DatasetError, match=r"scene_gt.json: image 7 instance 0: missing key 'cam_t_m2c'"):
        BopDataset(tmp_path, "test").sample(3, 7)
    (d / "scene_camera.json").write_text('{"7": {"depth_scale": 1.0}}')
    with pytest.raises(DatasetError, match=r"scene_camera.json: image 7: missing key 'cam_K'"):
        BopDataset(tmp_path, "test").sample(3, 7)
    (d / "gray" / "000007.tif").unlink()
    with pytest.raises(DatasetError, match="no image file for image 7"):
        BopDataset(tmp_path, "test").sample(3, 7)
    with BopWriter(tmp_path, "test") as w:
        with pytest.raises(DatasetError, match="1 masks_visib for 2"):
            w.write_frame(4, 0, _frame(rng, 0), [(1, np.eye(4)), (2, np.eye(4))], masks_visib=[np.zeros((H, W), bool)])
