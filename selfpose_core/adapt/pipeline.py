"""Run the configured adaptation stages in order, checkpointing each, and write the adapted bundle + report.

Layout of the output directory ``out`` (the model bundle)::

    out/bundle.yaml, out/weights.pt      the adapted bundle (written at the end)
    out/report.html                      per stage: losses, details, held-out accuracy, plots, overlays
    out/work/state.yaml                  stages finished so far with their results
    out/work/<stage>/                    the stage's checkpoints, logs, artefacts; bundle/ once it finished

Resume (``resume=True``, e.g. after kill -9): finished stages are skipped (the bundle and pseudo labels they left
are reloaded) and the interrupted stage continues from its Trainer checkpoint. Ground truth is never visible to a
stage: while a stage runs, every ground-truth accessor of :class:`~selfpose_core.data.bop.BopDataset` raises.
Held-out evaluation (``evaluator``) runs between stages, outside that guard, on rank 0.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selfpose_core.adapt.config import AdaptConfig
from selfpose_core.adapt.consensus import MultiviewConsensus
from selfpose_core.adapt.context import AdaptContext, DistInfo
from selfpose_core.adapt.dual_scale import DualScale
from selfpose_core.adapt.finetune import PseudoLabelFinetune
from selfpose_core.adapt.nol import NolStage
from selfpose_core.adapt.pose_consistency import PoseConsistency
from selfpose_core.adapt.pseudo_labels import PseudoLabels
from selfpose_core.adapt.report import write_adapt_report
from selfpose_core.adapt.stage import StageResult
from selfpose_core.adapt.warp_align import WarpAlign
from selfpose_core.config_io import excerpt
from selfpose_core.data.bop import BopDataset
from selfpose_core.data.recording import Recording
from selfpose_core.errors import ConfigError, DatasetError, ResumeError
from selfpose_core.models.bundle import ModelBundle
from selfpose_core.models.trainer import seed_everything
from selfpose_core.saved_state import fail, load_state_yaml
from selfpose_core.types import ObjectModel

log = logging.getLogger(__name__)

STAGES: dict[str, type] = {
    "multiview_consensus": MultiviewConsensus,
    "pseudo_label_finetune": PseudoLabelFinetune,
    "pose_consistency": PoseConsistency,
    "dual_scale": DualScale,
    "warp_align": WarpAlign,
    "nol": NolStage,
}

# (bundle after the stage, stage name, its pseudo labels or None) -> metrics dict; "pretrained" = before any stage
Evaluator = Callable[[ModelBundle, str, "PseudoLabels | None"], dict[str, Any]]

_GT_ACCESSORS = ("sample", "samples")


@contextlib.contextmanager
def ground_truth_forbidden(stage: str) -> Iterator[None]:
    """While active, reading a BOP dataset (the only place ground truth lives) raises DatasetError."""
    saved = {name: getattr(BopDataset, name) for name in _GT_ACCESSORS}

    def deny(*_: Any, **__: Any) -> Any:
        raise DatasetError(f"adaptation stage {stage!r} tried to read ground truth (BopDataset); adaptation may "
                           "only use the recording, the meshes and the model")

    try:
        for name in _GT_ACCESSORS:
            setattr(BopDataset, name, deny)
        yield
    finally:
        for name, fn in saved.items():
            setattr(BopDataset, name, fn)


@dataclass(slots=True)
class PipelineResult:
    bundle_path: Path
    report_path: Path | None
    results: dict[str, StageResult]


def _state_path(out: Path) -> Path:
    return out / "work" / "state.yaml"


def run_pipeline(config: AdaptConfig, *, recording: Recording, objects: list[ObjectModel], objects_config: Path,
                 model: Path, out: Path, resume: bool = False, evaluator: Evaluator | None = None,
                 dist: DistInfo | None = None, progress: bool = True,
                 provenance: dict[str, Any] | None = None) -> PipelineResult:
    """Adapt the bundle ``model`` to ``recording`` with ``config.stages``; write the result to ``out``."""
    dist = dist or DistInfo()
    out = Path(out)
    work = out / "work"
    state_file = _state_path(out)
    if not resume and state_file.is_file():
        raise ConfigError(f"{out} already holds an adaptation run ({state_file}); pass --resume to continue it or "
                          "choose another --out")
    if dist.is_main:
        work.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    state: dict[str, Any] = {"done": [], "results": {}}
    if resume and state_file.is_file():
        state = read_state(state_file)
    done: list[str] = [s for s in state.get("done", []) if s in config.stages]
    results = {k: StageResult.from_yaml(v) for k, v in (state.get("results") or {}).items()}

    # the bundle to start from: the last finished stage's, else the pre-trained one
    start = model
    for s in done:
        start = work / s / "bundle"
    bundle = ModelBundle.load(start, device=config.device)
    bundle.spec.objects_config = str(Path(objects_config).resolve())
    pseudo = None
    pseudo_file = work / MultiviewConsensus.name / "pseudo_labels.npz"
    if MultiviewConsensus.name in done and pseudo_file.is_file():
        pseudo = PseudoLabels.load(pseudo_file)
        names = [m.name for m in objects]
        if pseudo.object_names != names or pseudo.num_frames != len(recording):
            raise ResumeError(f"pseudo labels {pseudo_file} are for objects {excerpt(pseudo.object_names)} and "
                              f"{pseudo.num_frames} frames, this run has {excerpt(names)} and {len(recording)} frames; "
                              "resume with the same --bag and --objects, or start again without --resume")
    seed_everything(config.seed)
    ctx = AdaptContext(objects=objects, recording=recording, bundle=bundle, work_dir=work,
                       objects_config=Path(objects_config), device=config.device, seed=config.seed,
                       trainer_defaults=config.trainer, pseudo=pseudo, dist=dist, resume=resume, progress=progress)
    if evaluator is not None and dist.is_main:
        # the lower bound, and finished stages of an earlier run without --eval-gt
        missing = [s for s in ["pretrained"] + done if not (s in results and results[s].metrics)]
        for s in missing:
            b = ModelBundle.load(model if s == "pretrained" else work / s / "bundle", device=config.device)
            results.setdefault(s, StageResult()).metrics = evaluator(
                b, s, pseudo if s == MultiviewConsensus.name else None)
        if missing:
            state["results"] = {k: v.to_yaml() for k, v in results.items()}
            _write_state(state_file, state)
    for i, name in enumerate(config.stages):
        if name in done:
            log.info("adapt: stage %d/%d %s already finished, skipped", i + 1, len(config.stages), name)
            continue
        log.info("adapt: stage %d/%d %s", i + 1, len(config.stages), name)
        t0 = time.perf_counter()
        stage = STAGES[name]()
        with ground_truth_forbidden(name):
            result = stage.run(ctx, config.sections[name])
        result.details.setdefault("seconds", round(time.perf_counter() - t0, 1))
        if dist.is_main:
            ctx.bundle.save(work / name / "bundle")
            if evaluator is not None:
                result.metrics = evaluator(ctx.bundle, name, ctx.pseudo if name == MultiviewConsensus.name else None)
            results[name] = result
            state["done"] = done + [name]
            state["results"] = {k: v.to_yaml() for k, v in results.items()}
            _write_state(state_file, state)
        done.append(name)
        dist.barrier()
    report = None
    if dist.is_main:
        spec = ctx.bundle.spec
        spec.provenance.update(provenance or {})
        spec.provenance["supervision"] = f"{spec.provenance.get('supervision', 'synthetic only')} + " \
                                         f"self-supervised on {recording.path} ({', '.join(config.stages)})"
        spec.provenance["adapt"] = {"stages": list(config.stages), "config": config.to_yaml(),
                                    "recording": str(recording.path), "start_model": str(model)}
        if results:
            spec.metrics["adapt"] = {k: v.metrics for k, v in results.items() if v.metrics}
        spec.objects_config = os.path.relpath(Path(objects_config).resolve(), out.resolve())
        ctx.bundle.save(out)
        report = write_adapt_report(out / "report.html", config, results, ctx)
    dist.barrier()
    return PipelineResult(out, report, results)


def _key(name: Any) -> str:
    """A mapping key as it appears in an error: short strings as they are, anything else as a bounded excerpt."""
    return name if isinstance(name, str) and len(name) <= 40 else excerpt(name, 40)


def read_state(path: Path) -> dict[str, Any]:
    """The pipeline state ``path`` (work/state.yaml) after checking its layout: ``done`` a list of stage names,
    ``results`` a mapping of stage names to StageResult mappings (losses: numbers). ResumeError naming the file and
    the key otherwise."""
    what = "adaptation state"
    state = load_state_yaml(path, what)
    if state is None:
        raise fail(path, what, "the file", "is empty")
    if not isinstance(state, dict):
        raise fail(path, what, "the file", f"must be a mapping (done, results), got {excerpt(state)}")
    done = state.get("done", [])
    if not isinstance(done, list) or not all(isinstance(s, str) for s in done):
        raise fail(path, what, "key 'done'", f"must be a list of stage names, got {excerpt(done)}")
    unknown = [s for s in done if s not in STAGES]
    if unknown:
        raise fail(path, what, "key 'done'", f"names unknown stages {excerpt(unknown)}")
    results = state.get("results") or {}
    if not isinstance(results, dict):
        raise fail(path, what, "key 'results'", f"must be a mapping of stage names, got {excerpt(results)}")
    for name, r in results.items():
        if not isinstance(r, dict):
            raise fail(path, what, f"key 'results.{_key(name)}'", f"must be a mapping, got {excerpt(r)}")
        for key in ("losses", "artefacts", "details", "metrics"):
            if not isinstance(r.get(key) or {}, dict):
                raise fail(path, what, f"key 'results.{_key(name)}.{key}'", "must be a mapping")
        for key, v in (r.get("losses") or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise fail(path, what, f"key 'results.{_key(name)}.losses.{_key(key)}'",
                           f"must be a number, got {excerpt(v)}")
        if not all(isinstance(v, str) for v in (r.get("artefacts") or {}).values()):
            raise fail(path, what, f"key 'results.{_key(name)}.artefacts'", "must map names to file paths")
    return {"done": done, "results": results}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(state, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
