"""Stop signals are the entry point's (`StopSignals`), not the library's: a bag section defers the first one to the
end of the frame, a second one is raised at once, and an inherited SIG_IGN does not make the process deaf."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfpose_core.cli.signals import StopSignals
from selfpose_core.data.recording_writer import BagWriter

ROOT = Path(__file__).resolve().parents[3]


def test_bag_writer_installs_no_handler(tmp_path):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with BagWriter(tmp_path / "bag") as bag:
        with bag.atomic():
            assert {sig: signal.getsignal(sig) for sig in before} == before
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_first_signal_waits_for_the_section_second_is_raised_at_once(tmp_path):
    events = []
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a shell's background job
    with BagWriter(tmp_path / "bag") as bag, StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt):
            with bag.atomic():
                os.kill(os.getpid(), signal.SIGINT)
                events.append("section went on after the first signal")
        assert events == ["section went on after the first signal"]
        with pytest.raises(KeyboardInterrupt):
            with bag.atomic():
                os.kill(os.getpid(), signal.SIGINT)
                events.append("never reached: the second signal is not deferred")
        assert stop.received == [signal.SIGINT, signal.SIGINT]
        assert len(events) == 1
    assert signal.getsignal(signal.SIGINT) is before  # restored on exit


def test_sigterm_outside_a_section_is_raised_at_once():
    with StopSignals():
        with pytest.raises(SystemExit) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode
                pass
            pytest.fail("SIGTERM not raised")
    assert info.value.code == 128 + signal.SIGTERM


SCRIPT = textwrap.dedent("""
    import sys, time
    from selfpose_core.cli.signals import StopSignals
    with StopSignals():
        try:
            print("READY", flush=True)  # inside the try: the signal may come at once
            time.sleep(60)
        except KeyboardInterrupt:
            print("STOPPED", flush=True)
            sys.exit(130)
""")


def test_sigint_inherited_as_ignored_still_stops():
    """A background job of a shell script inherits SIGINT ignored: the entry point still acts on it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert "STOPPED" in out and proc.returncode == 130
