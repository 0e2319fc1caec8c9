"""config/adapt.yaml: which stages run, in which order, and each stage's hyper-parameters.

Top-level keys: ``stages`` (list of stage names, run in that order; any subset of the registry; default
:data:`DEFAULT_STAGES`), ``seed``, ``device``, ``trainer`` (TrainerConfig fields applied to every stage that
trains, under the stage's own ``trainer`` section), ``eval`` (held-out evaluation after each stage when
``--eval-gt`` is given) and one section per stage (its ``Config`` dataclass; missing keys keep the defaults).
Unknown keys anywhere raise ConfigError naming the file and the key; only the sections of stages that run are
validated beyond that (a stage may need inputs, e.g. ``nol.weights``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any


from selfpose_core.config_io import dataclass_from_mapping, read_yaml_mapping, set_dotted, yaml_safe
from selfpose_core.errors import ConfigError
from selfpose_core.models.trainer import TrainerConfig

TOP_LEVEL = ("stages", "seed", "device", "trainer", "eval")
DEFAULT_STAGES = ("multiview_consensus", "pseudo_label_finetune", "pose_consistency")  # when a config lists none


@dataclass(slots=True)
class EvalConfig:
    """Held-out evaluation after each stage (only with ``--eval-gt``)."""

    max_images: int = 60  # test images evaluated per stage, evenly spread (0 = all)
    split: str = "test"


@dataclass(slots=True)
class AdaptConfig:
    """The loaded config: ``sections`` maps every registered stage name to its validated Config instance."""

    stages: list[str]
    seed: int = 0
    device: str = "cpu"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sections: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def to_yaml(self) -> dict[str, Any]:
        """YAML-safe dict that :func:`load_adapt_config` reads back to the same config."""
        out: dict[str, Any] = {"stages": list(self.stages), "seed": self.seed, "device": self.device,
                               "trainer": yaml_safe(asdict(self.trainer)), "eval": yaml_safe(asdict(self.eval))}
        for name, cfg in self.sections.items():
            out[name] = yaml_safe(asdict(cfg))
        return out


def load_adapt_config(path: str | Path | None, registry: Mapping[str, type],
                      overrides: Mapping[str, Any] | None = None) -> AdaptConfig:
    """Read ``path`` (None = defaults with every registered stage), apply dotted ``overrides``
    (``{"multiview_consensus.refine_iterations": 10, "stages": [...]}``) and validate against ``registry``
    (stage name -> stage class with a ``Config`` dataclass)."""
    raw: dict[str, Any] = {}
    where = "adapt config"
    if path is not None:
        loaded = read_yaml_mapping(path, "adapt config")
        raw = loaded
        where = str(path)
    for dotted, v in (overrides or {}).items():
        set_dotted(raw, dotted, v)
    for key in raw:
        if key not in TOP_LEVEL and key not in registry:
            raise ConfigError(f"{where}: unknown key {key!r} (top-level keys: {', '.join(TOP_LEVEL)}; stages: "
                              f"{', '.join(registry)})")
    stages = raw.get("stages", [s for s in DEFAULT_STAGES if s in registry])
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise ConfigError(f"{where}: stages must be a list of stage names, got {stages!r}")
    for s in stages:
        if s not in registry:
            raise ConfigError(f"{where}: stages lists unknown stage {s!r} (known: {', '.join(registry)})")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"{where}: stages lists a stage twice: {stages}")
    trainer_raw = raw.get("trainer") or {}
    trainer = dataclass_from_mapping(TrainerConfig(), trainer_raw, f"{where}: trainer")
    trainer.validate(f"{where}: trainer")
    sections: dict[str, Any] = {}
    for name, cls in registry.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: {name} must be a mapping, got {type(section).__name__}")
        default = cls.Config()
        names = {f.name for f in fields(default)}
        if "trainer" in names and is_dataclass(default.trainer) and trainer_raw:
            section = dict(section)
            own = section.get("trainer") or {}
            if not isinstance(own, dict):
                raise ConfigError(f"{where}: {name}.trainer must be a mapping")
            section["trainer"] = {**trainer_raw, **own}
        cfg = dataclass_from_mapping(default, section, f"{where}: {name}")
        if name in stages and hasattr(cfg, "validate"):  # sections of stages that do not run are only parsed
            cfg.validate(f"{where}: {name}")
        sections[name] = cfg
    ev = dataclass_from_mapping(EvalConfig(), raw.get("eval") or {}, f"{where}: eval")
    if ev.max_images < 0:
        raise ConfigError(f"{where}: eval.max_images must be >= 0, got {ev.max_images}")
    try:
        seed = int(raw.get("seed", 0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: seed must be an integer, got {raw.get('seed')!r}") from exc
    device = str(raw.get("device", "cpu"))
    return AdaptConfig(list(stages), seed, device, trainer, ev, sections, where)
