"""The estimator's model reload without ROS: frames go on with the old model during a load, the swap happens between
two frames (each frame estimated and published by one model), a bad bundle is refused and the old one serves on,
and the real bundle loader's errors reach the caller."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from selfpose_core.errors import ModelError
from selfpose_core.estimate.stream import NewestFrameWorker, load_estimator
from selfpose_ros.model_reload import ModelSlot, Serving


class Tagged:
    """A model whose every estimate names it; slow enough to overlap with the load."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def estimate(self, frame):
        time.sleep(0.005)
        return self.tag


def _loader(tmp_path, load_s=0.3):
    loads = []

    def load(path: str) -> Serving:
        loads.append(path)
        if path.endswith("/bad"):
            time.sleep(load_s)
            raise ModelError(f"{path}: weights.pt holds NaN values")
        time.sleep(load_s)
        return Serving(path, Tagged(path), builder=f"builder of {path}")

    for name in ("a", "b", "c", "bad"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bundle.yaml").write_text("format_version: 1\n")
    return load, loads


def test_swap_between_frames_without_a_gap(tmp_path):
    load, loads = _loader(tmp_path)
    done = []
    slot = ModelSlot(Serving(str(tmp_path / "a"), Tagged(str(tmp_path / "a")), f"builder of {tmp_path / 'a'}"), load,
                     on_done=lambda p, e: done.append((p, e)))
    published = []  # (time, estimator tag, builder) per frame

    def process(item):
        serving = slot.current  # once per frame, as the node does
        return serving, serving.estimator.estimate(item)

    def publish(item, result):
        serving, tag = result
        published.append((time.monotonic(), tag, serving.builder))

    with NewestFrameWorker(process, publish) as worker:
        stop = threading.Event()

        def camera():
            i = 0
            while not stop.is_set():
                worker.submit(i, i * 10**7)
                i += 1
                time.sleep(0.01)

        feeder = threading.Thread(target=camera)
        feeder.start()
        time.sleep(0.1)
        assert slot.request(str(tmp_path / "b")) == ""
        assert slot.wait(10)
        time.sleep(0.1)
        stop.set()
        feeder.join()
        worker.wait_idle(5)
    tags = [t for _, t, _ in published]
    assert all(b == f"builder of {t}" for _, t, b in published)  # estimator and builder of one bundle per frame
    first_b = tags.index(str(tmp_path / "b"))
    assert first_b > 0 and set(tags[:first_b]) == {str(tmp_path / "a")} and set(tags[first_b:]) == {str(tmp_path / "b")}
    gaps = np.diff([t for t, _, _ in published])
    assert gaps.max() < 0.2  # frames kept coming during the 0.3 s load
    assert done == [(str(tmp_path / "b"), "")] and slot.swaps == 1


def test_bad_bundle_is_refused_and_the_old_one_keeps_serving(tmp_path):
    load, loads = _loader(tmp_path, load_s=0.05)
    errors = []
    slot = ModelSlot(Serving(str(tmp_path / "a"), Tagged(str(tmp_path / "a")), None), load,
                     on_done=lambda p, e: errors.append((p, e)))
    assert "holds no bundle.yaml" in slot.request(str(tmp_path / "missing"))
    assert slot.request("") == "empty model path"
    assert slot.request(str(tmp_path / "bad")) == ""
    assert slot.wait(10)
    assert slot.current.path == str(tmp_path / "a") and slot.swaps == 0
    assert errors == [(str(tmp_path / "bad"), f"{tmp_path / 'bad'}: weights.pt holds NaN values")]
    # requests during a load: the newest is loaded next, none lost
    assert slot.request(str(tmp_path / "b")) == "" and slot.request(str(tmp_path / "c")) == ""
    assert slot.wait(10)
    assert slot.current.path == str(tmp_path / "c")
    assert slot.request(str(tmp_path / "c")) == ""  # already serving: nothing loaded
    assert slot.wait(1) and loads.count(str(tmp_path / "c")) == 1


def test_real_loader_errors_are_one_line_model_errors(tmp_path):
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text("format_version: 1\nobjects: [\n")
    with pytest.raises(ModelError):
        load_estimator(str(bundle))
    slot = ModelSlot(Serving("start", None, None), lambda p: Serving(p, load_estimator(p), None))
    assert slot.request(str(bundle)) == "" and slot.wait(30)
    assert slot.current.path == "start"
