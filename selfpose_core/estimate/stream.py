"""Estimation on a live camera stream: always the newest frame, never a queue of old ones.

`NewestFrameWorker` runs the model in one worker thread. ``submit(item)`` never blocks: the item waits in a single
slot; a newer item replaces it and the replaced one is counted as dropped. So the output lags the camera by at most
one model run, whatever the model's speed. ``max_rate_hz`` additionally skips frames (by image stamp) that come
sooner than 0.9/max_rate after the last accepted one ("throttled", not "dropped").

`load_estimator` opens a model bundle for it, `select_estimates` applies the score threshold.

`StreamStats` keeps the counters and sliding-window rate/latency figures that the node reports as diagnostics
(diagnostic_msgs/DiagnosticStatus key/values) and the replay prints.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from selfpose_core.errors import ConfigError, ModelError, SelfposeError
from selfpose_core.types import Frame, PoseEstimate

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


def monotonic_ns() -> int:
    return time.monotonic_ns()


@dataclass(slots=True)
class StreamStats:
    """Counters and sliding-window figures of a stream (window: the last ``window`` processed frames).

    ``latency``: submit -> result (waiting + model); ``run``: model time alone; ``age``: image stamp -> result on
    the stamp's clock (only when the caller reports it).
    """

    window: int = 30
    received: int = 0
    processed: int = 0
    dropped: int = 0
    throttled: int = 0
    errors: int = 0
    last_error: str = ""
    _done_ns: deque = field(default_factory=deque)
    _latency_ns: deque = field(default_factory=deque)
    _run_ns: deque = field(default_factory=deque)
    _age_ns: deque = field(default_factory=deque)

    def record(self, done_ns: int, latency_ns: int, run_ns: int, age_ns: int | None = None) -> None:
        """One processed frame finished at ``done_ns`` (monotonic clock)."""
        self.processed += 1
        for buf, v in ((self._done_ns, done_ns), (self._latency_ns, latency_ns), (self._run_ns, run_ns),
                       (self._age_ns, age_ns)):
            if v is None:
                continue
            buf.append(int(v))
            while len(buf) > self.window:
                buf.popleft()

    @property
    def rate_hz(self) -> float:
        """Processed frames per second over the window (0 with fewer than two)."""
        d = self._done_ns
        if len(d) < 2 or d[-1] <= d[0]:
            return 0.0
        return (len(d) - 1) / ((d[-1] - d[0]) * 1e-9)

    @staticmethod
    def _ms(buf: deque, reduce: Callable[[np.ndarray], Any]) -> float:
        return float(reduce(np.asarray(buf, dtype=np.float64))) * 1e-6 if buf else 0.0

    @property
    def latency_ms(self) -> float:
        return self._ms(self._latency_ns, np.mean)

    @property
    def latency_max_ms(self) -> float:
        return self._ms(self._latency_ns, np.max)

    @property
    def run_ms(self) -> float:
        return self._ms(self._run_ns, np.mean)

    @property
    def age_ms(self) -> float:
        return self._ms(self._age_ns, np.mean)

    @property
    def drop_ratio(self) -> float:
        """Dropped / (processed + dropped)."""
        n = self.processed + self.dropped
        return self.dropped / n if n else 0.0

    def values(self) -> dict[str, str]:
        """Key/value pairs for diagnostic_msgs/KeyValue (strings, as the message wants)."""
        return {"frames received": str(self.received), "frames processed": str(self.processed),
                "frames dropped (model busy)": str(self.dropped), "frames throttled (max_rate)": str(self.throttled),
                "errors": str(self.errors), "rate (Hz)": f"{self.rate_hz:.2f}",
                "latency mean (ms)": f"{self.latency_ms:.1f}", "latency max (ms)": f"{self.latency_max_ms:.1f}",
                "model time (ms)": f"{self.run_ms:.1f}", "image age (ms)": f"{self.age_ms:.1f}",
                "drop ratio": f"{self.drop_ratio:.3f}", "last error": self.last_error}

    def level(self, min_rate_hz: float = 0.0, max_drop_ratio: float = 0.8) -> tuple[int, str]:
        """(diagnostic level, message): ERROR after errors with nothing processed, WARN when the rate is under
        ``min_rate_hz`` or more than ``max_drop_ratio`` of the frames are dropped, else OK."""
        if self.errors and not self.processed:
            return ERROR, f"estimation fails: {self.last_error}"
        if self.received == 0:
            return WARN, "no synchronised frames received yet"
        if min_rate_hz > 0 and self.processed > 1 and self.rate_hz < min_rate_hz:
            return WARN, f"rate {self.rate_hz:.1f} Hz below {min_rate_hz:.1f} Hz"
        if self.drop_ratio > max_drop_ratio:
            return WARN, f"model too slow for the camera: {100 * self.drop_ratio:.0f}% of frames dropped"
        return OK, f"{self.rate_hz:.1f} Hz, latency {self.latency_ms:.0f} ms"


@dataclass(slots=True)
class _Job(Generic[T]):
    item: T
    stamp_ns: int
    submitted_ns: int


class NewestFrameWorker(Generic[T, R]):
    """Run ``process(item) -> result`` in a worker thread on the newest submitted item; hand the result to
    ``on_result(item, result)`` (in the worker thread).

    Args:
        process: the model call; an exception it (or ``on_result``) raises is counted and logged, the worker
            continues with the next item.
        on_result: receives each result (publishing); called in the worker thread.
        max_rate_hz: accept at most this many items per second of image time (0: no limit).
        clock_ns: monotonic clock, injectable for tests.
        age_clock_ns: clock of the image stamps (ROS time), to report image age; None: not reported.
    """

    def __init__(self, process: Callable[[T], R], on_result: Callable[[T, R], None], max_rate_hz: float = 0.0,
                 clock_ns: Callable[[], int] = monotonic_ns, age_clock_ns: Callable[[], int] | None = None,
                 name: str = "selfpose-estimator") -> None:
        if max_rate_hz < 0:
            raise ConfigError(f"max_rate must be >= 0 Hz, got {max_rate_hz}")
        self.process = process
        self.on_result = on_result
        self.min_period_ns = int(1e9 / max_rate_hz) if max_rate_hz > 0 else 0
        self.clock_ns = clock_ns
        self.age_clock_ns = age_clock_ns
        self.stats = StreamStats()
        self._cond = threading.Condition()
        self._slot: _Job[T] | None = None
        self._busy = False
        self._stop = False
        self._last_accepted_stamp: int | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, stamp_ns: int) -> bool:
        """Offer ``item`` (image stamp ``stamp_ns``); returns False when it was throttled. Never blocks on the model."""
        with self._cond:
            self.stats.received += 1
            last = self._last_accepted_stamp
            # 10% tolerance: a 30 Hz camera throttled to 10 Hz gives every third frame despite stamp jitter
            if self.min_period_ns and last is not None and 0 <= stamp_ns - last < 0.9 * self.min_period_ns:
                self.stats.throttled += 1
                return False
            self._last_accepted_stamp = int(stamp_ns)
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = _Job(item, int(stamp_ns), self.clock_ns())
            self._cond.notify()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._slot is None:
                    return
                job, self._slot = self._slot, None
                self._busy = True
            try:
                self._handle(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _handle(self, job: _Job[T]) -> None:
        start = self.clock_ns()
        try:
            result = self.process(job.item)
            end = self.clock_ns()
            self.on_result(job.item, result)
        except Exception as exc:  # the stream goes on; a bug is logged with its traceback
            with self._cond:
                self.stats.errors += 1
                self.stats.last_error = str(exc)
            if isinstance(exc, SelfposeError):
                log.error("frame at %d ns failed: %s", job.stamp_ns, exc)
            else:
                log.exception("frame at %d ns failed", job.stamp_ns)
            return
        age = self.age_clock_ns() - job.stamp_ns if self.age_clock_ns is not None else None
        with self._cond:
            self.stats.record(self.clock_ns(), end - job.submitted_ns, end - start, age)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no item is waiting or being processed; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._slot is not None or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float | None = 5.0) -> None:
        """Finish the item being processed, discard a waiting one (counted as dropped), stop the thread."""
        with self._cond:
            if self._slot is not None:
                self.stats.dropped += 1
                self._slot = None
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def __enter__(self) -> NewestFrameWorker[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Estimator(Protocol):
    """What the stream needs of a model: `selfpose_core.estimate.estimator.PoseEstimator` or a test double."""

    def estimate(self, frame: Frame) -> list[PoseEstimate]: ...


def load_estimator(bundle: str, device: str = "cpu", num_threads: int = 0, dual_scale: str = "auto",
                   use_depth: bool = True) -> Estimator:
    """The `PoseEstimator` of model bundle directory ``bundle`` on ``device``; ``num_threads`` > 0 sets torch's
    CPU threads; ``dual_scale``: DSC's two-scale ensemble (auto / on / off, `EstimatorConfig`); ``use_depth``
    False ignores the frames' depth (RGB only). An empty path raises `ModelError`."""
    if not bundle:
        raise ModelError("no model bundle given (parameter 'model' / option --model): pass the directory written "
                         "by `selfpose adapt`")
    import torch

    from selfpose_core.estimate.estimator import EstimatorConfig, PoseEstimator
    if num_threads > 0:
        torch.set_num_threads(int(num_threads))
    return PoseEstimator(bundle, device=device, config=EstimatorConfig(dual_scale=dual_scale, use_depth=use_depth))


def select_estimates(estimates: list[PoseEstimate], score_threshold: float) -> list[PoseEstimate]:
    """The estimates with ``score >= score_threshold``, best first."""
    return sorted((e for e in estimates if e.score >= score_threshold), key=lambda e: -e.score)
