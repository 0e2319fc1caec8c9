"""The training harness: a job (config, data recipe, loss) trains on the one loop, resumes after an interruption
exactly where an uninterrupted run would be, and leaves one typed record in the provenance."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from selfpose_core.models.harness import (LossWeights, StepBatches, TrainingJob, TrainingRecord, joint_losses,
                                          run_job, step_batches)
from selfpose_core.models.trainer import Trainer, TrainerConfig


@dataclass
class LineConfig:
    slope: float = 2.0
    batch: int = 8


class Batches(torch.utils.data.Dataset):
    """Item i: a batch of points on the config's line, drawn from a generator seeded by i."""

    def __init__(self, cfg: LineConfig, n: int, fail_at: int | None = None) -> None:
        self.cfg, self.n, self.fail_at = cfg, n, fail_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise KeyboardInterrupt  # the process is stopped while reading batch i
        x = torch.randn(self.cfg.batch, 1, generator=torch.Generator().manual_seed(i))
        return x, self.cfg.slope * x + 1.0


def _job(cfg, steps, grad_accum=1, fail_at=None):
    torch.manual_seed(0)
    line = torch.nn.Linear(1, 1)

    def losses(batch, step):
        x, y = batch
        return {"loss": ((line(x) - y) ** 2).mean(), "step": float(step)}

    data = Batches(cfg, steps * grad_accum, fail_at)
    return TrainingJob("line", cfg, {"line": line}, step_batches(data, grad_accum), losses, {"points": cfg.batch})


def _trainer(job, out, steps, grad_accum=1):
    return Trainer(job.modules, out, TrainerConfig(steps=steps, grad_accum=grad_accum, lr=0.3, warmup_steps=1,
                                                   log_every=1, checkpoint_every=1, progress=False), name=job.name)


def test_a_job_trains_and_leaves_one_record(tmp_path):
    cfg = LineConfig()
    job = _job(cfg, 40)
    provenance = {}
    record = run_job(job, _trainer(job, tmp_path, 40), provenance, resume=False)
    assert isinstance(record, TrainingRecord) and provenance["stages"] == [record.to_yaml()]
    assert record.to_yaml() == {"stage": "line", "steps": 40, "config": {"slope": 2.0, "batch": 8},
                                "final_losses": {k: round(v, 6) for k, v in record.final_losses.items()},
                                "details": {"points": 8}}
    assert record.final_losses["loss"] < 0.1 and record.final_losses["step"] == 39.0
    assert not job.modules["line"].training
    assert float(job.modules["line"].weight.detach()) == pytest.approx(2.0, abs=0.3)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_continues_where_the_interrupted_run_stopped(tmp_path, grad_accum):
    cfg = LineConfig()
    whole = _job(cfg, 6, grad_accum)
    run_job(whole, _trainer(whole, tmp_path / "whole", 6, grad_accum), {}, resume=False)
    cut = _job(cfg, 6, grad_accum, fail_at=4 * grad_accum)  # killed while reading the batches of step 5
    with pytest.raises(KeyboardInterrupt):
        run_job(cut, _trainer(cut, tmp_path / "cut", 6, grad_accum), {}, resume=False)
    again = _job(cfg, 6, grad_accum)
    provenance = {}
    run_job(again, _trainer(again, tmp_path / "cut", 6, grad_accum), provenance, resume=True)
    for a, b in zip(whole.modules["line"].parameters(), again.modules["line"].parameters()):
        assert torch.equal(a, b)
    assert len(provenance["stages"]) == 1


def test_step_batches_start_at_the_step_and_keep_accumulated_batches_together():
    data = list(range(12))
    assert list(step_batches(data, grad_accum=3)(2)) == [6, 7, 8, 9, 10, 11]
    assert list(step_batches(data, grad_accum=1)(0)) == data


class _Const(torch.utils.data.Dataset):
    def __init__(self, value):
        self.value = value

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return {"v": torch.tensor(self.value)}


def test_step_batches_mix_real_samples_at_the_asked_fraction():
    data = StepBatches(_Const(0.0), _Const(0.0), 50, 10, 40, seed=1, real_crops=_Const(1.0), real_scenes=_Const(1.0),
                       real_fraction=0.3)
    share = torch.stack([data[i]["crops"]["v"] for i in range(40)]).mean()
    assert float(share) == pytest.approx(0.3, abs=0.03)


class _Det(torch.nn.Module):
    def forward(self, image):
        b, _, h, w = image.shape
        return {"heatmap": torch.zeros(b, 1, h // 4, w // 4), "offset": torch.zeros(b, 1, 2, h // 4, w // 4),
                "log_size": torch.zeros(b, 1, 2, h // 4, w // 4), "mask_logits": torch.zeros(b, 1, h // 4, w // 4)}


def test_joint_loss_adds_the_weighted_detector_terms(monkeypatch):
    import selfpose_core.models.harness as harness

    monkeypatch.setattr(harness, "supervised_pose_losses", lambda *a, **k: {"pose_loss": torch.tensor(1.5)})
    monkeypatch.setattr(harness, "detector_losses", lambda *a, **k: {"heatmap": torch.tensor(1.0),
                                                                      "box": torch.tensor(2.0),
                                                                      "mask": torch.tensor(4.0)})
    batch = {"crops": {"image": torch.zeros(1, 3, 8, 8), "obj_index": torch.zeros(1, dtype=torch.int64)},
             "scenes": {"image": torch.zeros(1, 3, 8, 8), "boxes": None, "present": None, "masks": None}}
    batch["scenes"] = {k: v if v is not None else torch.zeros(1) for k, v in batch["scenes"].items()}

    def net(image, obj_index):
        return {}

    w = LossWeights(heatmap=0.5, box=0.25, detector_mask=2.0)
    assert float(joint_losses(net, None, batch, w, 0.1, 4, "cpu")["loss"]) == 1.5
    res = joint_losses(net, _Det(), batch, w, 0.1, 4, "cpu")
    assert float(res["loss"]) == 1.5 + 0.5 * 1.0 + 0.25 * 2.0 + 2.0 * 4.0 and float(res["det_box"]) == 2.0
