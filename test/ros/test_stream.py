"""The estimator's newest-frame worker: drops instead of lagging, throttling, statistics, error handling."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from selfpose_core.errors import ConfigError, ModelError
from selfpose_core.estimate.stream import (ERROR, OK, WARN, NewestFrameWorker, StreamStats, load_estimator,
                                           select_estimates)
from selfpose_core.types import PoseEstimate


class GatedModel:
    """A slow model: each call blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)

    def __call__(self, item: int) -> int:
        self.seen.append(item)
        self.started.release()
        assert self.gate.acquire(timeout=10)
        return item * 10


def test_slow_model_gets_the_newest_frame_and_drops_are_counted():
    model, results = GatedModel(), []
    with NewestFrameWorker(model, lambda item, r: results.append((item, r))) as worker:
        worker.submit(0, 0)
        assert model.started.acquire(timeout=10)  # frame 0 is being processed
        for i in range(1, 6):  # frames 1..5 arrive while the model is busy
            worker.submit(i, i * 33_000_000)
        model.gate.release()  # finish 0; the worker takes 5, the newest
        assert model.started.acquire(timeout=10)
        model.gate.release()
        assert worker.wait_idle(10)
    assert model.seen == [0, 5]
    assert results == [(0, 0), (5, 50)]
    s = worker.stats
    assert (s.received, s.processed, s.dropped, s.throttled) == (6, 2, 4, 0)
    assert s.drop_ratio == pytest.approx(4 / 6)
    assert s.level(max_drop_ratio=0.5)[0] == WARN


def test_max_rate_throttles_by_image_stamp_and_a_fast_model_drops_nothing():
    done = []
    with NewestFrameWorker(lambda i: i, lambda i, r: done.append(i), max_rate_hz=10.0) as worker:
        for k in range(30):  # 30 frames at 30 Hz of image time
            worker.submit(k, k * 33_333_333)
            worker.wait_idle(10)
    assert done == list(range(0, 30, 3))  # every 100 ms of image time
    assert (worker.stats.throttled, worker.stats.dropped) == (20, 0)
    with pytest.raises(ConfigError, match="max_rate"):
        NewestFrameWorker(lambda i: i, lambda i, r: None, max_rate_hz=-1)


def test_errors_are_counted_and_the_stream_goes_on():
    def model(i: int) -> int:
        if i == 1:
            raise ModelError("bad frame")
        if i == 2:
            raise ValueError("bug")
        return i

    done = []
    with NewestFrameWorker(model, lambda i, r: done.append(r)) as worker:
        for i in range(4):
            worker.submit(i, i)
            worker.wait_idle(10)
    assert done == [0, 3]
    assert worker.stats.errors == 2 and worker.stats.last_error == "bug"
    assert worker.stats.values()["errors"] == "2"


def test_stats_rate_latency_and_levels_with_an_injected_clock():
    clock = iter(range(0, 10**12, 10_000_000))  # each call advances 10 ms

    s = StreamStats(window=5)
    assert s.level()[0] == WARN  # nothing received yet
    for k in range(10):
        s.record(done_ns=k * 100_000_000, latency_ns=40_000_000 + k, run_ns=30_000_000, age_ns=50_000_000)
    s.received = 10
    assert s.rate_hz == pytest.approx(10.0)  # window of 5 frames 100 ms apart
    assert s.latency_ms == pytest.approx(40.0, abs=1e-4)
    assert s.run_ms == pytest.approx(30.0)
    assert s.level(min_rate_hz=5.0)[0] == OK
    assert s.level(min_rate_hz=20.0)[0] == WARN
    e = StreamStats(received=3, errors=3, last_error="cuda out of memory")
    assert e.level() == (ERROR, "estimation fails: cuda out of memory")
    results = []
    with NewestFrameWorker(lambda i: i, lambda i, r: results.append(r), clock_ns=lambda: next(clock),
                           age_clock_ns=lambda: 10**9) as worker:
        worker.submit(1, 10**9 - 25_000_000)
        worker.wait_idle(10)
    assert worker.stats.age_ms == pytest.approx(25.0)
    assert worker.stats.run_ms == pytest.approx(10.0)


def test_select_estimates_and_load_estimator_errors():
    ests = [PoseEstimate(n, np.eye(4), s) for n, s in (("a", 0.2), ("b", 0.9), ("c", 0.5))]
    assert [e.object_name for e in select_estimates(ests, 0.3)] == ["b", "c"]
    with pytest.raises(ModelError, match="no model bundle"):
        load_estimator("")
