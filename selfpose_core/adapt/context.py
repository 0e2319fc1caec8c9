"""What every adaptation stage works with: objects, the recording, the current networks, pseudo labels, where to
checkpoint, the device, seeds and the distributed setting.

DDP: under ``torchrun`` each process has its own context with ``dist.rank`` / ``dist.world_size``; a stage trains
through :meth:`AdaptContext.trainer` (per-rank checkpoint directory, progress bar on rank 0 only) and calls
:meth:`AdaptContext.wrap` on the networks it runs forward, which wraps them in ``DistributedDataParallel`` when
``world_size > 1`` (gradients are averaged across processes; the unwrapped modules stay in ``ctx.bundle`` and in
the checkpoints, so a resumed run may use another number of processes). Each rank draws different batches: use
:meth:`AdaptContext.data_seed`.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.recording import Recording
from selfpose_core.geometry.symmetry import symmetry_transforms
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.models.harness import TrainingJob, TrainingRecord, run_job
from selfpose_core.models.scalar_log import ScalarLog
from selfpose_core.models.trainer import Trainer, TrainerConfig
from selfpose_core.types import CameraIntrinsics, ObjectModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DistInfo:
    """This process' place in a distributed run (rank 0 of 1 when single-process)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for all processes (no-op when single-process)."""
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable plain data only; no-op when single-process)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


@dataclass(slots=True)
class AdaptContext:
    """Shared state of one adaptation run; stages mutate ``bundle`` and ``pseudo`` in place."""

    objects: list[ObjectModel]
    recording: Recording  # frames + T_world_cam, never ground truth
    bundle: ModelBundle
    work_dir: Path
    objects_config: Path
    device: str = "cpu"
    seed: int = 0
    trainer_defaults: TrainerConfig = field(default_factory=TrainerConfig)
    pseudo: PseudoLabels | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    resume: bool = False
    progress: bool = True

    # ------------------------------------------------------------------ paths, seeds
    def stage_dir(self, stage: str) -> Path:
        """``work_dir/<stage>`` (created): the stage's checkpoints, logs and artefacts."""
        d = self.work_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_seed(self, stage: str) -> int:
        """A seed for ``stage`` derived from the run's seed (same on every rank: model init, shared choices)."""
        return (self.seed * 1_000_003 + zlib.crc32(stage.encode())) % 2 ** 31

    def data_seed(self, stage: str) -> int:
        """A seed for the batches of ``stage``, different on every rank."""
        return (self.stage_seed(stage) + 7919 * self.dist.rank) % 2 ** 31

    def rng(self, stage: str) -> np.random.Generator:
        """A numpy Generator for ``stage`` on this rank."""
        return np.random.default_rng([self.seed, zlib.crc32(stage.encode()), self.dist.rank])

    def generator(self, stage: str) -> torch.Generator:
        """A torch Generator for ``stage`` on this rank."""
        return torch.Generator().manual_seed(self.data_seed(stage))

    # ------------------------------------------------------------------ recording, objects
    @property
    def camera(self) -> CameraIntrinsics:
        """Intrinsics of the recording's first frame."""
        return self.recording.intrinsics(0)

    def geometries(self, symmetry_samples: int = 36) -> list[ObjectGeometry]:
        """Render-ready geometry of each object with its symmetry transforms (identity first)."""
        return [ObjectGeometry.from_model(m, symmetry_transforms(m.symmetry, n_continuous=symmetry_samples))
                for m in self.objects]

    # ------------------------------------------------------------------ training
    def trainer_config(self, stage: str, overrides: TrainerConfig | None = None) -> TrainerConfig:
        """The run's trainer defaults, replaced by the stage's own ``overrides`` when given; the seed is the stage's
        and the progress bar shows on rank 0 only."""
        base = overrides if overrides is not None else self.trainer_defaults
        return replace(base, seed=self.stage_seed(stage), progress=self.progress and self.dist.is_main)

    def trainer(self, stage: str, modules: dict[str, nn.Module], config: TrainerConfig,
                subdir: str = "train") -> Trainer:
        """A Trainer checkpointing into ``stage_dir(stage)/subdir`` (``subdir.rank<r>`` on ranks > 0)."""
        d = self.stage_dir(stage) / (subdir if self.dist.is_main else f"{subdir}.rank{self.dist.rank}")
        return Trainer(modules, d, config, device=self.device, name=stage)

    def train(self, job: TrainingJob, config: TrainerConfig) -> tuple[TrainingRecord, Path]:
        """Run ``job`` on the training harness with the stage's trainer (:meth:`trainer`), continuing from its
        checkpoint when the run resumes; its record goes into the bundle's provenance. Returns the record and the
        checkpoint's path."""
        trainer = self.trainer(job.name, job.modules, config)
        record = run_job(job, trainer, self.bundle.spec.provenance,
                         resume=self.resume and trainer.checkpoint_path.is_file())
        return record, trainer.checkpoint_path

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when world_size > 1 (gradients averaged), else itself."""
        if not self.dist.enabled:
            return module
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)

    def scalar_log(self, stage: str) -> ScalarLog:
        """TensorBoard-readable scalars of a stage outside a Trainer (``stage_dir(stage)/logs``); close it."""
        sub = "logs" if self.dist.is_main else f"logs.rank{self.dist.rank}"
        return ScalarLog(self.stage_dir(stage) / sub)
