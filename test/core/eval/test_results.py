"""BOP results CSV: round trip, the layout bop_toolkit's loader expects, clear errors on malformed rows."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from selfpose_core.errors import DatasetError
from selfpose_core.eval.results import HEADER, read_results, write_results
from selfpose_core.types import ObjectModel, PoseEstimate


def _obj(name: str, obj_id: int) -> ObjectModel:
    return ObjectModel(name, np.zeros((1, 3)), np.zeros((0, 3), dtype=np.int64), 0.1, obj_id=obj_id)


def _pose(rng) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
    T[:3, 3] = rng.uniform(-0.2, 0.2, 3) + [0, 0, 0.7]
    return T


def test_round_trip_and_bop_toolkit_layout(tmp_path, rng):
    objects = [_obj("mug", 1), _obj("box", 5)]
    est = {(1, 0): [PoseEstimate("mug", _pose(rng), 0.9, object_id=1), PoseEstimate("box", _pose(rng), 0.4)],
           (2, 7): [PoseEstimate("box", _pose(rng), 0.8, object_id=5)]}
    path = tmp_path / "res" / "method_sim-test.csv"
    assert write_results(path, est, times={(1, 0): 0.25}, objects=objects) == 3
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    # Parse like bop_toolkit's inout.load_bop_results: 7 fields, R 3x3 row-major, t (3, 1) in millimetres.
    elems = lines[1].split(",")
    assert len(elems) == 7 and int(elems[2]) == 1 and float(elems[6]) == 0.25
    R = np.array(list(map(float, elems[4].split()))).reshape((3, 3))
    t = np.array(list(map(float, elems[5].split()))).reshape((3, 1))
    np.testing.assert_array_equal(R, est[(1, 0)][0].T_cam_obj[:3, :3])
    np.testing.assert_allclose(t[:, 0], est[(1, 0)][0].T_cam_obj[:3, 3] * 1000.0, rtol=1e-15)
    assert lines[2].split(",")[2] == "5"  # obj_id looked up by name
    assert float(lines[3].split(",")[6]) == -1  # unknown time

    back = read_results(path, objects)
    assert len(back) == 3 and set(back.estimates) == {(1, 0), (2, 7)}
    assert back.times == {(1, 0): 0.25, (2, 7): -1.0}
    for key, ests in est.items():
        for a, b in zip(ests, back.estimates[key]):
            np.testing.assert_allclose(b.T_cam_obj, a.T_cam_obj, atol=1e-15)
            assert b.score == a.score and b.object_name == a.object_name
    assert read_results(path).estimates[(2, 7)][0].object_name == "obj_000005"


@pytest.mark.parametrize("row, message", [
    ("1,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 500", "needs 7 comma-separated fields"),
    ("1,x,1,0.5,1 0 0 0 1 0 0 0 1,0 0 500,-1", "must be integers"),
    ("1,0,1,0.5,1 0 0 0 1 0 0 0,0 0 500,-1", r"R \(row-major rotation\) must be 9"),
    ("1,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 nan,-1", r"t \(translation in mm\) must be 3 finite"),
    ("1,0,1,0.5,2 0 0 0 1 0 0 0 1,0 0 500,-1", "not a rotation matrix"),
    ("1,0,1,0.5,-1 0 0 0 -1 0 0 0 -1,0 0 500,-1", "not a rotation matrix"),
    ("1,0,9,0.5,1 0 0 0 1 0 0 0 1,0 0 500,-1", "obj_id 9 is not an object of the dataset"),
])
def test_malformed_rows_name_the_line(tmp_path, row, message):
    path = tmp_path / "r.csv"
    path.write_text(f"{HEADER}\n1,0,1,0.5,1 0 0 0 1 0 0 0 1,0 0 500,-1\n\n{row}\n")
    with pytest.raises(DatasetError, match=rf"r.csv:4: .*{message}"):
        read_results(path, [_obj("mug", 1)])


def test_missing_file_and_unwritable_pose(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_results(tmp_path / "nope.csv")
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(DatasetError, match="not a finite 4x4"):
        write_results(tmp_path / "a.csv", {(1, 0): [PoseEstimate("mug", bad, 1.0, object_id=1)]})
    with pytest.raises(DatasetError, match="no BOP obj_id"):
        write_results(tmp_path / "a.csv", {(1, 0): [PoseEstimate("cup", np.eye(4), 1.0)]})
    assert not (tmp_path / "a.csv").exists()
