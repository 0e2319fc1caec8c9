"""Configuration plumbing shared by every stage: YAML mappings into validated dataclasses, and back.

Each component keeps ONE dataclass of its settings; these helpers turn a YAML file (plus dotted command-line
overrides) into it, naming the file and the key in every ConfigError.

Every YAML file selfpose reads (configs, objects.yaml, bundle.yaml, state files) goes through :func:`load_yaml`,
which refuses, with one line naming the file (and the line where there is one):

- files larger than :data:`MAX_YAML_BYTES`;
- trees that expand to more than :data:`MAX_YAML_NODES` nodes, counting an aliased node at every use (an "alias
  bomb" of a few hundred bytes otherwise expands to billions of values), aliases to their own ancestor, and
  nesting deeper than :data:`MAX_YAML_DEPTH`;
- duplicate keys in a mapping (YAML's "last one wins" hides typos; merge keys ``<<`` may still be overridden);
- syntax errors, reported as ``file:line:column: not valid YAML: <problem>``.

Error messages quote values through :func:`excerpt`, which is bounded (:data:`EXCERPT_CHARS`) whatever the value.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml
import yaml.constructor
import yaml.resolver

from selfpose_core.errors import ConfigError, SelfposeError

MAX_YAML_BYTES = 8 * 1024 * 1024  # a YAML file selfpose reads: configs, objects.yaml, bundle.yaml, state files
MAX_YAML_NODES = 1_000_000  # scalars + collections after alias expansion
MAX_YAML_DEPTH = 64  # nesting of sequences/mappings
EXCERPT_CHARS = 80  # the most characters of a value quoted in an error message
MESSAGE_CHARS = 200  # the most characters of a third-party error text quoted in an error message

_Parser = getattr(yaml, "CParser", None)
_LIBYAML = _Parser is not None
if not _LIBYAML:  # pragma: no cover - PyYAML without libyaml
    from yaml.composer import Composer
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 4, 6, 6, 4
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A one-line repr of ``value`` of at most ``limit`` characters (nested/long values shortened with ``...``).

    Cost and length are bounded whatever the value: containers are cut after a few items and levels, so an
    alias-expanded tree of billions of nodes is quoted as cheaply as a number.
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the actual error
        text = f"<{type(value).__name__}>"
    return one_line(text, limit)


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` with line breaks replaced by spaces and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _StrictConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor that refuses duplicate keys (merge keys ``<<`` may be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {excerpt(key)} (each key may appear once in a mapping)",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


if _LIBYAML:
    class _Loader(_Parser, _StrictConstructor, yaml.resolver.Resolver):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:  # pragma: no cover
    class _Loader(Reader, Scanner, _PyParser, Composer, _StrictConstructor, yaml.resolver.Resolver):  # type: ignore
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)
            Composer.__init__(self)
            _StrictConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


def _check_size(text: str, source: str, error: type[SelfposeError]) -> None:
    """Walk the event stream once (iteratively) and refuse trees that are too deep or expand too far."""
    nodes = 0
    sizes: dict[str, int] = {}  # anchor -> expanded node count of the anchored node
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, node count before them)
    loader = _Loader(text)
    try:
        while True:
            event = loader.get_event()
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append((event.anchor, nodes))
                nodes += 1
                if len(stack) > MAX_YAML_DEPTH:
                    raise error(f"{_where(source, event.start_mark)}: nested deeper than {MAX_YAML_DEPTH} levels "
                                "(the limit for YAML files selfpose reads)")
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before = stack.pop()
                if anchor is not None:
                    sizes[anchor] = nodes - before
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in stack):
                    raise error(f"{_where(source, event.start_mark)}: alias *{one_line(event.anchor, 40)} refers to "
                                "a node that contains it (a recursive tree)")
                nodes += sizes.get(event.anchor, 1)  # an undefined alias is reported by the composer
            if nodes > MAX_YAML_NODES:
                raise error(f"{_where(source, event.start_mark)}: expands to more than {MAX_YAML_NODES} YAML nodes "
                            "(aliases count at every use); refused, this is the limit for YAML files selfpose reads")
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str, error: type[SelfposeError] = ConfigError) -> Any:
    """The value of the YAML document ``text`` (``source`` names it in errors), checked as the module docstring says.

    Raises ``error`` (a SelfposeError subclass) with one bounded line naming ``source`` and the line.
    """
    if len(text) > MAX_YAML_BYTES:
        raise error(f"{source}: {len(text)} characters, more than the {MAX_YAML_BYTES} allowed for a YAML file")
    try:
        _check_size(text, source, error)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = one_line(" ".join(str(x) for x in (exc.context, exc.problem) if x))
        raise error(f"{_where(source, mark)}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {one_line(str(exc))}") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply to read") from None


def load_yaml(path: str | Path, what: str, error: type[SelfposeError] = ConfigError) -> Any:
    """The value of the YAML file ``path`` (``what`` names its role in errors), checked by :func:`parse_yaml`.

    Raises ``error`` naming the file: missing, unreadable, too large, not UTF-8, not valid YAML, too large once
    aliases are expanded, duplicate keys.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise error(f"{path}: {size} bytes, more than the {MAX_YAML_BYTES} allowed for a YAML file ({what})")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); {what} must be a YAML text file") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or type(exc).__name__}") from None
    return parse_yaml(text, str(path), error)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file ``path`` (``what`` names the file's role in errors)."""
    path = Path(path)
    loaded = load_yaml(path, what)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def parse_overrides(items: list[str], option: str = "--set") -> dict[str, Any]:
    """Command-line overrides ``["a.b=1", "stages=[x, y]"]`` -> ``{"a.b": 1, "stages": ["x", "y"]}``.

    Each value is a YAML document read by :func:`parse_yaml` (the same limits as a file: size, alias expansion,
    depth, duplicate keys); a ConfigError names ``option`` and the key and quotes at most :data:`EXCERPT_CHARS`.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {excerpt(item)}: expected KEY=VALUE")
        out[key] = parse_yaml(value, f"{option} {one_line(key, EXCERPT_CHARS)}")
    return out


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


_SCALAR_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


def _scalar(default: Any, v: Any, where: str, annotation: Any = None) -> Any:
    """``v`` as a value of the field's type: the annotation when it is bool/int/float/str, else the type of
    ``default``; ConfigError naming ``where``."""
    kind = _SCALAR_TYPES.get(getattr(annotation, "__name__", annotation), type(default))
    if kind is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where} must be true or false, got {excerpt(v)}")
        return v
    if kind is str:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {excerpt(v)}")
        return str(v)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ConfigError(f"{where} must be a number ({kind.__name__}), got {excerpt(v)}")
    try:
        x = float(v) if kind is float or not isinstance(v, int) else v
    except ValueError:
        raise ConfigError(f"{where} must be a number ({kind.__name__}), got {excerpt(v)}") from None
    if kind is int:
        if not math.isfinite(x) or x != int(x):
            raise ConfigError(f"{where} must be an integer, got {excerpt(v)}")
        return int(x)
    if math.isnan(x) or (math.isinf(x) and math.isfinite(default)):
        raise ConfigError(f"{where} must be a finite number, got {excerpt(v)}")
    return x


def dataclass_from_mapping(default: Any, value: Any, where: str) -> Any:
    """Copy of dataclass instance ``default`` with the values of mapping ``value`` (recursively into nested
    dataclasses); unknown keys and wrongly typed values raise ConfigError naming them.

    Numbers are checked as well as converted: an int field takes integral values only, a float field finite
    values only (infinity where the default is infinite), bool fields take true/false only."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    kwargs = {}
    annotations = {f.name: f.type for f in fields(default)}
    names = set(annotations)
    for key, v in value.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {excerpt(key)} (known: {', '.join(sorted(names))})")
        current = getattr(default, key)
        if is_dataclass(current):
            kwargs[key] = dataclass_from_mapping(current, v, f"{where}.{key}")
        elif isinstance(current, tuple):
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"{where}.{key} must be a list, got {excerpt(v)}")
            if current and isinstance(current[0], (bool, int, float, str)):
                kwargs[key] = tuple(_scalar(current[0], x, f"{where}.{key}[{i}]") for i, x in enumerate(v))
            else:
                kwargs[key] = tuple(v)
        elif isinstance(current, (bool, int, float, str)):
            kwargs[key] = _scalar(current, v, f"{where}.{key}", annotations[key])
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
