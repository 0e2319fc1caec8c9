"""YAML loading limits (duplicate keys, alias bombs, depth, size, syntax errors in one line), bounded excerpts and
the checked conversion of config mappings into dataclasses."""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field

import pytest

from selfpose_core import config_io
from selfpose_core.config_io import (MAX_YAML_NODES, dataclass_from_mapping, excerpt, load_yaml, parse_yaml,
                                     read_yaml_mapping)
from selfpose_core.errors import ConfigError, ModelError

# 306 bytes that expand to 9**9 = 387 million strings: 11-14 s and 1.5 GB for an error message before
BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def test_alias_bomb_is_refused_at_once_in_little_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"bomb.yaml:\d+:\d+: expands to more than {MAX_YAML_NODES} YAML nodes"):
        load_yaml(path, "config")
    assert time.perf_counter() - t < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000  # kB


def test_aliases_within_the_limit_load():
    assert parse_yaml("a: &a [1, 2]\nb: *a\nc: {<<: {x: 1}, x: 2}\n", "f.yaml") == {"a": [1, 2], "b": [1, 2],
                                                                                  "c": {"x": 2}}


@pytest.mark.parametrize("text, match", [
    ("a: 1\nb: 2\na: 3\n", r"f.yaml:3:1: not valid YAML: duplicate key 'a'"),
    ("objects:\n  - {name: a, name: b}\n", r"f.yaml:2:15: not valid YAML: duplicate key 'name'"),
    ("a: [1, 2\n", r"f.yaml:2:1: not valid YAML: .*expected ',' or ']'"),
    ("a:\n\t- 1\n", r"f.yaml:2:1: not valid YAML: .*cannot start any token"),
    ("x: &x [*x]\n", r"f.yaml:1:8: alias \*x refers to a node that contains it"),
    ("[" * 200 + "]" * 200, r"f.yaml:1:65: nested deeper than 64 levels"),
    ("a: !!python/object:os.system x\n", r"f.yaml:1:4: not valid YAML: could not determine a constructor"),
    ("a: *nope\n", r"f.yaml:1:4: not valid YAML: found undefined alias 'nope'"),
    ("--- 1\n--- 2\n", r"f.yaml:2:1: not valid YAML: expected a single document"),
])
def test_yaml_errors_are_one_line_naming_file_and_line(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_yaml(text, "f.yaml")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_deep_flow_nesting_is_refused_before_the_parser_recurses():
    # libyaml's composer recurses in C: 100000 levels crash the interpreter (SIGSEGV) without the limit
    with pytest.raises(ConfigError, match="nested deeper than 64"):
        parse_yaml("[" * 100_000 + "]" * 100_000, "deep.yaml")


def test_file_errors_name_the_file_and_use_the_callers_error(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match=r"bundle file .*nope.yaml does not exist"):
        load_yaml(tmp_path / "nope.yaml", "bundle file", ModelError)
    (tmp_path / "bin.yaml").write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text \(byte 3\)"):
        load_yaml(tmp_path / "bin.yaml", "config")
    monkeypatch.setattr(config_io, "MAX_YAML_BYTES", 10)
    (tmp_path / "big.yaml").write_text("a: 12345678901234567890\n")
    with pytest.raises(ConfigError, match=r"big.yaml: 24 bytes, more than the 10 allowed"):
        load_yaml(tmp_path / "big.yaml", "config")
    (tmp_path / "list.yaml").write_text("[1]\n")
    monkeypatch.setattr(config_io, "MAX_YAML_BYTES", 1 << 20)
    with pytest.raises(ConfigError, match="must be a mapping of sections, got list"):
        read_yaml_mapping(tmp_path / "list.yaml", "config")
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml", "config") == {}


def test_excerpt_is_bounded_whatever_the_value():
    huge = {"k": [list(range(10 ** 5))] * 10 ** 3, "s": "x" * 10 ** 6}
    text = excerpt(huge)
    assert len(text) <= 80 and "\n" not in text and text.startswith("{'k': [[0, 1,")
    assert excerpt("a\nb") == "'a\\nb'" and excerpt(float("nan")) == "nan"


@dataclass
class _Inner:
    width: int = 3


@dataclass
class _Cfg:
    steps: int = 10
    lr: float = 0.1
    limit: float = math.inf
    ratio: float = 1  # annotated float, int default
    name: str = "a"
    on: bool = True
    sizes: tuple[int, ...] = (1, 2)
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize("raw, match", [
    ({"steps": 2.5}, r"cfg.steps must be an integer, got 2.5"),
    ({"steps": True}, r"cfg.steps must be a number \(int\), got True"),
    ({"steps": float("inf")}, r"cfg.steps must be an integer, got inf"),
    ({"lr": float("nan")}, r"cfg.lr must be a finite number, got nan"),
    ({"lr": "fast"}, r"cfg.lr must be a number \(float\), got 'fast'"),
    ({"lr": [1]}, r"cfg.lr must be a number \(float\), got \[1\]"),
    ({"name": {"a": 1}}, r"cfg.name must be a string"),
    ({"on": "yes"}, r"cfg.on must be true or false, got 'yes'"),
    ({"sizes": ["a"]}, r"cfg.sizes\[0\] must be a number \(int\), got 'a'"),
    ({"sizes": 3}, r"cfg.sizes must be a list, got 3"),
    ({"inner": {"width": 1e400}}, r"cfg.inner.width must be an integer, got inf"),
    ({"x" * 1000: 1}, r"cfg: unknown key 'x+\.\.\.x+' \(known: inner,"),
])
def test_dataclass_values_are_checked(raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        dataclass_from_mapping(_Cfg(), raw, "cfg")
    assert len(str(info.value)) < 300


def test_dataclass_values_are_converted():
    cfg = dataclass_from_mapping(_Cfg(), {"steps": 20.0, "lr": "0.5", "limit": float("inf"), "ratio": 0.25,
                                          "sizes": [3, 4.0], "inner": {"width": 7}}, "cfg")
    assert (cfg.steps, cfg.lr, cfg.limit, cfg.ratio, cfg.sizes, cfg.inner.width) == (20, 0.5, math.inf, 0.25,
                                                                                     (3, 4), 7)


def test_set_overrides_are_yaml_values():
    got = config_io.parse_overrides(["a.b=1", "stages=[x, y]", " c = {k: 2.5} ", "d=", "e=a=b"])
    assert got == {"a.b": 1, "stages": ["x", "y"], "c": {"k": 2.5}, "d": None, "e": "a=b"}


@pytest.mark.parametrize("item, match", [
    ("lr", r"^--set 'lr': expected KEY=VALUE$"),
    ("=3", r"^--set '=3': expected KEY=VALUE$"),
    ("stages=[x, y", r"^--set stages:1:\d+: not valid YAML: "),
    ("c={k: 1, k: 2}", r"^--set c:1:\d+: not valid YAML: .*duplicate key 'k'"),
    ("c=!!python/object:os.system x", r"^--set c:1:\d+: not valid YAML: "),
    ("x=" + BOMB.replace("\n", "\n"), r"^--set x:\d+:\d+: expands to more than 1000000 YAML nodes"),
    ("k" * 5000 + "=[", r"^--set k{77}\.\.\.:1:\d+: not valid YAML"),
])
def test_bad_set_values_are_one_bounded_line(item, match):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as info:
        config_io.parse_overrides([item])
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("command", ["adapt", "pretrain"])
def test_bad_set_value_on_the_command_line_exits_2(command, tmp_path, capsys):
    from selfpose_core.cli.main import main
    args = ([command, "--bag", str(tmp_path / "bag"), "--model", str(tmp_path / "model")] if command == "adapt"
            else [command]) + [
        "--objects", str(tmp_path / "objects.yaml"), "--out", str(tmp_path / "out"), "--set", "trainer.lr=[1, 2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"selfpose {command}: error: --set trainer.lr:1:") and "not valid YAML" in err[-1]
    assert "Traceback" not in "\n".join(err)
