"""SIGTERM and kill -9 at random points of `selfpose estimate` and `selfpose recover`.

The command runs in a forked child (everything is imported already: a case costs a fraction of a second) that sends
itself the signal at its k-th write (estimate: `BagWriter.write_raw`; recover: every file write, rename, link and
removal). Properties: SIGTERM exits 143 with one line and no traceback, and leaves a closed bag; after kill -9
`selfpose recover` gives back every frame that was on disk before the signal; the output is always a prefix of the
frames (nothing lost in between, nothing twice); the input recording is unchanged; `recover`, interrupted anywhere
and run again, ends with every frame exactly once.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event
from hypothesis import strategies as st

import selfpose_core.data.recovery as recovery
from selfpose_core.cli import estimate as estimate_cli
from selfpose_core.cli.main import main
from selfpose_core.data import bag_files
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import BagWriter

from .conftest import (MAX_MESSAGE_CHARS, BoxEstimator, digest, fuzz, interrupted_copy, pose_stamps, recorded,
                       small_frames)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

N_FRAMES = 9
_counter = itertools.count()


FRAMES = small_frames(N_FRAMES, 1, depth=False)
STAMPS = [f.stamp_ns for f in FRAMES]


def run_forked(argv: list[str], hook: Callable[[], None], log: Path) -> tuple[int, str]:
    """`selfpose ARGV` in a forked child that first runs ``hook`` (installs the signal trap); returns the exit code
    (-N for death by signal N, as subprocess does) and what the child printed."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 70
        try:
            out = open(log, "w", buffering=1)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            logging.root.handlers.clear()  # handlers of earlier in-process runs write to streams pytest closed
            hook()
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 70
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(rc)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {argv} hung")
        time.sleep(0.01)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return rc, log.read_text()


def _trap(at: int, sig: int, note: Callable[[], str], progress: Path) -> Callable[..., None]:
    """A function that, at its ``at``-th call, writes ``note()`` to ``progress`` and sends ``sig`` to the process."""
    calls = itertools.count(1)

    def maybe_signal(*_: object) -> None:
        if next(calls) == at:
            progress.write_text(note())
            os.kill(os.getpid(), sig)
            if sig == signal.SIGKILL:
                time.sleep(60)
    return maybe_signal


def _one_line_end(output: str, expected: str) -> None:
    assert "Traceback" not in output, output[-2000:]
    last = output.strip().splitlines()[-1]
    assert last == expected and len(last) < MAX_MESSAGE_CHARS, output[-2000:]


# ------------------------------------------------------------------------------------------ selfpose estimate
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return recorded(tmp_path_factory.mktemp("signals_estimate"), FRAMES)


def _estimate_signalled(scene, tmp_path_factory, sig, at, segment_frames):
    tmp = tmp_path_factory.getbasetemp()
    out, progress, log = tmp / f"sig_poses_{next(_counter)}", tmp / f"sig_progress_{next(_counter)}", tmp / "log"
    before = digest(scene)

    def hook():
        estimate_cli.load_estimator = lambda *a, **k: BoxEstimator()
        trap = _trap(at, sig, lambda: str(writers[-1].frames_flushed if writers else 0), progress)
        writers: list[BagWriter] = []
        write_raw, init = BagWriter.write_raw, BagWriter.__init__

        def noting_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            writers.append(self)

        def trapped_write_raw(self, *args, **kwargs):
            trap()
            return write_raw(self, *args, **kwargs)
        BagWriter.__init__, BagWriter.write_raw = noting_init, trapped_write_raw

    rc, output = run_forked(["estimate", "--bag", str(scene / "bag"), "--model", str(scene / "model"), "--out",
                             str(out), "--segment-frames", str(segment_frames)], hook, log)
    assert digest(scene) == before, "estimate changed its input"
    event(f"estimate: {'no signal' if rc == 0 else signal.Signals(sig).name}")
    if rc == 0:
        assert not progress.exists() and pose_stamps(out) == STAMPS
        return
    flushed = int(progress.read_text())
    if sig == signal.SIGTERM:
        assert rc == 128 + signal.SIGTERM, output[-2000:]
        _one_line_end(output, "selfpose estimate: terminated (SIGTERM)")
        assert not list(out.glob("*.partial"))  # closed
        got = pose_stamps(out)
        assert flushed <= len(got) <= flushed + 1  # the frame being written when the signal came is completed
    else:
        assert rc == -signal.SIGKILL, output[-2000:]
        rc_recover = main(["recover", str(out)])
        if rc_recover == 2:  # killed before any frame reached the disk
            assert flushed == 0
            return
        assert rc_recover == 0
        got = pose_stamps(out)
        assert flushed <= len(got)
    assert got == STAMPS[:len(got)]  # a prefix: nothing lost in between, nothing twice


