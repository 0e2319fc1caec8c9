"""The adapt action's work, without rclpy: `selfpose adapt` in a child process, its progress, cancel and resume.

`AdaptJob` starts ``python -m selfpose_core.cli.main adapt ...`` in its own process group (the node's executor never
waits on the training), reads its output in a thread and keeps the latest `Progress` (`ProgressParser`: the
pipeline's "adapt: stage i/n NAME" lines and the trainer's progress bars ``NAME: 45%|...| 450/1000 [01:23<01:42,
..., loss=0.1234]``). ``cancel()`` sends SIGINT, which `selfpose adapt` handles like Ctrl-C: the checkpoints written
so far stay in ``OUTPUT/work``, and a later goal with ``resume`` continues there (``--resume``); SIGTERM follows
after ``grace_s`` and SIGKILL after twice that, so a cancel always ends the child. `AdaptServer` holds at most one
job: a second goal is refused while one runs. `read_figures` gives the figures of a finished run's report
(OUTPUT/work/state.yaml) as name -> value.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from selfpose_core.config_io import load_yaml
from selfpose_core.errors import SelfposeError

EXIT_INTERRUPTED = 130


@dataclass(slots=True)
class AdaptGoal:
    """What the action's goal asks for (Adapt.action)."""

    recording: str
    objects: str
    base_model: str
    output: str
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE, as `selfpose adapt --set`
    profile: str = ""  # recording profile ('' = the bag's recording.yaml or detected)
    resume: bool = False
    device: str = ""  # '' = the config's


@dataclass(slots=True)
class Progress:
    """The latest progress of a job (feedback). NaN where not known yet."""

    stage: str = ""
    stage_index: int = 0  # 1-based; 0 before the first stage
    stages: int = 0
    step: int = 0
    total: int = 0
    loss: float = math.nan
    eta_s: float = math.nan
    line: str = ""  # the last line of output


_STAGE = re.compile(r"adapt: stage (\d+)/(\d+) (\S+)")
_BAR = re.compile(r"(?P<desc>[^\s:|][^:|]*?):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+)(?P<post>[^\]]*)\]")
_LOSS = re.compile(r"loss=([-+0-9.eEnaif]+)")


def _seconds(clock: str) -> float:
    """tqdm's ``[H:]MM:SS`` -> seconds (NaN for ``?``)."""
    if not clock or "?" in clock:
        return math.nan
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


class ProgressParser:
    """Turns a child's output (chunks with ``\\n`` and tqdm's ``\\r``) into `Progress`."""

    def __init__(self) -> None:
        self.progress = Progress()
        self._partial = ""

    def feed(self, text: str) -> None:
        parts = re.split(r"[\r\n]", self._partial + text)
        self._partial = parts.pop()
        for line in parts:
            self.line(line)

    def line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        p = self.progress
        p.line = line
        m = _STAGE.search(line)
        if m:
            p.stage_index, p.stages, p.stage = int(m.group(1)), int(m.group(2)), m.group(3)
            p.step, p.total, p.loss, p.eta_s = 0, 0, math.nan, math.nan
            return
        m = _BAR.search(line)
        if m:
            p.step, p.total = int(m.group("n")), int(m.group("total"))
            p.eta_s = _seconds(m.group("eta"))
            loss = _LOSS.search(m.group("post"))
            if loss:
                try:
                    p.loss = float(loss.group(1))
                except ValueError:
                    pass
            if not p.stage:
                p.stage = m.group("desc").strip()


def adapt_command(goal: AdaptGoal, python: str = sys.executable) -> list[str]:
    """The child's command line: `selfpose adapt` with the goal's options."""
    cmd = [python, "-m", "selfpose_core.cli.main", "adapt", "--bag", goal.recording, "--objects", goal.objects,
           "--model", goal.base_model, "--out", goal.output]
    for item in goal.overrides:
        cmd += ["--set", item]
    if goal.profile:
        cmd += ["--profile", goal.profile]
    if goal.device:
        cmd += ["--device", goal.device]
    if goal.resume:
        cmd.append("--resume")
    return cmd


def read_figures(output: str | Path) -> dict[str, float]:
    """The numbers of a finished run's report: per stage its losses, held-out means (with --eval-gt) and per-object
    consensus figures, from OUTPUT/work/state.yaml, as ``stage.key...`` -> value. Empty when there is none."""
    path = Path(output) / "work" / "state.yaml"
    if not path.is_file():
        return {}
    try:
        state = load_yaml(path, "adapt state")
    except SelfposeError:
        return {}
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, bool) or len(out) >= 500:
            return
        if isinstance(value, (int, float)):
            out[prefix] = float(value)
        elif isinstance(value, dict) and depth > 0:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v, depth - 1)

    for stage, result in ((state or {}).get("results") or {}).items():
        if not isinstance(result, dict):
            continue
        walk(f"{stage}.losses", result.get("losses") or {}, 1)
        walk(f"{stage}.mean", (result.get("metrics") or {}).get("mean") or {}, 1)
        objects = (result.get("details") or {}).get("objects") or {}
        for name, values in objects.items() if isinstance(objects, dict) else ():
            walk(f"{stage}.{name}", {k: v for k, v in (values or {}).items() if not isinstance(v, list)}, 1)
    return out


