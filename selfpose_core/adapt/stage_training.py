"""What the self-supervised stages (``pose_consistency``, ``dual_scale``, ``warp_align``) share: the per-object
tensors, the setup of a stage's run (:func:`prepare_stage`: instances, frames, objects, trainer config, network,
synthetic crops) and its training tail (:func:`train_stage`: one forward pass per step, fit with resume,
provenance, :class:`~selfpose_core.adapt.stage.StageResult`)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from selfpose_core.adapt.context import AdaptContext
from selfpose_core.adapt.recording_crops import FrameStore, RecordingInstance, recording_instances
from selfpose_core.adapt.stage import StageResult
from selfpose_core.data.crops import ObjectGeometry
from selfpose_core.data.synthetic import SyntheticConfig, SyntheticCrops
from selfpose_core.models.harness import TrainingJob
from selfpose_core.models.pretrain import PretrainConfig
from selfpose_core.models.trainer import TrainerConfig
from selfpose_core.render.mesh import RenderMesh

LossFn = Callable[[torch.nn.Module, dict[str, Any]], dict[str, torch.Tensor]]


class ObjectTensors:
    """Per-object tensors the stages need: render meshes (vertex normals as attributes), vertex samples,
    symmetry transforms, diameters."""

    def __init__(self, geometries: list[ObjectGeometry], vertex_samples: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.geometries = geometries
        self.meshes = [RenderMesh(g.vertices, g.faces, g.normals) for g in geometries]
        self.points = torch.stack([g.vertices[torch.as_tensor(rng.integers(0, len(g.vertices), vertex_samples))]
                                   for g in geometries])  # (O, P, 3)
        self.symmetries = [torch.as_tensor(g.symmetries, dtype=torch.float32) for g in geometries]
        self.diameters = torch.tensor([g.diameter for g in geometries], dtype=torch.float32)
        self.n_sym = max(len(g.symmetries) for g in geometries)

    def meshes_of(self, obj_index: torch.Tensor) -> list[RenderMesh]:
        return [self.meshes[int(k)] for k in obj_index]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples (dicts of tensors with equal keys) into one batch."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@dataclass(slots=True)
class StageSetup:
    """What a self-supervised stage trains on (from :func:`prepare_stage`)."""

    instances: list[RecordingInstance]
    store: FrameStore
    objs: ObjectTensors
    trainer: TrainerConfig
    net: torch.nn.Module  # the bundle's pose network, on the context's device
    pretrain: PretrainConfig  # losses of the synthetic (pre-training) terms
    synthetic: SyntheticCrops | None
    synthetic_per_batch: int
    seed: int  # the stage's data seed (this rank's)
    n_batches: int  # steps x grad_accum

    def synthetic_crops(self, start: int, n: int) -> dict[str, torch.Tensor]:
        """Synthetic crops ``start`` .. ``start + n - 1`` as one batch."""
        return collate([self.synthetic[start + j] for j in range(n)])

    def synthetic_batch(self, b: int) -> dict[str, torch.Tensor] | None:
        """The synthetic crops of training batch ``b``, or None when the stage uses none."""
        if self.synthetic is None or not self.synthetic_per_batch:
            return None
        return self.synthetic_crops(b * self.synthetic_per_batch, self.synthetic_per_batch)


def prepare_stage(ctx: AdaptContext, name: str, cfg: Any, *, vertex_samples: int = 64, synthetic: bool = True,
                  extra_synthetic: int = 0) -> StageSetup:
    """Validate ``cfg`` and set up stage ``name``: the recording's instances (``cfg.min_confidence``,
    ``cfg.min_detector_score``, ``cfg.max_frames``) and their frames, the objects' tensors, the trainer config
    (``cfg.trainer``), the pose net on the device and, with ``synthetic``, ``cfg.synthetic_batch`` synthetic crops
    per batch plus ``extra_synthetic`` more after those."""
    cfg.validate()
    instances = recording_instances(ctx, min_confidence=cfg.min_confidence, min_score=cfg.min_detector_score,
                                    max_frames=cfg.max_frames)
    store = FrameStore(ctx, [i.frame for i in instances])
    geoms = ctx.geometries(cfg.symmetry_samples)
    objs = ObjectTensors(geoms, vertex_samples, ctx.stage_seed(name))
    tcfg = ctx.trainer_config(name, cfg.trainer)
    net = ctx.bundle.pose_net.to(ctx.device)
    seed = ctx.data_seed(name)
    n_batches = tcfg.steps * tcfg.grad_accum
    syn = None
    if synthetic:
        spec = ctx.bundle.spec.pose_net  # the crops of pre-training: same renderer and randomisation
        syn = SyntheticCrops(geoms, ctx.camera, n_batches * cfg.synthetic_batch + extra_synthetic, seed,
                             spec.crop_size, spec.backbone.out_stride, SyntheticConfig())
    pcfg = PretrainConfig(keypoint_sigma=cfg.keypoint_sigma, offset_warmup_steps=0)
    return StageSetup(instances, store, objs, tcfg, net, pcfg, syn, cfg.synthetic_batch, seed, n_batches)


class StepModule(torch.nn.Module):
    """The pose network plus one step's loss function as one module, so that a step is a single forward pass:
    wrapped by :meth:`AdaptContext.wrap` it gets DistributedDataParallel's gradient averaging under torchrun even
    though the loss runs the network several times."""

    def __init__(self, net: torch.nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.loss_fn(self.net, batch)


def train_stage(ctx: AdaptContext, name: str, cfg: Any, setup: StageSetup,
                batches: Callable[[int], Iterator[dict[str, Any]]], loss_fn: LossFn,
                details: dict[str, Any] | None = None) -> StageResult:
    """Train ``setup.net`` on the training harness: data recipe ``batches(start_step)``, loss ``loss_fn(net, batch)``
    (its ``loss`` key), resumed from the stage's checkpoint when ``ctx.resume``; returns the final losses with
    details ``instances``, ``details`` and ``checkpoint``."""
    fwd = ctx.wrap(StepModule(setup.net, loss_fn))

    def step_fn(batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        return fwd(batch)

    details = {"instances": len(setup.instances), **(details or {})}
    record, checkpoint = ctx.train(TrainingJob(name, cfg, {"pose_net": setup.net}, batches, step_fn, details),
                                   setup.trainer)
    return StageResult(losses=record.final_losses, details={**details, "checkpoint": str(checkpoint)})
