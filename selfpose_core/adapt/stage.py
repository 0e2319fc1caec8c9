"""The interface every adaptation stage implements, and what a stage returns.

A stage is a class with a ``name`` (its key in ``config/adapt.yaml`` and in
:data:`selfpose_core.adapt.pipeline.STAGES`),
a ``Config`` dataclass (its YAML section, defaults = the values of the paper it implements) and ``run(ctx, cfg)``.
``run`` reads the recording and the current networks from the :class:`~selfpose_core.adapt.context.AdaptContext`,
trains (through :class:`selfpose_core.models.trainer.Trainer`, checkpointing into ``ctx.stage_dir(name)`` and
resuming from there when ``ctx.resume`` is set), updates ``ctx.bundle`` / ``ctx.pseudo`` in place, and returns a
:class:`StageResult`. It never reads ground truth (the pipeline makes ground-truth access raise while a stage runs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from selfpose_core.adapt.context import AdaptContext


@dataclass(slots=True)
class StageResult:
    """What a stage reports.

    ``losses``: final training scalars (name -> value, e.g. the Trainer's last logging window);
    ``artefacts``: files the stage wrote for the report (name -> path, PNGs appear as figures);
    ``details``: stage-specific numbers without ground truth (e.g. per-object consensus inliers and residuals);
    ``metrics``: held-out accuracy, filled by the pipeline after the stage when ``--eval-gt`` is given.
    """

    losses: dict[str, float] = field(default_factory=dict)
    artefacts: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        """YAML-safe copy (paths as strings)."""
        return {"losses": {k: float(v) for k, v in self.losses.items()},
                "artefacts": {k: str(v) for k, v in self.artefacts.items()},
                "details": self.details, "metrics": self.metrics}

    @classmethod
    def from_yaml(cls, raw: dict[str, Any]) -> StageResult:
        return cls({k: float(v) for k, v in (raw.get("losses") or {}).items()},
                   {k: Path(v) for k, v in (raw.get("artefacts") or {}).items()},
                   dict(raw.get("details") or {}), dict(raw.get("metrics") or {}))


@runtime_checkable
class Stage(Protocol):
    """One adaptation stage (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def run(self, ctx: AdaptContext, cfg: Any) -> StageResult:
        """Adapt ``ctx.bundle`` (and/or set ``ctx.pseudo``) with the stage's config ``cfg`` (a ``Config``)."""
        ...