@dataclass(slots=True)
class AdaptOutcome:
    """How a job ended (the action's result)."""

    success: bool
    cancelled: bool
    returncode: int
    bundle: str
    report: str
    message: str
    figures: dict[str, float]


class AdaptJob:
    """One `selfpose adapt` run in a child process.

    Args:
        goal: what to adapt.
        command: the child's command line (default `adapt_command(goal)`; tests pass a stand-in).
        grace_s: after ``cancel()``, SIGTERM follows after this long, SIGKILL after twice this long.
        tail_lines: output lines kept for the result's message.
    """

    def __init__(self, goal: AdaptGoal, command: list[str] | None = None, grace_s: float = 30.0,
                 tail_lines: int = 40, env: dict[str, str] | None = None) -> None:
        self.goal = goal
        self.command = command or adapt_command(goal)
        self.grace_s = float(grace_s)
        self.parser = ProgressParser()
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.cancel_requested = False
        self._lock = threading.Lock()
        self._env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the child (its own session: a Ctrl-C in the node's terminal reaches the node, which cancels)."""
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, env=self._env)
        self._reader = threading.Thread(target=self._read, name="adapt-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            chunk = self._proc.stdout.read1(4096) if hasattr(self._proc.stdout, "read1") else \
                self._proc.stdout.read(4096)
            if not chunk:
                break
            text = chunk.decode("utf-8", errors="replace")
            with self._lock:
                self.parser.feed(text)
                for line in re.split(r"[\r\n]", text):
                    if line.strip() and "%|" not in line:  # progress bars are not kept, they are the feedback
                        self.tail.append(line.strip())
        with self._lock:
            self.parser.feed("\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def progress(self) -> Progress:
        with self._lock:
            return replace(self.parser.progress)

    def cancel(self) -> None:
        """Ask the child to stop like Ctrl-C (checkpoints kept); escalate to SIGTERM / SIGKILL if it lingers."""
        if not self.running or self.cancel_requested:
            return
        self.cancel_requested = True
        self._signal(signal.SIGINT)
        threading.Thread(target=self._escalate, name="adapt-cancel", daemon=True).start()

    def _escalate(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.wait(self.grace_s) is not None:
                return
            self._signal(sig)

    def _signal(self, sig: int) -> None:
        try:
            if self._proc is not None:
                os.killpg(self._proc.pid, sig)  # the child and its DataLoader workers
        except ProcessLookupError:
            pass

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The child's exit code, or None if it still runs after ``timeout_s``."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(5.0)
        return code

    def outcome(self) -> AdaptOutcome:
        """How the finished job ended (call after `wait`)."""
        code = self.wait(0) if self._proc is not None else None
        if code is None:
            raise RuntimeError("the adapt job has not finished")
        out = Path(self.goal.output)
        success = code == 0 and (out / "bundle.yaml").is_file()
        cancelled = self.cancel_requested and not success
        with self._lock:
            errors = [line for line in self.tail if line.startswith("selfpose adapt:")]
            last = errors[-1] if errors else (self.tail[-1] if self.tail else "")
        if success:
            message = f"adapted model written to {out}"
        elif cancelled:
            message = (f"cancelled (exit {code}); checkpoints kept in {out / 'work'}: send the goal again with "
                       "resume to continue")
        else:
            message = f"selfpose adapt failed (exit {code}): {last}"
        report = out / "report.html"
        return AdaptOutcome(success, cancelled, int(code), str(out) if success else "",
                            str(report) if success and report.is_file() else "", message,
                            read_figures(out) if success else {})


class AdaptServer:
    """At most one `AdaptJob` at a time (the action server's logic)."""

    def __init__(self, job_factory: Any = AdaptJob) -> None:
        self.job_factory = job_factory
        self.job: AdaptJob | None = None
        self._reserved = False
        self._lock = threading.Lock()

    def check(self, goal: AdaptGoal) -> str:
        """Why ``goal`` cannot be accepted now ('' if it can)."""
        if not all((goal.recording, goal.objects, goal.base_model, goal.output)):
            return "recording, objects, base_model and output are all required"
        if self._reserved or (self.job is not None and self.job.running):
            running = self.job.goal.output if self.job is not None else "being started"
            return f"an adaptation is running (output {running}); cancel it or wait for its result"
        return ""

    def reserve(self, goal: AdaptGoal) -> str:
        """Accept ``goal`` if no job runs (then '' and the slot is held until `start`), else the reason."""
        with self._lock:
            why = self.check(goal)
            if not why:
                self._reserved = True
            return why

    def start(self, goal: AdaptGoal) -> AdaptJob:
        """Start the reserved goal's job."""
        with self._lock:
            try:
                self.job = self.job_factory(goal)
                self.job.start()
            finally:
                self._reserved = False
            return self.job
