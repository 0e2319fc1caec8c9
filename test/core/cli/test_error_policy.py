"""The `selfpose` exit codes: a SelfposeError (or a full disk) is one line and 2, anything else one line "internal
error ..." and 3, --debug adds the traceback, Ctrl-C is 130; and the inputs that gave tracebacks before."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfpose_core.cli import recover as recover_cli
from selfpose_core.cli.main import main, one_line
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.errors import RecordingError
from selfpose_core.types import CameraIntrinsics, Frame

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def bag(tmp_path, rng):
    K = CameraIntrinsics(40.0, 40.0, 19.5, 14.5, 40, 30)
    with RecordingWriter(tmp_path / "bag") as w:
        for i in range(3):
            w.write_frame(Frame(rgb=rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), K=K,
                                stamp_ns=10**18 + i * 10**8, T_world_cam=np.eye(4)))
    return tmp_path / "bag"


def _raising(exc: BaseException):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc, rc, line", [
    (RecordingError("bag B: topic /x is missing\nsecond line"), 2,
     "selfpose recover: error: bag B: topic /x is missing | second line"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/disk"), 2,
     "selfpose recover: error: [Errno 28] No space left on device: '/full/disk'"),
    (ZeroDivisionError("division by zero"), 3,
     "selfpose recover: internal error: ZeroDivisionError: division by zero (run with --debug for the traceback, "
     "please report)"),
    (KeyboardInterrupt(), 130, "selfpose recover: interrupted"),
])
def test_exit_codes_and_one_line(monkeypatch, capsys, tmp_path, exc, rc, line):
    monkeypatch.setattr(recover_cli, "run", _raising(exc))
    assert main(["recover", str(tmp_path)]) == rc
    assert capsys.readouterr().err.strip() == line


def test_debug_adds_the_traceback_and_keeps_the_exit_code(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(recover_cli, "run", _raising(ZeroDivisionError("division by zero")))
    assert main(["--debug", "recover", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "selfpose recover: internal error: ZeroDivisionError")


def test_error_lines_are_bounded():
    line = one_line("x" * 10**6)
    assert len(line) < 2100 and line.endswith("(998000 more characters)")


def test_a_real_bug_in_a_subprocess_is_one_line_and_3(tmp_path):
    """The real command line, no traceback: a bug injected into `selfpose recover`."""
    code = ("import sys, selfpose_core.data.recovery as r\n"
            "r.salvage_mcap = lambda path: 1 / 0\n"
            "from selfpose_core.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "bag_0.mcap").write_bytes(b"\x89MCAP0\r\n")
    res = subprocess.run([sys.executable, "-c", code, "recover", str(bag)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("selfpose recover: internal error: ZeroDivisionError: division by "
                                                   "zero (run with --debug for the traceback, please report)")
    assert "Traceback" not in res.stderr


def test_inspect_thumbs_and_unwritable_out(bag, tmp_path, capsys):
    assert main(["inspect", str(bag), "--thumbs", "0", "--out", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.strip() == "selfpose inspect: error: --thumbs must be >= 1, got 0"
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sheet.png"  # a path below a file
    assert main(["inspect", str(bag), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"selfpose inspect: error: --out {out}: cannot write the contact sheet") and "\n" not in err


def test_adapt_threads_must_be_positive(tmp_path, capsys):
    assert main(["adapt", "--bag", "B", "--objects", "O", "--model", "M", "--out", str(tmp_path / "o"),
                 "--threads", "-3"]) == 2
    assert capsys.readouterr().err.strip() == "selfpose adapt: error: --threads must be >= 1, got -3"
