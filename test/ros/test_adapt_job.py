"""The adapt action's logic without ROS: progress parsed from real tqdm bars and the pipeline's stage lines, the
child process (cancel keeps the checkpoint, a resumed goal continues from it), one goal at a time, the real
`selfpose adapt` command line, the report's figures."""
from __future__ import annotations

import io
import math
import sys
import textwrap
import time

import pytest
import yaml
from tqdm import tqdm

from selfpose_ros.adapt_job import (AdaptGoal, AdaptJob, AdaptServer, ProgressParser, adapt_command,
                                    read_figures)

# A stand-in for `selfpose adapt`: two stages of STEPS steps with a tqdm bar each (as the trainer draws them, to a
# pipe), a checkpoint file after every step, Ctrl-C handled by the entry point's StopSignals, --resume continues.
FAKE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from tqdm import tqdm
    from selfpose_core.cli.signals import StopSignals
    args = sys.argv[1:]
    out = Path(args[args.index("--out") + 1]); work = out / "work"; work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint.json"
    def save(state):  # atomic, as the trainer's checkpoints: Ctrl-C between truncate and write leaves no empty file
        (work / "checkpoint.tmp").write_text(json.dumps(state)); os.replace(work / "checkpoint.tmp", ckpt)
    state = json.loads(ckpt.read_text()) if "--resume" in args and ckpt.exists() else {"stage": 0, "step": 0}
    if "--resume" in args:
        print(f"resumed at stage {state['stage']} step {state['step']}", flush=True)
    STEPS = 60
    try:
        with StopSignals():
            for s, name in enumerate(["multiview_consensus", "pseudo_label_finetune"]):
                if s < state["stage"]:
                    continue
                print(f"INFO selfpose_core.adapt.pipeline: adapt: stage {s + 1}/2 {name}", file=sys.stderr, flush=True)
                start = state["step"] if s == state["stage"] else 0
                bar = tqdm(total=STEPS, initial=start, desc=name, mininterval=0)
                for step in range(start, STEPS):
                    time.sleep(0.02)
                    bar.update(1)
                    bar.set_postfix(loss=f"{1.0 / (step + 1):.4f}")
                    save({"stage": s, "step": step + 1})
                bar.close()
                state = {"stage": s + 1, "step": 0}
                save(state)
    except KeyboardInterrupt:
        print("selfpose adapt: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    (out / "bundle.yaml").write_text("format_version: 1\\n")
    (work / "state.yaml").write_text(
        "done: [multiview_consensus, pseudo_label_finetune]\\nresults:\\n"
        "  multiview_consensus:\\n    losses: {}\\n    details:\\n      objects:\\n"
        "        cereal_box: {estimates: 43, confidence: 0.96, T_world_obj: [[1, 0], [0, 1]]}\\n"
        "  pseudo_label_finetune:\\n    losses: {loss: 0.25}\\n    metrics:\\n      mean: {ad_di_recall: 0.79}\\n")
""")


def _goal(tmp_path, **kw):
    return AdaptGoal(recording=str(tmp_path / "bag"), objects=str(tmp_path / "objects.yaml"),
                     base_model=str(tmp_path / "pre"), output=str(tmp_path / "adapted"), **kw)


def _fake_job(goal, script):
    return AdaptJob(goal, command=[sys.executable, str(script)] + adapt_command(goal)[4:], grace_s=10)


def _wait_for(cond, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_progress_from_real_tqdm_bars_and_stage_lines():
    buf = io.StringIO()
    bar = tqdm(total=1000, desc="pseudo_label_finetune", file=buf, mininterval=0)
    bar.update(450)
    bar.set_postfix(loss="0.1234")
    bar.close()
    parser = ProgressParser()
    parser.feed("INFO selfpose_core.adapt.pipeline: adapt: stage 2/3 pseudo_label_finetune\n")
    p = parser.progress
    assert (p.stage, p.stage_index, p.stages, p.step, p.total) == ("pseudo_label_finetune", 2, 3, 0, 0)
    text = buf.getvalue()
    parser.feed(text[:len(text) // 2])  # chunks end anywhere
    parser.feed(text[len(text) // 2:] + "\n")
    p = parser.progress
    assert (p.step, p.total, p.loss) == (450, 1000, 0.1234)
    assert math.isfinite(p.eta_s) and p.eta_s >= 0
    parser.feed("x:  10%|#         | 1/10 [00:01<?, ?it/s]\n")  # ETA unknown
    assert math.isnan(parser.progress.eta_s) and parser.progress.step == 1
    parser.feed("INFO adapt: stage 3/3 dual_scale\n")  # a new stage resets the counters
    assert (parser.progress.stage, parser.progress.step, math.isnan(parser.progress.loss)) == ("dual_scale", 0, True)


def test_cancel_keeps_the_checkpoint_a_second_goal_is_refused_and_resume_continues(tmp_path):
    script = tmp_path / "fake_adapt.py"
    script.write_text(FAKE)
    server = AdaptServer(job_factory=lambda g: _fake_job(g, script))
    goal = _goal(tmp_path)
    assert server.reserve(goal) == ""
    assert "being started" in server.reserve(goal)
    job = server.start(goal)
    _wait_for(lambda: job.progress.step >= 10)
    p = job.progress
    assert p.stage == "multiview_consensus" and p.stage_index == 1 and p.total == 60
    assert p.loss == pytest.approx(1.0 / p.step, rel=0.5)
    assert "an adaptation is running" in server.reserve(_goal(tmp_path, resume=True))
    job.cancel()
    assert job.wait(30) == 130
    out = job.outcome()
    assert out.cancelled and not out.success and "resume" in out.message and out.bundle == ""
    kept = yaml.safe_load((tmp_path / "adapted" / "work" / "checkpoint.json").read_text())
    assert kept["stage"] == 0 and kept["step"] >= 10

    resumed = _goal(tmp_path, resume=True)
    assert server.reserve(resumed) == ""
    job = server.start(resumed)
    _wait_for(lambda: job.progress.step > 0)
    assert job.progress.step >= kept["step"]  # continued, not restarted
    assert job.wait(60) == 0
    out = job.outcome()
    assert out.success and not out.cancelled and out.bundle == str(tmp_path / "adapted")
    assert any(f"resumed at stage 0 step {kept['step']}" in line for line in job.tail)
    assert out.figures == {"multiview_consensus.cereal_box.estimates": 43.0,
                           "multiview_consensus.cereal_box.confidence": 0.96,
                           "pseudo_label_finetune.losses.loss": 0.25,
                           "pseudo_label_finetune.mean.ad_di_recall": 0.79}


def test_a_child_ignoring_sigint_is_ended_by_the_escalation(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\n"
                      "time.sleep(60)\n")
    job = AdaptJob(_goal(tmp_path), command=[sys.executable, str(script)], grace_s=0.5)
    job.start()
    _wait_for(lambda: job.progress.line == "up")
    job.cancel()
    assert job.wait(10) == -15  # SIGTERM after the grace period
    assert job.outcome().cancelled


def test_real_selfpose_adapt_command_reports_its_error(tmp_path):
    goal = _goal(tmp_path, overrides=["seed=3"], profile="realsense", device="cpu")
    cmd = adapt_command(goal)
    assert cmd[1:4] == ["-m", "selfpose_core.cli.main", "adapt"]
    assert cmd[cmd.index("--set") + 1] == "seed=3" and cmd[cmd.index("--profile") + 1] == "realsense"
    assert "--resume" not in cmd and "--resume" in adapt_command(_goal(tmp_path, resume=True))
    job = AdaptJob(goal)
    job.start()
    assert job.wait(120) == 2
    out = job.outcome()
    assert not out.success and not out.cancelled
    assert out.message.startswith("selfpose adapt failed (exit 2): selfpose adapt: error:")


def test_incomplete_goal_is_refused(tmp_path):
    assert "all required" in AdaptServer().reserve(AdaptGoal("", "o", "m", "out"))
    assert read_figures(tmp_path) == {}
