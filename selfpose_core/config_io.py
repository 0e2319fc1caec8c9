"""Configuration plumbing shared by every stage: YAML mappings into validated dataclasses, and back.

Each component keeps ONE dataclass of its settings; these helpers turn a YAML file (plus dotted command-line
overrides) into it, naming the file and the key in every ConfigError.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from selfpose_core.errors import ConfigError


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (``what`` names the file's role in errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw["a"]["b"]["c"] = value`` for ``dotted = "a.b.c"``, creating sections as needed."""
    node = raw
    *parents, last = dotted.split(".")
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
        node = nxt
    node[last] = value


def dataclass_from_mapping(default: Any, value: Any, where: str) -> Any:
    """Copy of dataclass instance ``default`` with the values of mapping ``value`` (recursively into nested
    dataclasses); unknown keys and wrongly typed values raise ConfigError naming them."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    kwargs = {}
    names = {f.name for f in fields(default)}
    for key, v in value.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(default, key)
        if is_dataclass(current):
            kwargs[key] = dataclass_from_mapping(current, v, f"{where}.{key}")
        elif isinstance(current, tuple):
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"{where}.{key} must be a list, got {v!r}")
            kwargs[key] = tuple(type(current[0])(x) if current else x for x in v)
        elif isinstance(current, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{key} must be true or false, got {v!r}")
            kwargs[key] = v
        elif isinstance(current, (int, float, str)) and current is not None:
            try:
                kwargs[key] = type(current)(v)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.{key} must be a {type(current).__name__}, got {v!r}") from exc
        else:
            kwargs[key] = v
    return replace(default, **kwargs)


def yaml_safe(value: Any) -> Any:
    """Copy of nested dicts/lists/tuples with tuples turned into lists (for yaml.safe_dump)."""
    if isinstance(value, dict):
        return {k: yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_safe(v) for v in value]
    return value


def require_at_least(cfg: Any, keys: tuple[str, ...], minimum: float, where: str) -> None:
    """Raise ConfigError naming ``where.key`` for the first of ``cfg``'s fields ``keys`` below ``minimum``."""
    for key in keys:
        if getattr(cfg, key) < minimum:
            raise ConfigError(f"{where}.{key} must be >= {minimum}, got {getattr(cfg, key)}")
