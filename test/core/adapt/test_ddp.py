"""`torchrun --nproc_per_node=2 selfpose adapt ...` (gloo on CPU): frames are split over the ranks, rank 0 writes
the outputs, and the fine-tuned replicas keep identical weights although each rank draws different batches
(gradients are all-reduced; batch-norm running statistics stay per rank, rank 0's are saved)."""
from __future__ import annotations

import subprocess
import sys

import torch

SETTINGS = ["--set", "stages=[multiview_consensus, pseudo_label_finetune]",
            "--set", "multiview_consensus.refine_iterations=3", "--set", "multiview_consensus.crop_size=24",
            "--set", "multiview_consensus.refine_batch=4",
            "--set", "pseudo_label_finetune.trainer={steps: 2, checkpoint_every: 1, log_every: 1, warmup_steps: 1}",
            "--set", "pseudo_label_finetune.crop_batch=2", "--set", "pseudo_label_finetune.scene_batch=1",
            "--no-progress", "--threads", "1"]


def test_two_process_gloo(adapt_scene, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(adapt_scene.harness), str(adapt_scene.estimates), "adapt", "--bag", str(adapt_scene.bag),
           "--objects", str(adapt_scene.objects_yaml), "--model", str(adapt_scene.model), "--out", str(out), *SETTINGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    work = out / "work"
    parts = [work / "multiview_consensus" / f"estimates.rank{r}of2.npz" for r in range(2)]
    assert all(p.is_file() for p in parts)
    assert (out / "bundle.yaml").is_file() and (out / "report.html").is_file()
    assert res.stdout.count("adapted model:") == 1  # printed by rank 0 only
    ck = [torch.load(work / "pseudo_label_finetune" / d / "checkpoint.pt", weights_only=True)
          for d in ("train", "train.rank1")]
    assert ck[0]["step"] == ck[1]["step"] == 2
    for name in ("pose_net", "detector"):
        a, b = ck[0]["modules"][name], ck[1]["modules"][name]
        params = [k for k in a if "running_" not in k and "num_batches" not in k]  # BN statistics stay per rank
        assert params and all(torch.equal(a[k], b[k]) for k in params), name
        assert any(not torch.equal(a[k], b[k]) for k in a if "running_" in k)  # ranks saw different batches
