"""SIGINT / SIGTERM of a process entry point (`selfpose ...` and the ROS nodes' `main`); the library installs none.

`StopSignals` turns the first SIGINT into KeyboardInterrupt and the first SIGTERM into SystemExit(143), raised in
the main thread once the frame it is writing into a bag is complete (`recording_writer.raise_after_sections`); the
``with``/``finally`` blocks of the command then close what it writes. A second signal raises at once, a third has
the default action (the process ends). The handlers are installed even when the process inherited SIGINT ignored
(a background job of a shell script): a recorder that ignores Ctrl-C and `kill -INT` cannot be stopped cleanly.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from selfpose_core.data.recording_writer import raise_after_sections

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_exception(signum: int) -> BaseException:
    """KeyboardInterrupt for SIGINT, SystemExit(128 + signum) for the others (the shell's exit code)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


class StopSignals:
    """Context manager installing the stop handlers in the main thread (elsewhere it does nothing).

    Args:
        on_signal: called first with the signal number (e.g. to log "stopping"); must not raise.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.on_signal = on_signal
        self.received: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers found on entry."""
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.on_signal is not None:
            self.on_signal(signum)
        insist = len(self.received) >= 2
        if insist:  # no more deferring, and a third signal ends the process at once
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
        raise_after_sections(stop_exception(signum), at_once=insist)
