"""The estimator node's model, swapped without a restart (plain Python, no rclpy: tested without ROS).

`ModelSlot` holds what serves now (`Serving`: the bundle path, its estimator and its message builder). ``request``
hands another bundle to ``load`` in a background thread while the old one keeps estimating; when the load succeeds
the new `Serving` replaces the old one in a single assignment, which the worker reads once per frame, so every frame
is estimated and published by one model, and no frame waits for the load. A bundle that fails to load (missing,
broken bundle.yaml or weights, another object set's meshes missing, failing on a frame, ...) is refused with its
error and the old one keeps serving. Requests arriving during a load are not lost: the newest is loaded next.
The node's ``load`` does the work in a child process (`selfpose_ros.bundle_loader`): a loading thread would hold
the GIL that the frames need.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfpose_core.errors import SelfposeError

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Serving:
    """One loaded bundle: what a frame is estimated and published with."""

    path: str
    estimator: Any
    builder: Any


class ModelSlot:
    """The serving model and its replacement.

    Args:
        current: what serves now (loaded by the caller: a node cannot start without a model).
        load: bundle path -> `Serving` (raises `SelfposeError` or any error for a bad bundle), run in a thread.
        on_done: called (in the loading thread) with (path, error message or '') after each background load.
    """

    def __init__(self, current: Serving, load: Callable[[str], Serving],
                 on_done: Callable[[str, str], None] | None = None) -> None:
        self.load = load
        self.on_done = on_done
        self.current = current
        self.swaps = 0
        self._lock = threading.Lock()
        self._next: str | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def check(path: str) -> str:
        """Why ``path`` is no bundle at first sight ('' if it may be one): the fast check before loading."""
        if not path:
            return "empty model path"
        if not (Path(path) / "bundle.yaml").is_file():
            return f"{path} holds no bundle.yaml (not a model bundle written by selfpose adapt / pretrain)"
        return ""

    def request(self, path: str) -> str:
        """Load ``path`` in the background and swap it in; '' when accepted (or already serving), else why not."""
        why = self.check(path)
        if why:
            return why
        with self._lock:
            if path == self.current.path:  # serving already (e.g. the parameter set back after a refusal)
                self._next = None
                return ""
            self._next = path
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="selfpose-model-load", daemon=True)
                self._thread.start()
        return ""

    def _run(self) -> None:
        while True:
            with self._lock:
                path, self._next = self._next, None
                if path is None:
                    self._thread = None
                    return
            try:
                serving = self.load(path)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
                error = str(exc) if isinstance(exc, SelfposeError) else f"{type(exc).__name__}: {exc}"
                log.error("model %s refused (still serving %s): %s", path, self.current.path, error)
                if self.on_done is not None:
                    self.on_done(path, error)
                continue
            self.current = serving  # one assignment: the next frame takes the new model
            self.swaps += 1
            log.info("now serving %s", path)
            if self.on_done is not None:
                self.on_done(path, "")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until no load is running or queued; False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return self._thread is None