test_estimate_signalled, test_estimate_signalled_long = fuzz(
    15, sig=st.sampled_from([signal.SIGTERM, signal.SIGKILL]), at=st.integers(1, 2 * N_FRAMES + 2),
    segment_frames=st.sampled_from([1, 3, 100]))(_estimate_signalled)


# ------------------------------------------------------------------------------------------ selfpose recover
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A bag as kill -9 leaves it: segments 0-1 closed (4 frames each), frame 8 flushed into segment_2.partial."""
    return interrupted_copy(tmp_path_factory.mktemp("signals_recover"), FRAMES)


def _trap_file_operations(trap: Callable[[], None]) -> None:
    """Call ``trap`` before every write, rename, link and removal `recover` makes."""
    def trapped(fn):
        def call(*args, **kwargs):
            trap()
            return fn(*args, **kwargs)
        return call
    mcap = bag_files._ChecksummedMcapWriter
    mcap.write, mcap.close_chunk = trapped(mcap.write), trapped(mcap.close_chunk)
    for cls in (Path,):
        cls.replace, cls.unlink, cls.write_text = trapped(cls.replace), trapped(cls.unlink), trapped(cls.write_text)
    recovery.os.link = trapped(recovery.os.link)
    recovery.shutil.rmtree, recovery.shutil.move = trapped(recovery.shutil.rmtree), trapped(recovery.shutil.move)


def _recover_signalled(interrupted, tmp_path_factory, sig, at, damage):
    tmp = tmp_path_factory.getbasetemp()
    bag, progress = tmp / f"sig_recover_{next(_counter)}", tmp / f"sig_progress_{next(_counter)}"
    shutil.copytree(interrupted, bag)
    if damage:  # a flipped byte in frame 4 (closed segment 1): recover rewrites that file too
        f = bag / "live_1.mcap"
        data = bytearray(f.read_bytes())
        data[data.find(FRAMES[4].rgb.tobytes()) + 7] ^= 0x10
        f.write_bytes(bytes(data))
    rc, output = run_forked(["recover", str(bag)],
                            lambda: _trap_file_operations(_trap(at, sig, lambda: "", progress)), tmp / "log")
    event(f"recover: {'no signal' if rc == 0 else signal.Signals(sig).name}")
    if rc != 0:
        assert progress.exists()
        if sig == signal.SIGTERM:
            assert rc == 128 + signal.SIGTERM, output[-2000:]
            _one_line_end(output, "selfpose recover: terminated (SIGTERM)")
        else:
            assert rc == -signal.SIGKILL, output[-2000:]
        if not damage:  # interrupted anywhere, the bag still opens with at least its closed segments
            with Recording(bag) as rec:
                assert len(rec) >= 8
        assert main(["recover", str(bag)]) == 0
    assert not [p.name for p in bag.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    want = FRAMES[:4] + FRAMES[5:] if damage else FRAMES
    with Recording(bag) as rec:
        got = list(rec)
    assert [g.stamp_ns for g in got] == [f.stamp_ns for f in want]  # every frame once
    for g, f in zip(got, want):
        np.testing.assert_array_equal(g.rgb, f.rgb)


test_recover_signalled, test_recover_signalled_long = fuzz(
    15, sig=st.sampled_from([signal.SIGTERM, signal.SIGKILL]), at=st.integers(1, 32),
    damage=st.sampled_from([0, 1]))(_recover_signalled)
