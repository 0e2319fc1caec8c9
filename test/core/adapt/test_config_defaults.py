"""One source of defaults: the shipped config/adapt.yaml and config/pretrain.yaml only write out the dataclass
defaults, and `selfpose adapt` without --config runs those defaults wherever it is installed."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import yaml

from selfpose_core.adapt.config import DEFAULT_STAGES, load_adapt_config
from selfpose_core.adapt.pipeline import STAGES
from selfpose_core.config_io import yaml_safe
from selfpose_core.models.pretrain import load_pretrain_config

CONFIG = Path(__file__).resolve().parents[3] / "config"


def _differences(written, default, where=""):
    """Every value of ``written`` (nested mappings) that differs from, or is missing in, ``default``."""
    if isinstance(written, dict):
        if not isinstance(default, dict):
            return [f"{where}: a section in the file, {default!r} in the defaults"]
        return [d for k, v in written.items()
                for d in _differences(v, default.get(k, "<missing>"), f"{where}.{k}" if where else k)]
    return [] if written == default else [f"{where}: {written!r} in the file, {default!r} in the defaults"]


def test_adapt_yaml_equals_the_dataclass_defaults():
    written = yaml.safe_load((CONFIG / "adapt.yaml").read_text())
    defaults = load_adapt_config(None, STAGES).to_yaml()
    assert written["stages"] == list(DEFAULT_STAGES) == defaults["stages"]
    assert _differences(written, defaults) == []


def test_pretrain_yaml_equals_the_dataclass_defaults():
    written = yaml.safe_load((CONFIG / "pretrain.yaml").read_text())["pretrain"]
    defaults = yaml_safe(asdict(load_pretrain_config(None)))
    assert _differences(written, defaults) == []
    assert set(written) == set(defaults)  # every key written out


def test_a_changed_default_is_reported():
    written = yaml.safe_load((CONFIG / "adapt.yaml").read_text())
    written["pose_consistency"]["trainer"]["lr"] = 1.0
    written["nol"]["in_plane_deg"] = [0.0]
    assert _differences(written, load_adapt_config(None, STAGES).to_yaml()) == [
        "pose_consistency.trainer.lr: 1.0 in the file, 1e-05 in the defaults",
        "nol.in_plane_deg: [0.0] in the file, [-30.0, 0.0, 30.0] in the defaults"]


def test_adapt_without_config_runs_the_defaults_from_any_install(monkeypatch, tmp_path):
    """`selfpose adapt` reads no config file it was not given: run from a directory without config/ (what a pip or
    colcon install sees) it gets the built-in defaults, which equal the checkout's config/adapt.yaml."""
    from selfpose_core.cli.adapt import adapt_config, add_arguments

    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--bag", "b", "--objects", "o", "--model", "m", "--out", "out", "--set", "seed=3"])
    config = adapt_config(args)
    assert config.source == load_adapt_config(None, STAGES).source and config.seed == 3  # no file was read
    assert config.to_yaml() | {"seed": 0} == load_adapt_config(CONFIG / "adapt.yaml", STAGES).to_yaml()
