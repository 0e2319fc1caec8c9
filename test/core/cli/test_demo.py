"""`selfpose demo --difficulty`: the option reaches the simulation, and a scene of another difficulty is not reused."""
from __future__ import annotations

import argparse

import pytest
import yaml

from selfpose_core.cli import demo
from selfpose_core.errors import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    return parser.parse_args(["demo", "--out", "unused", "--no-progress", *argv])


def test_difficulty_option(capsys):
    assert _args().difficulty == "normal" and _args("--difficulty", "hard").difficulty == "hard"
    with pytest.raises(SystemExit):
        _args("--difficulty", "extreme")
    assert "invalid choice: 'extreme'" in capsys.readouterr().err


def test_stage_simulate_passes_the_difficulty(tmp_path, monkeypatch):
    configs = []

    def simulate(out, config, **kw):
        configs.append(config)
        return {"trajectories": [], "seconds": 0.0}

    monkeypatch.setattr(demo, "simulate", simulate)
    demo.stage_simulate(tmp_path, _args("--difficulty", "hard"))
    assert configs[0].difficulty == "hard"


def test_a_scene_of_another_difficulty_is_not_reused(tmp_path):
    sim = tmp_path / "sim"
    (sim / "bop" / "test").mkdir(parents=True)
    (sim / "scene.yaml").write_text(yaml.safe_dump({"seed": 0}))  # made before difficulties existed: normal
    with pytest.raises(ConfigError, match=f"{sim} holds a normal scene, not hard"):
        demo.stage_simulate(tmp_path, _args("--difficulty", "hard"))
    assert demo.stage_simulate(tmp_path, _args()) == sim
