"""The one training loop of selfpose (pre-training and every adaptation stage).

A stage supplies its modules, a function that yields batches from a given step on (so that a resumed run sees the
same data as an uninterrupted one) and a step function returning the loss and any scalars. The trainer owns the
optimiser (Adam), the learning-rate schedule (linear warm-up, cosine decay), gradient accumulation and clipping,
mixed precision on CUDA, a tqdm progress bar, TensorBoard-readable scalars (``out/logs``) and a periodic checkpoint
(``out/checkpoint.pt``, tensors only, loadable with ``torch.load(weights_only=True)``) from which ``resume`` continues.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from selfpose_core.config_io import excerpt, one_line, require_at_least
from selfpose_core.errors import ConfigError, ModelError
from selfpose_core.models.scalar_log import ScalarLog

log = logging.getLogger(__name__)

StepFn = Callable[[Any, int], dict[str, Any]]


@dataclass(slots=True)
class TrainerConfig:
    steps: int = 2000
    lr: float = 1e-3
    final_lr_ratio: float = 0.01
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_accum: int = 1
    grad_clip: float = 5.0
    log_every: int = 20
    checkpoint_every: int = 200
    seed: int = 0
    amp: bool = True  # only used on CUDA
    progress: bool = True

    def validate(self, where: str = "trainer") -> None:
        require_at_least(self, ("steps", "grad_accum", "log_every", "checkpoint_every"), 1, where)
        if not self.lr > 0:
            raise ConfigError(f"{where}.lr must be > 0, got {self.lr}")


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight init, dropout) and numpy's legacy one used by third-party code."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


class Trainer:
    """Optimise ``modules`` with ``step_fn`` for ``config.steps`` optimiser steps, writing to ``out_dir``."""

    def __init__(self, modules: dict[str, nn.Module], out_dir: str | Path, config: TrainerConfig | None = None,
                 device: str | torch.device = "cpu", name: str = "train") -> None:
        self.config = config or TrainerConfig()
        self.config.validate()
        self.modules = modules
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.name = name
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"{name}: nothing to train (no parameters require gradients)")
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.use_amp = bool(self.config.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return c.final_lr_ratio + (1 - c.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` atomically (temporary file + rename)."""
        state = {"step": self.step, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "torch_rng": torch.get_rng_state()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)
        return self.checkpoint_path

    def load_checkpoint(self) -> None:
        """Restore modules, optimiser, schedule, RNG and step from ``checkpoint.pt``.

        The file is read with ``weights_only=True`` (no code runs) and checked before anything is restored: a
        mapping with ``step`` (an integer in 0..``config.steps``), ``modules`` (a state dict per module, finite
        values), ``optimizer``, ``scheduler`` and ``torch_rng``. Any problem is one ModelError line naming the file
        and the key; the modules are untouched then.
        """
        path = self.checkpoint_path
        if not path.is_file():
            raise ModelError(f"cannot resume: no checkpoint at {path}")
        if path.stat().st_size == 0:
            raise ModelError(f"cannot resume from {path}: the file is empty (interrupted while written?); delete it "
                             "to start the stage again")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # UnpicklingError (refused pickle), EOFError, RuntimeError (zip), ...
            raise ModelError(f"cannot resume from {path}: it cannot be loaded safely with torch.load(weights_only="
                             f"True) ({type(exc).__name__}: {one_line(str(exc).splitlines()[0] if str(exc) else '')})"
                             ) from None
        step = self._check_checkpoint(state, path)
        try:
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"].cpu())
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError, OSError) as exc:
            raise ModelError(f"cannot resume from {path}: it does not fit this run ({type(exc).__name__}: "
                             f"{one_line(str(exc).splitlines()[0] if str(exc) else '')})") from None
        self.step = step
        log.info("%s: resumed from %s at step %d", self.name, path, self.step)

    def _check_checkpoint(self, state: Any, path: Path) -> int:
        """The step of the loaded checkpoint ``state`` after checking its layout (ModelError naming the key)."""
        where = f"cannot resume from {path}"
        if not isinstance(state, dict):
            raise ModelError(f"{where}: it must hold a mapping (step, modules, optimizer, ...), got "
                             f"{type(state).__name__}")
        for key in ("step", "modules", "optimizer", "scheduler", "torch_rng"):
            if key not in state:
                raise ModelError(f"{where}: key '{key}' is missing")
        step = state["step"]
        if isinstance(step, torch.Tensor) and step.numel() == 1 and not step.is_floating_point():
            step = int(step.item())
        if isinstance(step, bool) or not isinstance(step, int):
            raise ModelError(f"{where}: key 'step' must be an integer, got {excerpt(step)}")
        if not 0 <= step <= self.config.steps:
            raise ModelError(f"{where}: key 'step' is {excerpt(step)}, outside 0..{self.config.steps} (the steps this "
                             "run is configured for)")
        modules = state["modules"]
        if not isinstance(modules, dict):
            raise ModelError(f"{where}: key 'modules' must be a mapping, got {type(modules).__name__}")
        for k in self.modules:
            sd = modules.get(k)
            if not isinstance(sd, dict):
                raise ModelError(f"{where}: key 'modules.{k}' is missing or not a state dict")
            for name, t in sd.items():
                key = f"modules.{k}.{name if isinstance(name, str) and len(name) <= 60 else excerpt(name, 60)}"
                if not isinstance(t, torch.Tensor):
                    raise ModelError(f"{where}: key '{key}' is not a tensor")
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ModelError(f"{where}: key '{key}' holds NaN/inf values")
        for key in ("optimizer", "scheduler"):
            if not isinstance(state[key], dict):
                raise ModelError(f"{where}: key '{key}' must be a mapping, got {type(state[key]).__name__}")
        rng = state["torch_rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
            raise ModelError(f"{where}: key 'torch_rng' must be a uint8 tensor (torch.get_rng_state())")
        return step

    def fit(self, batches: Callable[[int], Iterator[Any]], step_fn: StepFn, resume: bool = False) -> dict[str, float]:
        """Train until ``config.steps``; returns the mean of each scalar over the last logging window.

        ``batches(start_step)`` yields batches for optimiser steps start_step, start_step + 1, ... (``grad_accum``
        batches per step); ``step_fn(batch, step)`` returns a dict with a differentiable ``loss`` and optional
        further scalars (tensors or floats) to log.
        """
        c = self.config
        if resume:
            self.load_checkpoint()
        else:
            seed_everything(c.seed)
        for m in self.modules.values():
            m.train()
        logger = ScalarLog(self.out_dir / "logs")
        window: dict[str, list[float]] = {}
        last: dict[str, float] = {}
        it = batches(self.step)
        bar = tqdm(total=c.steps, initial=self.step, desc=self.name, disable=not c.progress, mininterval=1.0,
                   dynamic_ncols=True)
        try:
            while self.step < c.steps:
                self.optimizer.zero_grad(set_to_none=True)
                for _ in range(c.grad_accum):
                    with torch.autocast(self.device.type, enabled=self.use_amp):
                        out = step_fn(next(it), self.step)
                    loss = out["loss"]
                    if not torch.isfinite(loss):
                        raise ModelError(f"{self.name}: loss is {loss.item()} at step {self.step}; lower the "
                                         "learning rate or check the data")
                    self.scaler.scale(loss / c.grad_accum).backward()
                    for k, v in out.items():
                        window.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], c.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.steps:
                    last = {k: float(np.mean(v)) for k, v in window.items()}
                    last["lr"] = self.optimizer.param_groups[0]["lr"]
                    logger.add(self.step, {f"{self.name}/{k}": v for k, v in last.items()})
                    logger.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    window = {}
                if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            logger.close()
        log.info("%s: finished %d steps (loss %.4f)", self.name, self.step, last.get("loss", float("nan")))
        return last
