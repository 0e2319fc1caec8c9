"""`selfpose adapt` as users run it: kill -9 in the middle of a stage, then --resume finishes it; --eval-gt adds
held-out accuracy and the consensus error to the report; bad input gives one clear line and exit code 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from selfpose_core.cli.main import main
from selfpose_core.models.bundle import ModelBundle

SETTINGS = ["--set", "stages=[multiview_consensus, pseudo_label_finetune]",
            "--set", "multiview_consensus.refine_iterations=5", "--set", "multiview_consensus.crop_size=24",
            "--set", "multiview_consensus.refine_batch=4",
            "--set", "pseudo_label_finetune.trainer={steps: 8, checkpoint_every: 1, log_every: 1, warmup_steps: 1}",
            "--set", "pseudo_label_finetune.crop_batch=4", "--set", "pseudo_label_finetune.scene_batch=2",
            "--set", "eval.max_images=2", "--no-progress", "--threads", "1"]


def _cmd(scene, out, *extra):
    return [sys.executable, str(scene.harness), str(scene.estimates), "adapt", "--bag", str(scene.bag),
            "--objects", str(scene.objects_yaml), "--model", str(scene.model), "--out", str(out), *SETTINGS, *extra]


def test_kill9_then_resume_with_eval_gt(adapt_scene, tmp_path):
    out = tmp_path / "adapted"
    ckpt = out / "work" / "pseudo_label_finetune" / "train" / "checkpoint.pt"
    proc = subprocess.Popen(_cmd(adapt_scene, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    state = yaml.safe_load((out / "work" / "state.yaml").read_text())
    assert state["done"] == ["multiview_consensus"]
    estimates = out / "work" / "multiview_consensus" / "estimates.rank0of1.npz"
    stamp = estimates.stat().st_mtime_ns

    res = subprocess.run(_cmd(adapt_scene, out, "--resume", "--eval-gt", str(adapt_scene.bop)),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "multiview_consensus already finished" in res.stderr
    assert estimates.stat().st_mtime_ns == stamp
    assert "adapted model:" in res.stdout
    bundle = ModelBundle.load(out)
    metrics = bundle.spec.metrics["adapt"]
    assert {"pretrained", "multiview_consensus", "pseudo_label_finetune"} <= set(metrics)
    assert "ad_di_recall" in metrics["pseudo_label_finetune"]["mean"]
    cons = metrics["multiview_consensus"]["consensus"]
    assert all(v["world_t_cm"] < 3.0 and v["frame_t_cm_median"] < 1.5 for v in cons.values())  # 5 iterations only
    cams = metrics["multiview_consensus"]["cameras"]
    assert 0 <= cams["t_cm_median"] <= cams["t_cm_max"] < 10.0 and cams["r_deg_max"] < 5.0  # 5 iterations only
    assert set(metrics["pseudo_label_finetune"]["ad_di_recall_by_scene"]) == {1}  # one held-out trajectory
    html = (out / "report.html").read_text()
    assert "Held-out accuracy" in html and "consensus error per object" in html
    assert "camera pose error" in html and "per held-out scene" in html


def test_bad_input_is_one_line_and_exit_2(adapt_scene, tmp_path, capsys):
    rc = main(["adapt", "--bag", str(tmp_path / "nope"), "--objects", str(adapt_scene.objects_yaml),
               "--model", str(adapt_scene.model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "adapt.yaml"
    bad.write_text("multiview_consensus: {drift: sideways}\n")
    rc = main(["adapt", "--bag", str(adapt_scene.bag), "--objects", str(adapt_scene.objects_yaml),
               "--model", str(adapt_scene.model), "--out", str(tmp_path / "o"), "--config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "adapt.yaml: multiview_consensus.drift" in err
